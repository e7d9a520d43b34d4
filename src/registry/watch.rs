//! Noticing that the registry lost what was written to it, so instances
//! and sessions are written again at once.
//!
//! Instances re-register every third of their TTL (5 s by default) and
//! edges vouch for their sessions every third of the session TTL (20 s), so
//! after a Redis restart without persistence callers found no instances
//! ("no chat service is running") for up to 5 s and pushes found no
//! sessions for up to 20 s, silently (issue 11). A [`Restarts`] polls the
//! registry's [`Registry::epoch`] and wakes its holders when it changes;
//! `discovery::announce` and the edge's session heartbeat re-register then.

use super::Registry;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// How often the epoch is read: a Redis restart is noticed within this
/// much of Redis answering again (one small command per process per poll).
pub const POLL: Duration = Duration::from_millis(200);

/// Wakes its holders each time the registry is found to have lost its
/// data. Clones share one poller.
#[derive(Debug, Clone)]
pub struct Restarts {
    seen: watch::Receiver<u64>,
}

impl Restarts {
    /// Starts polling `registry` every [`POLL`]. The poller ends when the
    /// registry is dropped or no `Restarts` is left to tell.
    pub fn watch(registry: &Arc<dyn Registry>) -> Self {
        let (tx, rx) = watch::channel(0u64);
        let registry: Weak<dyn Registry> = Arc::downgrade(registry);
        tokio::spawn(async move {
            let mut last: Option<String> = None;
            loop {
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                // An error (Redis down) keeps the last epoch: whether the
                // data survived is known once Redis answers again.
                if let Ok(epoch) = registry.epoch().await {
                    if last.as_ref().is_some_and(|l| *l != epoch) {
                        tracing::warn!(
                            "the registry lost its data (restarted?): registering instances and sessions again"
                        );
                        metrics::counter!("parley_registry_restarts_total").increment(1);
                        tx.send_modify(|n| *n += 1);
                    }
                    last = Some(epoch);
                }
                drop(registry);
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Self { seen: rx }
    }

    /// Resolves at the next loss of data after the previous call (or after
    /// this `Restarts` was cloned); never, once the poller has ended.
    pub async fn changed(&mut self) {
        if self.seen.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// How many losses were seen so far.
    pub fn count(&self) -> u64 {
        *self.seen.borrow()
    }
}
