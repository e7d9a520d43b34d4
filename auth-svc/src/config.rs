//! auth-svc configuration. The secret never prints: it lives in a
//! [`SecretString`] from the moment it is read.

use clap::Args;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HMAC secret for HS256 tokens. When unset, one is generated once and
    /// kept in the data directory.
    #[arg(long, env = "JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
    /// Token lifetime: seconds, or a duration such as `7d`, `12h`, `30m`.
    #[arg(long, env = "JWT_EXPIRES_IN", global = true, default_value = "7d", value_parser = parse_lifetime)]
    pub jwt_expires_in: Duration,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt_secret: SecretString,
    pub jwt_expires_in: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("JWT_SECRET must be at least 32 bytes (got {0})")]
    WeakSecret(usize),
    #[error("cannot read or write the generated JWT secret at {path}: {cause}")]
    SecretFile { path: String, cause: std::io::Error },
}

/// Accepts `3600` (seconds) or a humantime duration (`7d`, `12h`).
pub fn parse_lifetime(raw: &str) -> Result<Duration, String> {
    let lifetime = match raw.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(raw.trim()).map_err(|e| e.to_string())?,
    };
    if lifetime.is_zero() {
        return Err("token lifetime must be positive".into());
    }
    Ok(lifetime)
}

impl AuthArgs {
    /// Resolves the secret: the configured one, or the one generated in
    /// `data_dir` on an earlier start, or a new random one saved there.
    pub fn resolve(&self, data_dir: &Path) -> Result<AuthConfig, ConfigError> {
        let jwt_secret = match &self.jwt_secret {
            Some(secret) => {
                let len = secret.expose_secret().len();
                if len < 32 {
                    return Err(ConfigError::WeakSecret(len));
                }
                secret.clone()
            }
            None => generated_secret(data_dir)?,
        };
        Ok(AuthConfig {
            jwt_secret,
            jwt_expires_in: self.jwt_expires_in,
        })
    }
}

fn generated_secret(data_dir: &Path) -> Result<SecretString, ConfigError> {
    let path = data_dir.join("jwt_secret");
    let fail = |cause| ConfigError::SecretFile {
        path: path.display().to_string(),
        cause,
    };
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing.trim().len() >= 32 => {
            tracing::warn!(path = %path.display(), "JWT_SECRET is not set; using the secret generated earlier in the data directory");
            return Ok(SecretString::from(existing.trim().to_owned()));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &secret).map_err(fail)?;
    tracing::warn!(path = %path.display(), "JWT_SECRET is not set; generated a random secret and saved it in the data directory (set JWT_SECRET in production)");
    Ok(SecretString::from(secret))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_like_the_seed() {
        assert_eq!(parse_lifetime("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_lifetime("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_lifetime("0").is_err());
        assert!(parse_lifetime("soon").is_err());
    }

    #[test]
    fn generated_secret_is_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let args = AuthArgs {
            jwt_secret: None,
            jwt_expires_in: Duration::from_secs(60),
        };
        let first = args.resolve(dir.path()).unwrap();
        let second = args.resolve(dir.path()).unwrap();
        assert_eq!(
            first.jwt_secret.expose_secret(),
            second.jwt_secret.expose_secret()
        );
        assert!(first.jwt_secret.expose_secret().len() >= 32);
    }

    #[test]
    fn short_secrets_are_refused() {
        let args = AuthArgs {
            jwt_secret: Some(SecretString::from("short")),
            jwt_expires_in: Duration::from_secs(60),
        };
        assert!(matches!(
            args.resolve(Path::new("/nonexistent")),
            Err(ConfigError::WeakSecret(5))
        ));
    }
}
