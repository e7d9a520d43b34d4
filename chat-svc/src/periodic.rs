//! The loop behind chat-svc's flushers (coalesced receipts, group receipt
//! counts): work on a fixed beat until shutdown, then once more, so what
//! was queued when a clean stop began is not left behind.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs `work` every `period` (a late beat is delayed, not bunched) until
/// `shutdown`, then a last time.
pub async fn every<F, W>(period: Duration, shutdown: CancellationToken, mut work: W)
where
    W: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = shutdown.cancelled() => true,
        };
        work().await;
        if stopping {
            return;
        }
    }
}
