//! Delivery figures of the fault suite, from the devices' timed first
//! deliveries (`DeviceView::deliveries`): how long after a moment delivery
//! resumed in every conversation, the longest stall of a conversation in a
//! window, and the send → deliver p99 of messages sent in a window. Times
//! are µs of the run's clock (`Shared::now_us`).

use crate::ledger::{Delivery, DeviceView};
use std::collections::BTreeMap;

/// Every delivery of the run, by conversation, oldest first.
pub struct Timeline {
    by_conversation: BTreeMap<usize, Vec<Delivery>>,
}

impl Timeline {
    pub fn new(views: &[DeviceView]) -> Self {
        let mut by_conversation: BTreeMap<usize, Vec<Delivery>> = BTreeMap::new();
        for d in views.iter().flat_map(|v| &v.deliveries) {
            by_conversation.entry(d.conversation).or_default().push(*d);
        }
        for list in by_conversation.values_mut() {
            list.sort_by_key(|d| d.at_us);
        }
        Self { by_conversation }
    }

    /// The longest any conversation waited, from `at`, for the delivery of
    /// a message whose accepted attempt was sent at or after `at` (so the
    /// path through the faulted part works again, not just a message that
    /// was already on its way); a conversation with none before `until`
    /// counts as `until - at`. Only conversations that had deliveries
    /// before `at` count (the others carried no traffic to resume).
    pub fn resume_us(&self, at: u64, until: u64) -> u64 {
        self.by_conversation
            .values()
            .filter(|list| list.first().is_some_and(|d| d.at_us < at))
            .map(|list| {
                list.iter()
                    .find(|d| d.at_us >= at && d.sent_us >= at && d.at_us < until)
                    .map_or(until.saturating_sub(at), |d| d.at_us - at)
            })
            .max()
            .unwrap_or(0)
    }

    /// The longest interval overlapping [`from`, `to`] in which a
    /// conversation got no delivery at all: from its last delivery before
    /// `from` (or `from`) to its next one (or `to`).
    pub fn longest_stall_us(&self, from: u64, to: u64) -> u64 {
        let mut longest = 0;
        for list in self.by_conversation.values() {
            let mut last = list
                .iter()
                .rev()
                .find(|d| d.at_us < from)
                .map_or(from, |d| d.at_us);
            for d in list.iter().filter(|d| d.at_us >= from && d.at_us <= to) {
                longest = longest.max(d.at_us - last);
                last = d.at_us;
            }
            longest = longest.max(to.saturating_sub(last));
        }
        longest
    }

    /// The 99th percentile of send → first delivery of the messages whose
    /// accepted attempt was sent in [`from`, `to`), and how many there were.
    pub fn p99_us(&self, from: u64, to: u64) -> (u64, usize) {
        let mut latencies: Vec<u64> = self
            .by_conversation
            .values()
            .flatten()
            .filter(|d| d.sent_us >= from && d.sent_us < to)
            .map(|d| d.at_us.saturating_sub(d.sent_us))
            .collect();
        if latencies.is_empty() {
            return (0, 0);
        }
        latencies.sort_unstable();
        let rank = (latencies.len() * 99).div_ceil(100).max(1) - 1;
        (latencies[rank], latencies.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ds: &[(u64, u64, usize)]) -> DeviceView {
        DeviceView {
            deliveries: ds
                .iter()
                .map(|&(at_us, sent_us, conversation)| Delivery {
                    at_us,
                    sent_us,
                    conversation,
                })
                .collect(),
            ..DeviceView::default()
        }
    }

    #[test]
    fn resume_waits_for_a_message_sent_after_the_fault() {
        // Conversation 0 resumes 500 after the fault at 1000 (the delivery
        // at 1200 was sent before it); conversation 1 at once.
        let t = Timeline::new(&[view(&[
            (900, 800, 0),
            (1200, 950, 0),
            (1500, 1100, 0),
            (950, 900, 1),
            (1010, 1001, 1),
        ])]);
        assert_eq!(t.resume_us(1000, 5000), 500);
        // Nothing after the fault before the end: the whole window.
        assert_eq!(t.resume_us(2000, 3000), 1000);
    }

    #[test]
    fn stall_spans_the_last_delivery_before_the_window() {
        let t = Timeline::new(&[view(&[(900, 0, 0), (2100, 0, 0), (2200, 0, 0)])]);
        assert_eq!(t.longest_stall_us(1000, 2300), 1200);
        // Silence up to the end of the window counts too.
        assert_eq!(t.longest_stall_us(1000, 5000), 2800);
    }

    #[test]
    fn p99_of_the_window_only() {
        let ds: Vec<(u64, u64, usize)> = (0..100).map(|i| (i * 10 + i, i * 10, 0)).collect();
        let t = Timeline::new(&[view(&ds)]);
        assert_eq!(t.p99_us(0, 1000), (98, 100));
        assert_eq!(t.p99_us(2000, 3000), (0, 0));
    }
}
