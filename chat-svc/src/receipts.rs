//! Receipts on their way to the bus, coalesced. A client may mark every
//! message of a busy group as it arrives; publishing each mark would put
//! hundreds of receipts per message on the conversation's partition, ahead
//! of its next messages. Instead `mark` answers once the receipt is checked
//! and queued here, and every [`FLUSH_EVERY`] the queue publishes one
//! receipt per (conversation, user, kind): the highest seq marked. Cursors
//! only move forward, so the highest mark says everything the others did.
//!
//! A receipt is a position, not a message: one lost in a crash before its
//! flush is repaired by the client's next mark (clients mark on every
//! connect), so the queue is in memory. A flush that fails keeps its
//! receipts for the next one.

use parley::bus::EventBus;
use parley::proto::{ReceiptEvent, chat_event};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bound of the queue: distinct cursors (conversation, user, kind) waiting
/// for a flush. A flush empties it every [`FLUSH_EVERY`], so it fills only
/// when the bus refuses publishes; past it a new cursor's mark is refused
/// (`unavailable`, the client marks again), while marks of queued cursors
/// still merge.
pub const MAX_PENDING: usize = 50_000;

/// How long a receipt may wait to be coalesced with later ones.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

type Key = (String, String, i32);

#[derive(Debug, Clone, Default)]
pub struct ReceiptQueue(Arc<Mutex<HashMap<Key, ReceiptEvent>>>);

impl ReceiptQueue {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Key, ReceiptEvent>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `receipt`, merged with a pending one for the same cursor.
    /// Answers `false`, queueing nothing, when it is a new cursor and the
    /// queue holds [`MAX_PENDING`] already.
    #[must_use]
    pub fn add(&self, receipt: ReceiptEvent) -> bool {
        let key = (
            receipt.conversation_id.clone(),
            receipt.user_id.clone(),
            receipt.kind,
        );
        let mut pending = self.pending();
        let full = pending.len() >= MAX_PENDING;
        match pending.get_mut(&key) {
            Some(queued) if queued.up_to_seq >= receipt.up_to_seq => {}
            Some(queued) => *queued = receipt,
            None if full => return false,
            None => {
                pending.insert(key, receipt);
            }
        }
        true
    }

    fn take(&self) -> Vec<ReceiptEvent> {
        std::mem::take(&mut *self.pending()).into_values().collect()
    }

    /// Publishes what is queued every `every` until `shutdown`, then once
    /// more.
    pub async fn flush_every(
        self,
        every: Duration,
        bus: Arc<dyn EventBus>,
        shutdown: CancellationToken,
    ) {
        crate::periodic::every(every, shutdown, || {
            let (queue, bus) = (self.clone(), bus.clone());
            async move { queue.flush(bus.as_ref()).await }
        })
        .await;
    }

    async fn flush(&self, bus: &dyn EventBus) {
        let receipts = self.take();
        if receipts.is_empty() {
            return;
        }
        let publishes = receipts.into_iter().map(|receipt| async move {
            crate::log::queue(bus, chat_event::Event::Receipt(receipt.clone()))
                .await
                .map_err(|e| (receipt, e))
        });
        for result in futures::future::join_all(publishes).await {
            if let Err((receipt, e)) = result {
                if !self.add(receipt) {
                    metrics::counter!("parley_chat_receipts_dropped_total").increment(1);
                }
                tracing::warn!(error = %e, "receipts not published; kept for the next flush");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(user: &str, kind: i32, seq: u64) -> ReceiptEvent {
        ReceiptEvent {
            conversation_id: "c".into(),
            user_id: user.into(),
            kind,
            up_to_seq: seq,
            at_ms: 0,
        }
    }

    #[test]
    fn the_highest_mark_per_cursor_is_kept() {
        let queue = ReceiptQueue::default();
        for r in [
            receipt("a", 2, 3),
            receipt("a", 2, 7),
            receipt("a", 2, 5),
            receipt("a", 1, 1),
            receipt("b", 2, 2),
        ] {
            assert!(queue.add(r));
        }
        let mut taken: Vec<(String, i32, u64)> = queue
            .take()
            .into_iter()
            .map(|r| (r.user_id, r.kind, r.up_to_seq))
            .collect();
        taken.sort();
        assert_eq!(
            taken,
            [("a".into(), 1, 1), ("a".into(), 2, 7), ("b".into(), 2, 2)]
        );
        assert!(queue.take().is_empty());
    }

    #[test]
    fn a_full_queue_refuses_new_cursors_and_merges_queued_ones() {
        let queue = ReceiptQueue::default();
        for i in 0..MAX_PENDING {
            assert!(queue.add(receipt(&format!("u{i}"), 2, 1)));
        }
        assert!(!queue.add(receipt("newcomer", 2, 1)), "past the bound");
        assert!(
            queue.add(receipt("u0", 2, 9)),
            "a queued cursor still moves"
        );
        let taken = queue.take();
        assert_eq!(taken.len(), MAX_PENDING);
        assert!(taken.iter().any(|r| r.user_id == "u0" && r.up_to_seq == 9));
        assert!(queue.add(receipt("newcomer", 2, 1)), "room after a flush");
    }
}
