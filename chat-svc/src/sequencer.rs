//! The `chat-messages` consumer. Each partition is consumed in order by one
//! member of the `chat-svc` group, which makes it the single writer of its
//! conversations' `seq`. For every batch: persist (idempotently), push to
//! the members' sessions, then commit the offsets. A crash before the commit
//! replays the batch; the store hands back the already stored messages with
//! their original id and seq.
//!
//! Changes to messages (edits, deletions, reactions) are checked again here
//! against the target's stored state, then appended like a message (they
//! take a seq) and applied to the target in place; a change that no longer
//! applies (its message was deleted meanwhile, its author left) is dropped.
//!
//! Receipts in a group are aggregated: the reader's own sessions get the
//! member's `message_read`/`message_delivered` (so its other devices drop
//! the unread count), and every member gets one `receipt_counts` per group
//! per batch, computed from the members' cursors kept in memory here (the
//! partition owner is their only writer). A batch holds whatever arrived
//! while the last one was processed, so the busier a group, the more
//! receipts one frame covers: the frames per member do not grow with the
//! number of readers.
//!
//! Members a new message finds with no live session get a `PushNotification`
//! on `push-notifications` (keyed by user), published before the commit, so
//! a replay may notify twice (the notifier's webhook carries an idempotency
//! key). Notifications are best effort: one that cannot be published is
//! dropped and counted, and never holds back message delivery.

use crate::changes::refusal;
use crate::chat::Chat;
use parley::bus::{Record, Subscription, Topic, next_batch_until, subscribe_until};
use parley::proto::{
    ChatEvent, ChatMessage, Conversation, MessageKind, PushNotification, ReceiptEvent, ReceiptKind,
    chat_event,
};
use parley::protocol::{kind_of, server};
use parley::push::Outgoing;
use parley::store::{Appended, Store, StoreError};
use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const GROUP: &str = "chat-svc";
const BATCH: usize = 512;

/// Consumes until `shutdown`. Store failures are retried with backoff
/// without committing, so nothing is skipped.
pub async fn run(chat: Chat, shutdown: CancellationToken) {
    let bus = chat.backends.bus.as_ref();
    let Some(mut subscription) = subscribe_until(bus, GROUP, Topic::ChatMessages, &shutdown).await
    else {
        return;
    };
    let mut cursors = Cursors::default();
    while let Some(batch) = next_batch_until(subscription.as_mut(), BATCH, &shutdown).await {
        if !process_until_done(&chat, &mut cursors, &batch, &shutdown).await {
            return;
        }
        commit(subscription.as_mut(), &batch).await;
    }
}

async fn process_until_done(
    chat: &Chat,
    cursors: &mut Cursors,
    batch: &[Record],
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match process(chat, cursors, batch).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), "persisting a batch failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return false,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn commit(subscription: &mut dyn Subscription, batch: &[Record]) {
    if let Err(e) = subscription.commit(batch).await {
        // The batch will be consumed again; the store dedupes it.
        tracing::warn!(error = %e, "offset commit failed");
    }
}

enum Step {
    Messages(Vec<ChatMessage>),
    Change(ChatMessage),
    Receipt(ReceiptEvent),
}

/// Splits a batch into runs of messages (appended in one store call),
/// single changes and single receipts, keeping their order.
fn steps(batch: &[Record]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for record in batch {
        let event = match ChatEvent::decode(record.payload.as_ref()) {
            Ok(ChatEvent { event: Some(e) }) => e,
            Ok(_) | Err(_) => {
                tracing::error!(
                    partition = record.partition,
                    offset = record.offset,
                    "undecodable chat event skipped"
                );
                continue;
            }
        };
        match event {
            chat_event::Event::MessageSent(m) if kind_of(&m) != MessageKind::Message => {
                steps.push(Step::Change(m));
            }
            chat_event::Event::MessageSent(m) => match steps.last_mut() {
                Some(Step::Messages(run)) => run.push(m),
                _ => steps.push(Step::Messages(vec![m])),
            },
            chat_event::Event::Receipt(r) => steps.push(Step::Receipt(r)),
        }
    }
    steps
}

/// The members to notify of `message`: everyone but the sender who has no
/// live session.
fn to_notify<'a>(
    message: &'a ChatMessage,
    members: &'a [String],
    sessionless: &'a std::collections::HashSet<String>,
) -> impl Iterator<Item = &'a String> + 'a {
    members
        .iter()
        .filter(move |m| **m != message.from && sessionless.contains(*m))
}

async fn process(chat: &Chat, cursors: &mut Cursors, batch: &[Record]) -> Result<(), StoreError> {
    let store = chat.backends.store.as_ref();
    let mut members: HashMap<String, Conversation> = HashMap::new();
    let mut outgoing = Vec::new();
    let mut delivered: Vec<(ChatMessage, Vec<String>)> = Vec::new();
    // Groups whose cursors moved in this batch, for their receipt counts.
    let mut counted: BTreeSet<String> = BTreeSet::new();
    for step in steps(batch) {
        match step {
            Step::Messages(run) => {
                for (sent, stored) in append_run(store, &run).await? {
                    // A resend under a new id is not news; a replay of the
                    // same event is pushed again (clients dedupe by id).
                    if !stored.fresh && stored.message.id != sent.id {
                        continue;
                    }
                    metrics::counter!("parley_chat_messages_persisted_total").increment(1);
                    let conversation = &stored.message.conversation_id;
                    if let Some(users) =
                        conversation_members(store, &mut members, conversation).await?
                    {
                        outgoing.push(Outgoing {
                            users: users.clone(),
                            frame: server::new_message(&stored.message).into(),
                        });
                        delivered.push((stored.message, users));
                    }
                }
            }
            Step::Change(change) => {
                if let Some((entry, users)) = apply_change(store, &mut members, change).await? {
                    outgoing.push(Outgoing {
                        users,
                        frame: server::entry(&entry).into(),
                    });
                }
            }
            Step::Receipt(receipt) => {
                let kind = ReceiptKind::try_from(receipt.kind).unwrap_or(ReceiptKind::Unspecified);
                if kind == ReceiptKind::Unspecified {
                    continue;
                }
                let moved = match store
                    .advance_cursor(
                        &receipt.conversation_id,
                        &receipt.user_id,
                        kind,
                        receipt.up_to_seq,
                    )
                    .await
                {
                    Ok(moved) => moved,
                    Err(e) if is_permanent(&e) => None,
                    Err(e) => return Err(e),
                };
                let Some(up_to_seq) = moved else { continue };
                let Some(users) =
                    conversation_members(store, &mut members, &receipt.conversation_id).await?
                else {
                    continue;
                };
                let is_group = members
                    .get(&receipt.conversation_id)
                    .is_some_and(|c| c.kind == "group");
                let frame = server::receipt(&ReceiptEvent {
                    up_to_seq,
                    ..receipt.clone()
                });
                if is_group {
                    // The reader's devices hear of it; the group gets counts.
                    cursors
                        .note(
                            store,
                            &receipt.conversation_id,
                            &receipt.user_id,
                            kind,
                            up_to_seq,
                        )
                        .await?;
                    counted.insert(receipt.conversation_id.clone());
                    outgoing.push(Outgoing {
                        users: vec![receipt.user_id.clone()],
                        frame: frame.into(),
                    });
                } else {
                    outgoing.push(Outgoing {
                        users,
                        frame: frame.into(),
                    });
                }
            }
        }
    }
    for conversation in counted {
        let Some(group) = members.get(&conversation) else {
            continue;
        };
        let (delivered_counts, read_counts) = cursors.counts(&conversation, &group.members);
        outgoing.push(Outgoing {
            users: group.members.clone(),
            frame: server::receipt_counts(
                &conversation,
                group.members.len(),
                &delivered_counts,
                &read_counts,
            )
            .into(),
        });
    }
    let pushed = chat.pusher.push_reporting(outgoing).await;
    // Published together (the bus batches them), all before the commit.
    let bus = chat.backends.bus.as_ref();
    let publishes = delivered.iter().flat_map(|(message, users)| {
        to_notify(message, users, &pushed.sessionless).map(move |user| {
            let event = PushNotification {
                user_id: user.clone(),
                message: Some(message.clone()),
            };
            bus.publish(
                Topic::PushNotifications,
                user,
                bytes::Bytes::from(event.encode_to_vec()),
            )
        })
    });
    // Best effort: a notification that cannot be queued is counted and
    // dropped, never a reason to hold the batch (and every message behind
    // it) back from its commit.
    for result in futures::future::join_all(publishes).await {
        match result {
            Ok(()) => metrics::counter!("parley_chat_notifications_queued_total").increment(1),
            Err(e) => {
                tracing::warn!(error = %e, "notification not queued; dropped");
                metrics::counter!("parley_chat_notifications_lost_total").increment(1);
            }
        }
    }
    Ok(())
}

/// Checks a change against its target as stored, appends it and applies
/// it; answers the entry and who to tell, or `None` when it no longer
/// applies. A change already stored (a replayed record) is applied and
/// told again: both are idempotent.
async fn apply_change(
    store: &dyn Store,
    members: &mut HashMap<String, Conversation>,
    change: ChatMessage,
) -> Result<Option<(ChatMessage, Vec<String>)>, StoreError> {
    let Some(users) = conversation_members(store, members, &change.conversation_id).await? else {
        return Ok(None);
    };
    let entry = match store
        .message_by_client_id(&change.from, &change.client_msg_id)
        .await?
    {
        Some(stored) => stored,
        None => {
            let target = store
                .message_by_id(&change.conversation_id, &change.target_id)
                .await?;
            let refused = match &target {
                None => Some("its message is not stored".to_owned()),
                Some(_) if !users.contains(&change.from) => Some("its author left".to_owned()),
                Some(t) => refusal(t, &change.from, kind_of(&change)).map(|e| e.message),
            };
            if let Some(reason) = refused {
                tracing::info!(id = %change.id, %reason, "change dropped");
                metrics::counter!("parley_chat_changes_dropped_total").increment(1);
                return Ok(None);
            }
            let Some(appended) = append_run(store, std::slice::from_ref(&change))
                .await?
                .pop()
            else {
                return Ok(None);
            };
            appended.1.message
        }
    };
    match store.apply_change(&entry).await {
        Ok(()) => {}
        Err(e) if is_permanent(&e) => {
            tracing::error!(id = %entry.id, error = %e, "change cannot be applied; skipped");
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    metrics::counter!("parley_chat_changes_applied_total").increment(1);
    Ok(Some((entry, users)))
}

/// Groups the partition owner keeps cursors for at most; beyond it they are
/// forgotten and read again from the store as needed.
const CURSOR_GROUPS: usize = 1024;

/// The delivered and read cursors of group members, per group, as the
/// partition owner (their only writer) has moved them.
#[derive(Default)]
struct Cursors(HashMap<String, HashMap<String, (u64, u64)>>);

impl Cursors {
    /// Records that `user`'s cursor moved to `seq`, loading the group's
    /// cursors from the store the first time (they include this move).
    async fn note(
        &mut self,
        store: &dyn Store,
        conversation: &str,
        user: &str,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<(), StoreError> {
        if !self.0.contains_key(conversation) {
            if self.0.len() >= CURSOR_GROUPS {
                self.0.clear();
            }
            let Some(c) = store.conversation(conversation).await? else {
                return Ok(());
            };
            let loaded = c
                .cursors
                .iter()
                .map(|k| (k.user_id.clone(), (k.delivered_seq, k.read_seq)))
                .collect();
            self.0.insert(conversation.to_owned(), loaded);
        }
        if let Some(group) = self.0.get_mut(conversation) {
            let (delivered, read) = group.entry(user.to_owned()).or_insert((0, 0));
            *delivered = (*delivered).max(seq);
            if kind == ReceiptKind::Read {
                *read = (*read).max(seq);
            }
        }
        Ok(())
    }

    /// For delivered and read: each distinct cursor position among
    /// `members` (newest first) with how many members are at or past it.
    fn counts(&self, conversation: &str, members: &[String]) -> (Counts, Counts) {
        let empty = HashMap::new();
        let group = self.0.get(conversation).unwrap_or(&empty);
        let positions = |pick: fn(&(u64, u64)) -> u64| {
            let seqs: Vec<u64> = members
                .iter()
                .map(|m| group.get(m).map(pick).unwrap_or(0))
                .collect();
            cumulative(seqs)
        };
        (positions(|c| c.0), positions(|c| c.1))
    }
}

/// Cursor positions, highest first, each with how many members are at or
/// past it.
type Counts = Vec<(u64, usize)>;

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

/// Errors retrying cannot cure: the record itself is bad.
fn is_permanent(e: &StoreError) -> bool {
    matches!(e, StoreError::NoConversation(_) | StoreError::Corrupt(_))
}

/// Appends a run of messages in one store call. If the run holds a record
/// that can never be stored, it is retried message by message and the bad
/// ones are logged and skipped, so one poisoned record cannot stall its
/// partition forever. Transient errors are returned for a retry.
async fn append_run(
    store: &dyn Store,
    run: &[ChatMessage],
) -> Result<Vec<(ChatMessage, Appended)>, StoreError> {
    match store.append_messages(run).await {
        Ok(appended) => Ok(run.iter().cloned().zip(appended).collect()),
        Err(e) if is_permanent(&e) => {
            let mut out = Vec::with_capacity(run.len());
            for m in run {
                match store.append_messages(std::slice::from_ref(m)).await {
                    Ok(one) => out.extend(one.into_iter().map(|a| (m.clone(), a))),
                    Err(e) if is_permanent(&e) => {
                        tracing::error!(id = %m.id, conversation = %m.conversation_id, error = %e, "message cannot be stored; skipped");
                        metrics::counter!("parley_chat_messages_dead_lettered_total").increment(1);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

/// The members of a conversation (cached for the batch); `None` when it
/// does not exist, which no retry will change.
async fn conversation_members(
    store: &dyn Store,
    cache: &mut HashMap<String, Conversation>,
    id: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    if let Some(c) = cache.get(id) {
        return Ok(Some(c.members.clone()));
    }
    let Some(c) = store.conversation_head(id).await? else {
        tracing::error!(conversation = %id, "event for a conversation that does not exist");
        return Ok(None);
    };
    let members = c.members.clone();
    cache.insert(id.to_owned(), c);
    Ok(Some(members))
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
    fn only_sessionless_members_other_than_the_sender_are_notified() {
        let message = ChatMessage {
            from: "alice".into(),
            ..Default::default()
        };
        let members = ["alice", "bob", "carol"].map(String::from).to_vec();
        let sessionless = ["alice", "carol"].map(String::from).into_iter().collect();
        let notified: Vec<&String> = to_notify(&message, &members, &sessionless).collect();
        assert_eq!(notified, ["carol"]);
    }
}
