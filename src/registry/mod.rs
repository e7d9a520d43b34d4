//! The registry: everything that describes live processes and sessions and
//! so must expire on its own when its owner dies. Service instances, user
//! sessions, idempotency claims and rate limits, each with a TTL; and
//! presence (status, last seen), which has none: it stays until it changes,
//! and presence-svc's sweeper marks offline users whose sessions expired.
//!
//! Redis in production; [`memory::MemoryRegistry`] in one process.

pub mod memory;
pub mod rate;
pub mod redis;
pub mod watch;

pub use rate::Decision;

use async_trait::async_trait;
use std::time::Duration;

/// One running instance of a role, as `/api/services` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceEntry {
    /// `edge`, `auth`, `chat` or `presence`.
    pub kind: String,
    pub id: String,
    /// host:port of its gRPC server.
    pub grpc_addr: String,
    /// host:port of its HTTP server, if it has one (edges).
    pub http_addr: Option<String>,
    pub started_at_ms: i64,
    /// Live sessions (edges) or in-flight work; callers may balance on it.
    pub load: u64,
}

/// One WebSocket session of a user, held by one edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionEntry {
    pub session_id: String,
    pub user_id: String,
    pub edge_id: String,
}

/// What others see of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRecord {
    pub user_id: String,
    /// `online`, `away`, `busy` or `offline`.
    pub status: String,
    pub last_seen_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unavailable: {0}")]
    Unavailable(String),
}

impl From<RegistryError> for crate::ApiError {
    fn from(err: RegistryError) -> Self {
        tracing::warn!(error = %err, "registry error");
        crate::ApiError::unavailable("registry unavailable, try again")
    }
}

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Adds or refreshes an instance; it disappears `ttl` after its last call.
    async fn register_service(
        &self,
        entry: &ServiceEntry,
        ttl: Duration,
    ) -> Result<(), RegistryError>;
    async fn deregister_service(&self, kind: &str, id: &str) -> Result<(), RegistryError>;
    /// Live instances, of one kind or all.
    async fn services(&self, kind: Option<&str>) -> Result<Vec<ServiceEntry>, RegistryError>;

    /// Adds a session; answers how many live sessions the user has now.
    async fn add_session(
        &self,
        session: &SessionEntry,
        ttl: Duration,
    ) -> Result<usize, RegistryError>;
    /// Removes a session; answers how many the user has left.
    async fn remove_session(&self, session: &SessionEntry) -> Result<usize, RegistryError>;
    /// Extends the TTL of sessions an edge still holds. A session removed
    /// recently is not brought back by a heartbeat that raced its close.
    async fn refresh_sessions(
        &self,
        sessions: &[SessionEntry],
        ttl: Duration,
    ) -> Result<(), RegistryError>;
    /// Live sessions of these users.
    async fn sessions_of(&self, users: &[String]) -> Result<Vec<SessionEntry>, RegistryError>;

    async fn set_presence(&self, record: &PresenceRecord) -> Result<(), RegistryError>;
    /// Presence of these users; users never seen are absent.
    async fn presence_of(&self, users: &[String]) -> Result<Vec<PresenceRecord>, RegistryError>;
    /// Every user whose status is not `offline`, so a sweeper can find those
    /// whose sessions all expired.
    async fn present_users(&self) -> Result<Vec<PresenceRecord>, RegistryError>;

    /// Claims `key` for `value` unless it is held: answers `None` when the
    /// claim is ours, or the value already there (SET NX).
    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, RegistryError>;
    /// Replaces the value of a claim (held or not) and its TTL.
    async fn settle(&self, key: &str, value: &str, ttl: Duration) -> Result<(), RegistryError>;
    /// Extends a claim to `ttl` from now only while it still holds `value`
    /// (compare and extend, atomically): a lease kept alive by its holder
    /// and by no one else. A claim that expired or changed hands is not
    /// brought back. Answers whether it was extended.
    async fn renew_if(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, RegistryError>;
    /// Drops a claim, so a failed operation can be retried.
    async fn release(&self, key: &str) -> Result<(), RegistryError>;
    /// Drops a claim only while it still holds `value`: a lock released by
    /// its owner, never by someone who outlived its TTL (the claim may be
    /// another owner's by then). Answers whether it was dropped.
    async fn release_if(&self, key: &str, value: &str) -> Result<bool, RegistryError>;

    /// Counts one event for `key` against "at most `limit` in any
    /// `period`" (GCRA, see [`rate`]), shared by every process using this
    /// registry: answers whether it is admitted, or how long until it
    /// would be. A refused event is not counted. Rate limits across edges
    /// and sessions are built on this.
    async fn rate_limit(
        &self,
        key: &str,
        limit: u64,
        period: Duration,
    ) -> Result<Decision, RegistryError>;

    async fn ping(&self) -> Result<(), RegistryError>;

    /// Names the registry's current lifetime of data: the same answer for
    /// as long as what was written to it is kept, a different one once it
    /// may have been lost (Redis restarted: a new `run_id`; or its keys
    /// wiped). Instances and edges compare it to re-register at once
    /// instead of at their next heartbeat (see [`watch`]).
    async fn epoch(&self) -> Result<String, RegistryError>;
}
