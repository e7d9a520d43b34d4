//! `/ws`: one task per connection speaking the client protocol.
//!
//! - [`session`]: the connection's life: join within the deadline, then a
//!   loop over incoming frames, pushed frames and the close signals.
//! - [`intake`]: frames read and not yet handled: rate, bounds, lateness.
//! - [`commands`]: one client frame → one gRPC call → ack or error.
//! - [`heartbeat`]: vouches for this edge's sessions to presence-svc.

pub mod commands;
pub mod heartbeat;
pub mod intake;
pub mod session;

use crate::http_error::HttpError;
use crate::state::EdgeState;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use parley::{ApiError, ErrorCode};

/// Close codes of the protocol.
pub mod close {
    /// Not joined in time, a frame before `join`, or a bad token.
    pub const NOT_JOINED: u16 = 4001;
    /// This edge is shutting down: reconnect (through the balancer) and sync.
    pub const GOING_AWAY: u16 = 4002;
    /// The user already has as many live sessions as allowed.
    pub const TOO_MANY_SESSIONS: u16 = 4003;
    /// The client could not keep up with its frames: reconnect and sync.
    pub const TOO_SLOW: u16 = 4008;
    /// A frame larger than the transport accepts at all.
    pub const TOO_BIG: u16 = 1009;
}

/// Frames between 64 KiB and this get a `too_large` error and the
/// connection stays; larger ones close it with 1009.
pub const MAX_TRANSPORT_MESSAGE: usize = 256 * 1024;

/// Upgrades a handshake from an allowed origin ([`crate::origin`]); any
/// other gets 403 `forbidden`.
///
/// Buffer sizes are set deliberately: tungstenite's defaults allocate a
/// 128 KiB read buffer per connection, which dominates an idle socket's
/// memory. Chat frames are small; 4 KiB reads grow on demand.
pub async fn upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(state): State<EdgeState>,
) -> Response {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if !state
        .config
        .allowed_origins
        .allows(text(header::ORIGIN), text(header::HOST))
    {
        metrics::counter!("parley_edge_foreign_origins_refused_total").increment(1);
        let refused = ApiError::new(ErrorCode::Forbidden, "this origin may not open /ws");
        return HttpError(refused).into_response();
    }
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(MAX_TRANSPORT_MESSAGE)
        .max_frame_size(MAX_TRANSPORT_MESSAGE)
        .on_upgrade(move |socket| session::run(socket, state))
}
