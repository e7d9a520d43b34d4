//! The sockets this edge holds. A session is a bounded outbox: the socket's
//! task drains it. A client too slow to keep up is disconnected (it resumes
//! with `sync`) rather than let its queue grow without bound.

use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{Notify, mpsc};

/// Frames queued per session before it counts as too slow.
pub const OUTBOX: usize = 512;

#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub user_id: String,
    pub outbox: mpsc::Sender<Utf8Bytes>,
    /// Wakes the session's task to close a slow consumer.
    pub kick: Arc<Notify>,
}

/// What happened to one frame handed to [`SessionTable::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    Unknown,
    Kicked,
}

/// Read-mostly (every delivery reads, only connects and closes write), hence
/// an `RwLock` held for a map operation and never across an await.
#[derive(Debug, Clone, Default)]
pub struct SessionTable {
    inner: Arc<RwLock<HashMap<String, SessionHandle>>>,
}

impl SessionTable {
    pub fn insert(&self, session_id: String, handle: SessionHandle) {
        if let Ok(mut map) = self.inner.write() {
            map.insert(session_id, handle);
        }
        metrics::gauge!("parley_edge_connections").set(self.len() as f64);
    }

    pub fn remove(&self, session_id: &str) {
        if let Ok(mut map) = self.inner.write() {
            map.remove(session_id);
        }
        metrics::gauge!("parley_edge_connections").set(self.len() as f64);
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (session id, user id) of every session, for heartbeats.
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.inner
            .read()
            .map(|m| {
                m.iter()
                    .map(|(sid, h)| (sid.clone(), h.user_id.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Queues `frame` for one session without waiting.
    pub fn send(&self, session_id: &str, frame: &Utf8Bytes) -> Sent {
        let Some(handle) = self
            .inner
            .read()
            .ok()
            .and_then(|m| m.get(session_id).cloned())
        else {
            return Sent::Unknown;
        };
        match handle.outbox.try_send(frame.clone()) {
            Ok(()) => Sent::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                handle.kick.notify_one();
                metrics::counter!("parley_edge_slow_consumers_total").increment(1);
                Sent::Kicked
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Unknown,
        }
    }
}
