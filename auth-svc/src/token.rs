//! HS256 JSON Web Tokens. The algorithm is pinned (a token claiming `none`
//! or RS256 is refused), `exp` and `sub` are required, and the secret only
//! leaves its [`SecretString`] to build the keys.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parley::time::now_ms;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub username: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid or expired token")]
    Invalid,
    #[error("cannot sign token: {0}")]
    Sign(String),
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    pub fn new(secret: &SecretString, lifetime: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
            lifetime,
        }
    }

    /// Issues a token; answers it with its expiry in ms.
    pub fn issue(&self, user_id: &str, username: &str) -> Result<(String, i64), TokenError> {
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let exp = now + self.lifetime.as_secs();
        let claims = Claims {
            sub: user_id.to_owned(),
            username: username.to_owned(),
            iat: now,
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok((token, i64::try_from(exp).unwrap_or(i64::MAX) * 1000))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| TokenError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(
            &SecretString::from(secret.to_owned()),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn round_trip() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let (token, _) = k.issue("u1", "alice").unwrap();
        assert_eq!(k.verify(&token).unwrap().sub, "u1");
    }

    #[test]
    fn other_secret_is_refused() {
        let (token, _) = keys("0123456789abcdef0123456789abcdef")
            .issue("u1", "alice")
            .unwrap();
        assert!(
            keys("ffffffffffffffffffffffffffffffff")
                .verify(&token)
                .is_err()
        );
    }
}
