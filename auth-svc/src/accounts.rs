//! The account domain: registration, login and token checks over the store.

use crate::config::AuthConfig;
use crate::token::TokenKeys;
use crate::{password, validate};
use parley::ids::UserId;
use parley::proto::User;
use parley::store::{Store, UserRecord};
use parley::time::now_ms;
use parley::{ApiError, ErrorCode};
use std::sync::Arc;

/// Most users one search answers.
pub const MAX_SEARCH: usize = 50;

#[derive(Clone)]
pub struct Accounts {
    store: Arc<dyn Store>,
    keys: TokenKeys,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("keys", &self.keys)
            .finish()
    }
}

/// A signed-in user and their token.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub user: User,
}

/// What registration takes, as sent by the client.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub username: String,
    pub email: String,
    pub password: String,
    pub display_name: String,
}

fn password_error(e: password::PasswordError) -> ApiError {
    match e {
        password::PasswordError::Busy => ApiError::new(
            ErrorCode::RateLimited,
            "too many sign-ins at once, retry shortly",
        ),
        password::PasswordError::Hash(_) => ApiError::internal(&e),
    }
}

fn bad_credentials() -> ApiError {
    ApiError::unauthorized("invalid email or password")
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, config: &AuthConfig) -> Self {
        Self {
            store,
            keys: TokenKeys::new(&config.jwt_secret, config.jwt_expires_in),
        }
    }

    pub async fn register(&self, r: Registration) -> Result<Session, ApiError> {
        let username = validate::username(&r.username)?;
        let email = validate::email(&r.email)?;
        validate::password(&r.password)?;
        let display_name = validate::display_name(&r.display_name, &username)?;
        let password_hash = password::hash(r.password).await.map_err(password_error)?;
        let user = User {
            id: UserId::generate().into_string(),
            username,
            display_name,
            created_at_ms: now_ms(),
        };
        self.store
            .create_user(&UserRecord {
                user: user.clone(),
                email,
                password_hash,
            })
            .await?;
        tracing::info!(user_id = %user.id, username = %user.username, "registered");
        self.session_for(user)
    }

    /// Unknown email and wrong password get the same answer, in the same time.
    pub async fn login(&self, email: &str, password: &str) -> Result<Session, ApiError> {
        let email = validate::email(email).map_err(|_| bad_credentials())?;
        let record = self.store.user_by_email(&email).await?;
        let stored = record.as_ref().map(|r| r.password_hash.clone());
        if !password::verify(password.to_owned(), stored)
            .await
            .map_err(password_error)?
        {
            return Err(bad_credentials());
        }
        let record = record.ok_or_else(bad_credentials)?;
        self.session_for(record.user)
    }

    /// The user a token speaks for; `unauthorized` for a bad, forged,
    /// expired token or a user that no longer exists.
    pub async fn verify(&self, token: &str) -> Result<(User, i64), ApiError> {
        let claims = self
            .keys
            .verify(token)
            .map_err(|e| ApiError::unauthorized(e.to_string()))?;
        let user = self
            .store
            .users_by_ids(std::slice::from_ref(&claims.sub))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))?;
        let expires_at_ms = i64::try_from(claims.exp).unwrap_or(i64::MAX) * 1000;
        Ok((user, expires_at_ms))
    }

    pub async fn users(&self, ids: &[String]) -> Result<Vec<User>, ApiError> {
        let ids = ids
            .iter()
            .map(|id| UserId::parse(id).map(UserId::into_string))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.store.users_by_ids(&ids).await?)
    }

    pub async fn search(&self, query: &str, limit: usize) -> Result<Vec<User>, ApiError> {
        if query.chars().count() > 64 {
            return Err(ApiError::invalid("query must be at most 64 characters"));
        }
        let limit = if limit == 0 {
            20
        } else {
            limit.min(MAX_SEARCH)
        };
        Ok(self.store.search_users(query.trim(), limit).await?)
    }

    fn session_for(&self, user: User) -> Result<Session, ApiError> {
        let (token, _) = self
            .keys
            .issue(&user.id, &user.username)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        Ok(Session { token, user })
    }
}
