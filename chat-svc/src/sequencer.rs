//! The `chat-messages` consumer. Each partition is consumed in order by one
//! member of the `chat-svc` group, which makes it the single writer of its
//! conversations' `seq`. For every batch: persist (idempotently), push to
//! the members' sessions, then commit the offsets. A crash before the commit
//! replays the batch; the store hands back the already stored messages with
//! their original id and seq. (The commit waits for [`Store::sync`], see
//! [`run`]; every ordering rule of this path is listed in
//! `docs/architecture.md#crash-ordering-rules`.)
//!
//! Changes to messages (edits, deletions, reactions) are checked again here
//! against the target's stored state, then appended like a message (they
//! take a seq) and applied to the target in place; a change that no longer
//! applies (its message was deleted meanwhile, its author left), that
//! would change nothing (a reaction already there) or whose `(sender,
//! client_msg_id)` is stored under another id (a resend) is dropped.
//!
//! Receipts in a group are aggregated: the reader's own sessions get the
//! member's `message_read`/`message_delivered` (so its other devices drop
//! the unread count), and the group's [`Tally`] sends every member one
//! `receipt_counts` for all the receipts of a short interval.
//!
//! Members a new message finds with no live session get a `PushNotification`
//! on `push-notifications` (keyed by user), published before the commit, so
//! a replay may notify twice (the notifier's webhook carries an idempotency
//! key). Notifications are best effort: one that cannot be published is
//! dropped and counted, and never holds back message delivery.

use crate::changes::refusal;
use crate::chat::Chat;
use crate::conversations::Directs;
use crate::log::GROUP;
use crate::tally::Tally;
use parley::bus::{EventBus, Record, Subscription, Topic, next_batch_until, subscribe_until};
use parley::proto::{
    ChatEvent, ChatMessage, Conversation, MessageKind, PushNotification, ReceiptEvent, ReceiptKind,
    chat_event,
};
use parley::protocol::server;
use parley::push::Outgoing;
use parley::store::{Appended, Store, StoreError, changes_message};
use prost::Message;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const BATCH: usize = 512;

/// Consumes until `shutdown`. Store failures are retried with backoff
/// without committing, so nothing is skipped. Offsets are committed after
/// what the batches wrote is durable: after every batch when the store's
/// writes are durable on return (without waiting for [`Store::sync`],
/// which is then called once on the way out), else after `sync`, at most every
/// [`DURABLE_EVERY`] (or [`DURABLE_AFTER`] records) while records come,
/// and within it of the last batch when they stop. `caught_up` is told
/// once the store holds everything the log held when the sequencer joined
/// (at once unless the store
/// [rolls back on a crash](Store::rolls_back_on_crash): then once
/// [`EventBus::uncommitted`] of the group on `chat-messages` is 0, which
/// unlike its lag also counts partitions it never committed on; nothing
/// else writes to the log while chat-svc waits for it).
pub async fn run(chat: Chat, caught_up: oneshot::Sender<()>, shutdown: CancellationToken) {
    let bus = chat.backends.bus.as_ref();
    let Some(mut subscription) = subscribe_until(bus, GROUP, Topic::ChatMessages, &shutdown).await
    else {
        return;
    };
    let tally = Tally::default();
    let flusher = tokio::spawn(tally.clone().flush_every(
        crate::tally::FLUSH_EVERY,
        chat.pusher.clone(),
        shutdown.clone(),
    ));
    let store = chat.backends.store.as_ref();
    let mut pending = Pending {
        immediate: !store.rolls_back_on_crash(),
        ..Pending::default()
    };
    let mut caught_up = Some(caught_up);
    if !store.rolls_back_on_crash()
        && let Some(tx) = caught_up.take()
    {
        let _ = tx.send(());
    }
    loop {
        if caught_up.is_some()
            && pending.is_empty()
            && replayed(bus).await
            && let Some(tx) = caught_up.take()
        {
            tracing::info!("the store holds everything the log held at start");
            let _ = tx.send(());
        }
        let batch = tokio::select! {
            batch = next_batch_until(subscription.as_mut(), BATCH, &shutdown) => batch,
            () = tokio::time::sleep_until(pending.due()), if !pending.is_empty() => {
                pending.commit(store, subscription.as_mut()).await;
                continue;
            }
        };
        let Some(batch) = batch else { break };
        if !process_until_done(&chat, &tally, &batch, &shutdown).await {
            break;
        }
        pending.add(&batch);
        if pending.due() <= tokio::time::Instant::now() {
            pending.commit(store, subscription.as_mut()).await;
        }
    }
    // What was processed is made durable and committed on the way out, so
    // an ordinary restart replays nothing, and what the store left to
    // write after its appends is written.
    pending.commit(store, subscription.as_mut()).await;
    if let Err(e) = store.sync().await {
        tracing::warn!(error = %e, "cannot make the store durable on the way out");
    }
    let _ = flusher.await;
}

/// Whether the group has committed every record of `chat-messages`
/// ([`EventBus::uncommitted`] is 0). A bus that cannot tell (Kafka beside
/// the embedded store) is taken as replayed, with a warning: the store may
/// then be behind what clients were shown for as long as the replay takes.
async fn replayed(bus: &dyn EventBus) -> bool {
    match bus.uncommitted(GROUP, Topic::ChatMessages).await {
        Some(n) => n == 0,
        None => {
            tracing::warn!(
                "cannot tell whether the store replayed the log; serving before it may have"
            );
            true
        }
    }
}

/// How long processed records may wait for their offsets' commit (and the
/// store's fsync before it): the most a crash makes the sequencer replay,
/// and the fsyncs one durable point per interval saves.
pub const DURABLE_EVERY: Duration = Duration::from_millis(100);

/// Most records processed before their commit, whatever the time: send
/// admission counts uncommitted records as the sequencers' backlog (at
/// most 400 by default, `PARLEY_MAX_BACKLOG`), so records waiting only for
/// the durable point must stay well below it.
pub const DURABLE_AFTER: usize = 100;

/// Records processed but not committed yet: the last of each partition,
/// since a commit covers everything before it in its partition.
#[derive(Default)]
struct Pending {
    /// Whether the store's writes are durable when they return (it does
    /// not roll back on a crash): then nothing is gained by waiting, and
    /// every batch is committed at once, as a consumer group expects (a
    /// delayed commit is replayed, and pushed again, after a rebalance).
    immediate: bool,
    last: HashMap<u32, Record>,
    since: Option<tokio::time::Instant>,
    /// Records processed since the last commit.
    records: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    fn add(&mut self, batch: &[Record]) {
        for record in batch {
            match self.last.get(&record.partition) {
                Some(last) if last.offset >= record.offset => {}
                _ => {
                    self.last.insert(record.partition, record.clone());
                }
            }
        }
        if !batch.is_empty() && self.since.is_none() {
            self.since = Some(tokio::time::Instant::now());
        }
        self.records += batch.len();
    }

    /// When the oldest pending record has waited [`DURABLE_EVERY`], or now
    /// once [`DURABLE_AFTER`] records wait.
    fn due(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        if self.immediate || self.records >= DURABLE_AFTER {
            return now;
        }
        self.since.map_or(now, |since| since + DURABLE_EVERY)
    }

    /// Makes the store durable (when its writes are not on return), then
    /// commits; if the store cannot sync,
    /// nothing is committed (the records are replayed after a crash) and
    /// the next call tries again.
    async fn commit(&mut self, store: &dyn Store, subscription: &mut dyn Subscription) {
        if self.last.is_empty() {
            return;
        }
        // A store durable on return has only indexes left to write (the
        // Mongo store's, see `Store::sync`): not worth holding the commit,
        // and with it send admission's backlog, for them.
        if !self.immediate
            && let Err(e) = store.sync().await
        {
            tracing::warn!(error = %e, "cannot make the store durable; offsets not committed");
            self.since = Some(tokio::time::Instant::now());
            return;
        }
        let records: Vec<Record> = self.last.values().cloned().collect();
        if commit(subscription, &records).await {
            self.last.clear();
            self.since = None;
            self.records = 0;
        } else {
            // Kept and tried again: a commit lost here would leave the
            // start-up gate waiting for `uncommitted` to reach 0 forever.
            // (Only the embedded bus reports `uncommitted`, and its commit
            // errors are seen here; Kafka's asynchronous commit is `Ok`
            // once queued, see `Subscription::commit`.)
            self.since = Some(tokio::time::Instant::now());
        }
    }
}

async fn process_until_done(
    chat: &Chat,
    tally: &Tally,
    batch: &[Record],
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match process(chat, tally, batch).await {
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

/// Commits `batch`'s offsets; false (logged) when the bus refused: the
/// records are consumed again after a restart or rebalance, and the store
/// dedupes them.
async fn commit(subscription: &mut dyn Subscription, batch: &[Record]) -> bool {
    match subscription.commit(batch).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed");
            false
        }
    }
}

enum Step {
    Messages(Vec<ChatMessage>),
    Change(Box<ChatMessage>),
    Receipts(Vec<ReceiptEvent>),
}

/// Splits a batch into runs of messages (appended in one store call),
/// single changes and runs of receipts (one store call each), keeping
/// their order.
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
            chat_event::Event::MessageSent(m) if m.kind() != MessageKind::Message => {
                steps.push(Step::Change(Box::new(m)));
            }
            chat_event::Event::MessageSent(m) => match steps.last_mut() {
                Some(Step::Messages(run)) => run.push(m),
                _ => steps.push(Step::Messages(vec![m])),
            },
            chat_event::Event::Receipt(r) if r.kind == ReceiptKind::Unspecified as i32 => {}
            chat_event::Event::Receipt(r) => match steps.last_mut() {
                Some(Step::Receipts(run)) => run.push(r),
                _ => steps.push(Step::Receipts(vec![r])),
            },
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

async fn process(chat: &Chat, tally: &Tally, batch: &[Record]) -> Result<(), StoreError> {
    let store = chat.backends.store.as_ref();
    let mut members: HashMap<String, Conversation> = HashMap::new();
    let mut outgoing = Vec::new();
    let mut delivered: Vec<(ChatMessage, Vec<String>)> = Vec::new();
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
                    if let Some(c) =
                        conversation_of(store, &chat.directs, &mut members, conversation).await?
                    {
                        outgoing.push(Outgoing {
                            users: c.members.clone(),
                            frame: server::new_message(&stored.message).into(),
                        });
                        delivered.push((stored.message, c.members.clone()));
                    }
                }
            }
            Step::Change(change) => {
                if let Some((entry, users)) =
                    apply_change(store, &chat.directs, &mut members, *change).await?
                {
                    outgoing.push(Outgoing {
                        users,
                        frame: server::entry(&entry).into(),
                    });
                }
            }
            Step::Receipts(run) => {
                // The authoritative membership check: `mark` answered from
                // a cache or a membership list that may lag the group.
                let mut kept = Vec::with_capacity(run.len());
                for receipt in run {
                    if conversation_of(store, &chat.directs, &mut members, &receipt.conversation_id)
                        .await?
                        .is_some_and(|c| c.members.contains(&receipt.user_id))
                    {
                        kept.push(receipt);
                    }
                }
                let moved = store.advance_cursors(&kept).await?;
                for (receipt, moved) in kept.into_iter().zip(moved) {
                    let Some(up_to_seq) = moved else { continue };
                    // Kept receipts' conversations are all in the batch's cache.
                    let Some(c) = members.get(&receipt.conversation_id) else {
                        continue;
                    };
                    let frame = server::receipt(&ReceiptEvent {
                        up_to_seq,
                        ..receipt.clone()
                    })
                    .into();
                    if c.kind == "group" {
                        // The reader's devices hear of it; the group gets counts.
                        tally
                            .note(store, c, &receipt.user_id, receipt.kind(), up_to_seq)
                            .await?;
                        outgoing.push(Outgoing {
                            users: vec![receipt.user_id.clone()],
                            frame,
                        });
                    } else {
                        outgoing.push(Outgoing {
                            users: c.members.clone(),
                            frame,
                        });
                    }
                }
            }
        }
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
/// told again: both are idempotent. A resend queued again under a new id
/// (the same sender and `client_msg_id`, its claim forgotten) is neither.
async fn apply_change(
    store: &dyn Store,
    directs: &Directs,
    members: &mut HashMap<String, Conversation>,
    change: ChatMessage,
) -> Result<Option<(ChatMessage, Vec<String>)>, StoreError> {
    let Some(users) = conversation_of(store, directs, members, &change.conversation_id)
        .await?
        .map(|c| c.members.clone())
    else {
        return Ok(None);
    };
    // Already stored (a replayed record): not checked again, since it
    // applied once and the check would now see its own effect; appended
    // again all the same, which stores nothing new but completes what a
    // crash may have cut short (the conversation's last seq).
    let stored = store
        .message_by_client_id(&change.from, &change.client_msg_id)
        .await?;
    if stored.as_ref().is_some_and(|s| s.id != change.id) {
        // The earlier record was applied and told. Applying its stored
        // entry again would undo what came after it (an older edit's text
        // back, a reaction taken back since put on again), and telling it
        // again would repeat it to every member.
        tracing::debug!(id = %change.id, "change resent under a new id; dropped");
        metrics::counter!("parley_chat_changes_resent_total").increment(1);
        return Ok(None);
    }
    if stored.is_none() {
        let target = store
            .message_by_id(&change.conversation_id, &change.target_id)
            .await?;
        let refused = match &target {
            None => Some("its message is not stored".to_owned()),
            Some(_) if !users.contains(&change.from) => Some("its author left".to_owned()),
            Some(t) => refusal(t, &change.from, change.kind()).map(|e| e.message),
        };
        if let Some(reason) = refused {
            tracing::info!(id = %change.id, %reason, "change dropped");
            metrics::counter!("parley_chat_changes_dropped_total").increment(1);
            return Ok(None);
        }
        // A no-op by now (the same reaction queued twice before either
        // applied): nothing to log or tell anyone.
        if target
            .as_ref()
            .is_some_and(|t| !changes_message(t, &change))
        {
            tracing::debug!(id = %change.id, "change changes nothing; dropped");
            metrics::counter!("parley_chat_changes_unchanged_total").increment(1);
            return Ok(None);
        }
    }
    let Some((_, appended)) = append_run(store, std::slice::from_ref(&change))
        .await?
        .pop()
    else {
        return Ok(None);
    };
    let entry = appended.message;
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

/// A conversation's kind and members (cached for the batch, and for good
/// when it is 1:1, see [`Directs`]); `None` when it does not exist, which
/// no retry will change.
async fn conversation_of<'a>(
    store: &dyn Store,
    directs: &Directs,
    cache: &'a mut HashMap<String, Conversation>,
    id: &str,
) -> Result<Option<&'a Conversation>, StoreError> {
    if !cache.contains_key(id) {
        let Some(c) = directs.head(store, id).await? else {
            tracing::error!(conversation = %id, "event for a conversation that does not exist");
            return Ok(None);
        };
        cache.insert(id.to_owned(), c);
    }
    Ok(cache.get(id))
}

#[cfg(test)]
mod tests {
    use super::*;

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
