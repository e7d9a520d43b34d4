//! The backend conformance suite: one set of behavioural checks that every
//! implementation of a backend trait must pass, embedded and real alike.
//! Each check takes a factory, so it can reopen a backend (a restart) and
//! use fresh names (random topics, keys, databases) per run.
//!
//! Stamped out for each implementation by `tests/conformance.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bus;
pub mod registry;
pub mod store;

use std::future::Future;
use std::time::Duration;

/// A failsafe for awaiting a condition; checks never rely on it passing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it holds, failing after [`PATIENCE`]. For behaviour
/// that is defined by time (TTL expiry), there is no event to await.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A random suffix for names that must not collide between runs.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &crate::ids::new_session_id()[..12])
}
