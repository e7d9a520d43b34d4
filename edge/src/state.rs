//! What every handler of an edge shares.

use crate::sessions::SessionTable;
use parley::ApiError;
use parley::config::Liveness;
use parley::discovery::{Discovery, Routed, kind};
use parley::proto::auth_service_client::AuthServiceClient;
use parley::proto::chat_service_client::ChatServiceClient;
use parley::proto::presence_service_client::PresenceServiceClient;

/// A person types far slower than this; a runaway client does not.
pub const DEFAULT_FRAMES_PER_SECOND: u32 = 30;

/// Longest a write command (send, edit, delete, react) may wait at the edge
/// before it is handled; past it the edge answers `unavailable` at once
/// instead of adding to an overloaded server's latency (see
/// `ws::session`). Milliseconds.
pub const DEFAULT_MAX_FRAME_WAIT_MS: u64 = 250;

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// This edge's id in the registry and in `connected.node`.
    pub node_id: String,
    pub liveness: Liveness,
    /// Time a new socket has to send `join`.
    pub join_timeout: std::time::Duration,
    /// Frames per second one connection may send (bursts of twice that);
    /// beyond it frames are refused with `rate_limited`.
    pub frames_per_second: u32,
    /// Longest a write command may wait behind the connection's earlier
    /// frames before it is refused with `unavailable` (the client resends it
    /// with the same `client_msg_id`).
    pub max_frame_wait: std::time::Duration,
    /// Addresses registered for this edge instead of the bound ones (see
    /// `GRPC_ADVERTISE_ADDR`, `HTTP_ADVERTISE_ADDR`).
    pub advertise_grpc: Option<String>,
    pub advertise_http: Option<String>,
    /// Pages of other origins allowed to open `/ws`.
    pub allowed_origins: crate::origin::AllowedOrigins,
}

impl EdgeConfig {
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            liveness: Liveness::default(),
            join_timeout: std::time::Duration::from_secs(10),
            frames_per_second: DEFAULT_FRAMES_PER_SECOND,
            max_frame_wait: std::time::Duration::from_millis(DEFAULT_MAX_FRAME_WAIT_MS),
            advertise_grpc: None,
            advertise_http: None,
            allowed_origins: crate::origin::AllowedOrigins::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EdgeState {
    pub config: EdgeConfig,
    pub discovery: Discovery,
    pub sessions: SessionTable,
    /// Cancelled when the edge shuts down: sessions close with 4002.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl EdgeState {
    pub fn new(
        config: EdgeConfig,
        discovery: Discovery,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            config,
            discovery,
            sessions: SessionTable::default(),
            shutdown,
        }
    }

    pub async fn auth(&self) -> Result<AuthServiceClient<Routed>, ApiError> {
        Ok(AuthServiceClient::new(
            self.discovery.channel(kind::AUTH).await?,
        ))
    }

    pub async fn chat(&self) -> Result<ChatServiceClient<Routed>, ApiError> {
        Ok(ChatServiceClient::new(
            self.discovery.channel(kind::CHAT).await?,
        ))
    }

    pub async fn presence(&self) -> Result<PresenceServiceClient<Routed>, ApiError> {
        Ok(PresenceServiceClient::new(
            self.discovery.channel(kind::PRESENCE).await?,
        ))
    }
}
