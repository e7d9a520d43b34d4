//! Every few seconds this edge tells presence-svc which sessions it still
//! holds, renewing their TTLs; if the edge dies, they expire on their own.
//!
//! The same beat rebuilds the registry after it lost its data (a Redis
//! restart without persistence): then it goes out at once rather than at
//! the next tick (up to a third of the session TTL, 20 s by default, during
//! which pushes to this edge's users found no session and went nowhere),
//! and is retried every [`RETRY`] until presence-svc takes it (presence-svc
//! itself may not be registered again yet).

use crate::state::EdgeState;
use parley::proto::{HeartbeatRequest, SessionRef};
use parley::registry::watch::Restarts;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pause between attempts of a beat that follows a registry restart.
const RETRY: Duration = Duration::from_millis(100);

pub async fn run(state: EdgeState, restarts: Restarts, shutdown: CancellationToken) {
    let mut restarts = restarts;
    let mut ticker = tokio::time::interval(state.config.liveness.session_heartbeat());
    ticker.tick().await;
    loop {
        let urgent = tokio::select! {
            _ = ticker.tick() => false,
            () = restarts.changed() => true,
            () = shutdown.cancelled() => return,
        };
        // An urgent beat is retried until it lands or the next tick is
        // due (which beats anyway).
        let give_up = tokio::time::Instant::now() + state.config.liveness.session_heartbeat();
        loop {
            match beat(&state).await {
                Ok(n) => {
                    if urgent {
                        tracing::info!(
                            sessions = n,
                            "sessions registered again after the registry lost its data"
                        );
                    }
                    break;
                }
                Err(e) if urgent && tokio::time::Instant::now() < give_up => {
                    tracing::debug!(error = %e, "session heartbeat after a registry restart failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "session heartbeat failed");
                    break;
                }
            }
        }
    }
}

/// Vouches for every session this edge holds; answers how many.
async fn beat(state: &EdgeState) -> Result<usize, parley::ApiError> {
    let sessions: Vec<SessionRef> = state
        .sessions
        .snapshot()
        .into_iter()
        .map(|(session_id, user_id)| SessionRef {
            session_id,
            user_id,
            edge_id: state.config.node_id.clone(),
        })
        .collect();
    let n = sessions.len();
    if n == 0 {
        return Ok(0);
    }
    state
        .presence()
        .await?
        .heartbeat(HeartbeatRequest {
            edge_id: state.config.node_id.clone(),
            sessions,
        })
        .await
        .map_err(parley::ApiError::from)?;
    Ok(n)
}
