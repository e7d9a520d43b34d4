//! Receipt counts for groups. Telling every member of a group of M about
//! every other member's receipt is M frames per receipt and M² per message;
//! instead the partition owner (the only writer of its groups' cursors)
//! keeps them in memory, and at most once per [`FLUSH_EVERY`] sends each
//! group whose cursors moved one `receipt_counts` frame, encoded once and
//! shared by every session: for each distinct cursor position, how many
//! members are at or past it. Its size is bounded by the number of
//! distinct positions, and its rate by the interval, however many members
//! read.

use parley::proto::{Conversation, ReceiptKind};
use parley::protocol::server;
use parley::push::{Outgoing, Pusher};
use parley::store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often moved counts are sent: fast enough to read as live, slow
/// enough that a busy group costs each member a few frames a second.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Groups whose cursors are kept at most; beyond it they are forgotten and
/// read again from the store as needed.
const GROUPS_KEPT: usize = 1024;
/// A group's cursors are read from the store again after this long, so an
/// owner that lost its partition for a while and got it back does not
/// count from what it knew before.
const RELOAD_AFTER: Duration = Duration::from_secs(30);

/// Cursor positions, highest first, each with how many members are at or
/// past it.
pub type Counts = Vec<(u64, usize)>;

/// user → (delivered, read).
type Positions = HashMap<String, (u64, u64)>;

impl State {
    /// Marks `group`'s counts for the next flush, to these members (as they
    /// were at the first change since the last flush).
    fn mark_changed(&mut self, group: &str, members: &[String]) {
        if !self.changed.contains_key(group) {
            self.changed.insert(group.to_owned(), members.to_vec());
        }
    }
}

#[derive(Default)]
struct State {
    /// group → (when read from the store, its members' positions).
    cursors: HashMap<String, (Instant, Positions)>,
    /// Groups whose counts moved since the last flush, with their members.
    changed: HashMap<String, Vec<String>>,
}

/// Shared by the sequencer, which notes moves, and the task that sends.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<State>>);

impl Tally {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain numbers behind.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `user`'s cursor in `group` moved to `seq` and marks the
    /// group's counts for the next flush, to its members as they were at
    /// the first move since the last flush. The group's cursors are loaded
    /// from the store the first time (they include this move).
    pub async fn note(
        &self,
        store: &dyn Store,
        group: &Conversation,
        user: &str,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<(), StoreError> {
        let members = &group.members;
        let group = group.id.as_str();
        let known = self
            .state()
            .cursors
            .get(group)
            .is_some_and(|(loaded, _)| loaded.elapsed() < RELOAD_AFTER);
        if !known {
            let Some(c) = store.conversation(group).await? else {
                return Ok(());
            };
            let loaded = c
                .cursors
                .iter()
                .map(|k| (k.user_id.clone(), (k.delivered_seq, k.read_seq)))
                .collect();
            let mut state = self.state();
            if state.cursors.len() >= GROUPS_KEPT {
                state.cursors.clear();
            }
            state
                .cursors
                .insert(group.to_owned(), (Instant::now(), loaded));
        }
        let mut state = self.state();
        if let Some((_, cursors)) = state.cursors.get_mut(group) {
            let cursors = cursors.entry(user.to_owned()).or_insert((0, 0));
            *cursors = parley::store::apply_receipt(*cursors, kind, seq).0;
        }
        state.mark_changed(group, members);
        Ok(())
    }

    /// The frames for every changed group, clearing the changes.
    fn take_frames(&self) -> Vec<Outgoing> {
        let mut state = self.state();
        let changed = std::mem::take(&mut state.changed);
        // A group whose cursors were forgotten since it changed is skipped:
        // its next receipt reloads them and marks it again.
        changed
            .into_iter()
            .filter_map(|(group, members)| {
                let (_, cursors) = state.cursors.get(&group)?;
                let (delivered, read) = counts(cursors, &members);
                Some(Outgoing {
                    frame: server::receipt_counts(&group, members.len(), &delivered, &read).into(),
                    users: members,
                })
            })
            .collect()
    }

    /// Sends the changed counts every `every` until `shutdown`, then once
    /// more.
    pub async fn flush_every(self, every: Duration, pusher: Pusher, shutdown: CancellationToken) {
        crate::periodic::every(every, shutdown, || {
            let (frames, pusher) = (self.take_frames(), pusher.clone());
            async move {
                if !frames.is_empty() {
                    pusher.push(frames).await;
                }
            }
        })
        .await;
    }
}

/// For delivered and read: the members' distinct cursor positions with how
/// many are at or past each (members without a cursor are at 0).
fn counts(cursors: &HashMap<String, (u64, u64)>, members: &[String]) -> (Counts, Counts) {
    let position = |m: &String, pick: fn(&(u64, u64)) -> u64| cursors.get(m).map(pick).unwrap_or(0);
    let delivered = members.iter().map(|m| position(m, |c| c.0)).collect();
    let read = members.iter().map(|m| position(m, |c| c.1)).collect();
    (cumulative(delivered), cumulative(read))
}

/// Distinct non-zero positions, highest first, each with how many of
/// `seqs` are at or past it.
fn cumulative(mut seqs: Vec<u64>) -> Counts {
    seqs.retain(|s| *s > 0);
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    let mut out: Counts = Vec::new();
    for (i, seq) in seqs.iter().enumerate() {
        match out.last_mut() {
            Some((last, n)) if last == seq => *n = i + 1,
            _ => out.push((*seq, i + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_counts_members_at_or_past_each_position() {
        assert_eq!(cumulative(vec![3, 0, 5, 3, 1]), [(5, 1), (3, 3), (1, 4)]);
        assert!(cumulative(vec![0, 0]).is_empty());
    }

    #[test]
    fn counts_cover_the_members_only_and_clear_once_taken() {
        let tally = Tally::default();
        {
            let mut state = tally.state();
            let (_, group) = state
                .cursors
                .entry("g".into())
                .or_insert_with(|| (Instant::now(), HashMap::new()));
            group.insert("a".into(), (4, 2));
            group.insert("b".into(), (4, 4));
            group.insert("gone".into(), (9, 9));
        }
        let members = ["a", "b", "c"].map(String::from);
        tally.state().mark_changed("g", &members);
        let frames = tally.take_frames();
        assert_eq!(frames.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&frames[0].frame).unwrap();
        assert_eq!(v["members"], 3);
        assert_eq!(
            v["delivered"],
            serde_json::json!([{"up_to_seq": 4, "count": 2}])
        );
        assert_eq!(
            v["read"],
            serde_json::json!([{"up_to_seq": 4, "count": 1}, {"up_to_seq": 2, "count": 2}])
        );
        assert!(tally.take_frames().is_empty());
        // Forgotten cursors: no frame rather than counts of zero.
        tally.state().mark_changed("unknown", &members);
        assert!(tally.take_frames().is_empty());
    }
}
