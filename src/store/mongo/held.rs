//! The last seq of each conversation this process appended to, as the
//! store acknowledged it, so that the partition owner (the only writer of
//! its conversations' seqs) does not read `seqs` and probe `messages` for
//! every batch: three round trips per conversation per batch, most of what
//! FerretDB did under a 1:1 flood.
//!
//! A value can only be too low, never too high: it is raised only to a
//! last seq the append read from the store and then wrote, after the store
//! acknowledged the messages (see [`HeldSeqs::raise`]), and a store that
//! acknowledged a write keeps it (on a MongoDB replica set that takes write
//! concern `majority`, its default since 5.0: a `w:1` write can be rolled
//! back by a failover, and a held seq past it would leave a gap). It is too
//! low after another process wrote the conversation meanwhile (the partition moved away and back). Then the append plans a
//! seq that is taken, the unique `_id` of `messages` refuses the insert,
//! the conversations of that append are forgotten here, and the retry reads
//! the store. So a stale value costs one retry and never a wrong seq. The
//! keys that append inserted point at other messages until the retry
//! rewrites them; `message_by_client_id` checks the message it finds is
//! the key's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Conversations remembered at most; past it the map starts over (each
/// conversation then costs one read of the store again).
pub const HELD_CONVERSATIONS: usize = 100_000;

/// Shared by the clones of one store handle: `conversation -> last seq`.
#[derive(Clone, Debug, Default)]
pub struct HeldSeqs(Arc<Mutex<HashMap<String, u64>>>);

impl HeldSeqs {
    fn seqs(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        // A panic while holding the lock cannot leave a half-written entry.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last seq stored in `conversation`, if this process knows it.
    pub fn get(&self, conversation: &str) -> Option<u64> {
        self.seqs().get(conversation).copied()
    }

    /// Records `(conversation, last seq)` pairs an append knew to be the
    /// conversation's last: read from the store (or from here) and then
    /// written. Never a duplicate's seq: a replayed message found at seq 3
    /// while 4 is stored would make every retry plan 4 again (`scripts/torture
    /// real` stalled on exactly that after a kill).
    pub fn raise<'a>(&self, stored: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut seqs = self.seqs();
        for (conversation, seq) in stored {
            if seqs.len() >= HELD_CONVERSATIONS && !seqs.contains_key(conversation) {
                seqs.clear();
            }
            let held = seqs.entry(conversation.to_owned()).or_insert(0);
            *held = (*held).max(seq);
        }
    }

    /// Forgets these conversations: an append to them failed, and what the
    /// store holds now is read again.
    pub fn forget<'a>(&self, conversations: impl IntoIterator<Item = &'a str>) {
        let mut seqs = self.seqs();
        for conversation in conversations {
            seqs.remove(conversation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_only_rise_and_forgotten_ones_are_read_again() {
        let held = HeldSeqs::default();
        assert_eq!(held.get("c"), None);
        held.raise([("c", 5), ("d", 1)]);
        held.raise([("c", 3)]);
        assert_eq!(held.get("c"), Some(5), "a lower seq never lowers it");
        held.forget(["c"]);
        assert_eq!((held.get("c"), held.get("d")), (None, Some(1)));
    }

    #[test]
    fn the_map_is_bounded() {
        let held = HeldSeqs::default();
        let names: Vec<String> = (0..=HELD_CONVERSATIONS).map(|i| i.to_string()).collect();
        held.raise(names.iter().map(|n| (n.as_str(), 1)));
        assert!(held.seqs().len() <= HELD_CONVERSATIONS);
        assert_eq!(held.get(&HELD_CONVERSATIONS.to_string()), Some(1));
    }
}
