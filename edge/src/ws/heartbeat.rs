//! Every few seconds this edge tells presence-svc which sessions it still
//! holds, renewing their TTLs; if the edge dies, they expire on their own.

use crate::state::EdgeState;
use parley::proto::{HeartbeatRequest, SessionRef};
use tokio_util::sync::CancellationToken;

pub async fn run(state: EdgeState, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(state.config.liveness.session_heartbeat());
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
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
        if sessions.is_empty() {
            continue;
        }
        let result = match state.presence().await {
            Ok(mut client) => client
                .heartbeat(HeartbeatRequest {
                    edge_id: state.config.node_id.clone(),
                    sessions,
                })
                .await
                .map(|_| ())
                .map_err(parley::ApiError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "session heartbeat failed");
        }
    }
}
