//! argon2id password hashes. Hashing costs tens of milliseconds of CPU and
//! about 19 MiB of memory on purpose, so it runs on the blocking pool, never
//! on an async worker, and at most one hash per core runs at a time: a flood
//! of logins queues instead of exhausting memory, each request for at most
//! `QUEUE_WAIT` (5 s), after which it is refused ([`PasswordError::Busy`],
//! `rate_limited` to the client, HTTP 429 on REST).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a request waits for a hashing slot before it is refused.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("too many password checks at once")]
    Busy,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new(cores)
    })
}

async fn slot() -> Result<SemaphorePermit<'static>, PasswordError> {
    tokio::time::timeout(QUEUE_WAIT, slots().acquire())
        .await
        .map_err(|_| PasswordError::Busy)?
        .map_err(|_| PasswordError::Busy)
}

/// Hashes with argon2id and a fresh random salt into a PHC string.
pub async fn hash(password: String) -> Result<String, PasswordError> {
    let _slot = slot().await?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| PasswordError::Hash(e.to_string()))?
}

/// Checks `password` against a PHC string. With no stored hash (unknown
/// account) it still does the work against a dummy hash, so a wrong email
/// and a wrong password take the same time.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, PasswordError> {
    let _slot = slot().await?;
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let phc = match stored {
            Some(s) => s,
            None => match dummy_hash() {
                Some(d) => d.to_owned(),
                None => return false,
            },
        };
        let ok = PasswordHash::new(&phc)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    })
    .await
    .map_err(|e| PasswordError::Hash(e.to_string()))
}

fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            Argon2::default()
                .hash_password(b"parley-timing-equalizer")
                .map(|h| h.to_string())
                .ok()
        })
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_reject() {
        let phc = hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(
            verify("correct horse".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(!verify("wrong horse".into(), Some(phc)).await.unwrap());
        assert!(
            !verify("parley-timing-equalizer".into(), None)
                .await
                .unwrap()
        );
    }
}
