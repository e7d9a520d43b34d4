//! The domain behind `ChatService`. No tonic types: requests arrive parsed.

use crate::conversations::{Target, member_of, resolve};
use parley::ApiError;
use parley::backends::Backends;
use parley::ids::{ConversationId, MessageId, UserId, parse_client_msg_id};
use parley::proto::{
    ChatMessage, ConversationSummary, MessageKind, ReceiptEvent, ReceiptKind, chat_event,
};
use parley::protocol::{MAX_BODY_CHARS, server};
use parley::push::{Outgoing, Pusher};
use parley::registry::Decision;
use parley::time::now_ms;
use std::collections::HashMap;
use std::time::Duration;

/// A group's member limit when none is configured (`Chat::with_group_limit`).
pub const DEFAULT_MAX_MEMBERS: usize = 500;

/// How long a published `client_msg_id` is remembered in the registry. It
/// only has to cover the time until the sequencer stores the message; from
/// then on the store's unique index answers resends.
const DEDUPE_TTL: Duration = Duration::from_secs(3600);
/// A "pending" claim (publish in flight) is a lease: it lapses this long
/// after its holder last renewed it, and the holder renews it every
/// [`PENDING_RENEW`] while its publish is in flight (a Kafka publish may take
/// up to `message.timeout.ms`, 10 s, while a broker is away). So a claim
/// whose holder was killed between claim and settle stops blocking resends
/// of the same `client_msg_id` within this much of the kill, not after the
/// fixed 30 s it used to be held (issue 11: senders got `unavailable` for
/// 30 s after a chat-svc kill). A live holder never loses it to a resend
/// unless it cannot reach the registry for this long (see
/// [`Chat::queue_once`]).
const PENDING_LEASE: Duration = Duration::from_secs(3);
/// How often the holder of a pending claim renews it: three times per
/// lease, so one slow or lost renewal does not let it lapse.
const PENDING_RENEW: Duration = Duration::from_secs(1);
/// Default bound of the sequencers' backlog (see [`Chat::admit`]): at the
/// embedded default's 1,500–2,000 messages per second on two cores, about a
/// quarter of a second of work (measured with `parley-load flood`: with
/// 1,000, accepted messages' p99 at twice capacity was 1.3 s; with 400,
/// 0.7 s, for the same accepted rate within noise).
pub const DEFAULT_MAX_BACKLOG: u64 = 400;
/// Search results when the caller does not say, and at most.
const DEFAULT_SEARCH_LIMIT: usize = 50;
const MAX_SEARCH_LIMIT: usize = 100;
const MAX_SEARCH_CHARS: usize = 200;
/// Entries after a read cursor looked at to count unread messages.
pub const UNREAD_SCAN: usize = 200;
/// Entries looked back through for a conversation's last message.
const LAST_MESSAGE_SCAN: usize = 20;
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 200;
pub const DEFAULT_SYNC_PAGE: usize = 200;
pub const MAX_SYNC_PAGE: usize = 1000;

/// How many messages one user may send in any window of this length,
/// counted in the registry so the limit holds across all of the user's
/// sessions and every edge.
#[derive(Debug, Clone, Copy)]
pub struct SendLimit {
    pub count: u64,
    pub window: Duration,
}

impl Default for SendLimit {
    fn default() -> Self {
        Self {
            count: 100,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Chat {
    pub(crate) backends: Backends,
    pub(crate) pusher: Pusher,
    send_limit: SendLimit,
    webhook: Option<crate::notifier::Webhook>,
    pub(crate) max_group_members: usize,
    max_backlog: u64,
    pub(crate) receipts: crate::receipts::ReceiptQueue,
    pub(crate) memberships: crate::conversations::MembershipCache,
    pub(crate) directs: crate::conversations::Directs,
}

/// What `send_message` answers.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message: ChatMessage,
    pub duplicate: bool,
}

/// One page of history.
#[derive(Debug, Clone)]
pub struct Page {
    pub messages: Vec<ChatMessage>,
    pub has_more: bool,
}

/// What a reconnecting client missed.
#[derive(Debug, Clone)]
pub struct Missed {
    pub messages: Vec<ChatMessage>,
    pub truncated: Vec<String>,
}

pub(crate) fn validate_body(body: &str) -> Result<(), ApiError> {
    if body.trim().is_empty() {
        return Err(ApiError::invalid("body must not be empty"));
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(ApiError::invalid(format!(
            "body exceeds {MAX_BODY_CHARS} characters"
        )));
    }
    Ok(())
}

/// The registry remembers "<state> id conversation sent_at" per client
/// message id, where state is `pending` while the publish is in flight and
/// `sent` once the entry is durable; a change adds "kind target_id" (a
/// message's claim keeps the shorter form, so claims written by earlier
/// builds still read).
fn encode_claim(state: &str, m: &ChatMessage) -> String {
    let mut claim = format!("{state} {} {} {}", m.id, m.conversation_id, m.sent_at_ms);
    if m.kind() != MessageKind::Message {
        claim.push_str(&format!(" {} {}", m.kind, m.target_id));
    }
    claim
}

/// The entry a `sent` claim stands for, with the fields the claim does not
/// keep taken from `asked` (the resend); `None` for a pending or
/// unreadable one.
fn decode_claim(raw: &str, asked: &ChatMessage) -> Option<ChatMessage> {
    let mut parts = raw.split(' ');
    if parts.next()? != "sent" {
        return None;
    }
    let id = parts.next()?.to_owned();
    let conversation_id = parts.next()?.to_owned();
    let sent_at_ms = parts.next()?.parse().ok()?;
    let (kind, target_id) = match parts.next() {
        Some(kind) => (kind.parse().ok()?, parts.next()?.to_owned()),
        None => (MessageKind::Message as i32, String::new()),
    };
    Some(ChatMessage {
        id,
        conversation_id,
        seq: 0,
        sent_at_ms,
        kind,
        target_id,
        ..asked.clone()
    })
}

/// Refuses a `client_msg_id` that already stands for something else: a
/// message for a change or the other way round, or a change of another
/// kind or to another message. A resend of the same request passes.
pub(crate) fn same_request(earlier: &ChatMessage, asked: &ChatMessage) -> Result<(), ApiError> {
    if earlier.kind == asked.kind
        && (asked.kind() == MessageKind::Message || earlier.target_id == asked.target_id)
    {
        return Ok(());
    }
    Err(ApiError::invalid(
        "client_msg_id was already used for another message or change",
    ))
}

impl Chat {
    pub fn new(backends: Backends, pusher: Pusher, send_limit: SendLimit) -> Self {
        Self {
            backends,
            pusher,
            send_limit,
            webhook: None,
            max_group_members: DEFAULT_MAX_MEMBERS,
            max_backlog: DEFAULT_MAX_BACKLOG,
            receipts: crate::receipts::ReceiptQueue::default(),
            memberships: crate::conversations::MembershipCache::default(),
            directs: crate::conversations::Directs::default(),
        }
    }

    /// Groups hold at most this many members (the creator included).
    pub fn with_group_limit(mut self, max_members: usize) -> Self {
        self.max_group_members = max_members.max(2);
        self
    }

    /// Most records `chat-messages` may hold that the sequencers have not
    /// committed (summed over partitions) before new sends are refused.
    pub fn with_backlog_limit(mut self, max_backlog: u64) -> Self {
        self.max_backlog = max_backlog.max(1);
        self
    }

    /// Admission control: while the sequencers are more than `max_backlog`
    /// records behind, a new send (or change) is refused with `unavailable`
    /// at once instead of queueing behind them. Every record accepted past
    /// that point would wait `backlog / throughput` before delivery, so the
    /// bound is what keeps accepted messages prompt under overload; the
    /// client resends with the same `client_msg_id`. An unknown lag admits.
    pub(crate) async fn admit(&self) -> Result<(), ApiError> {
        let lag = self
            .backends
            .bus
            .lag(crate::log::GROUP, parley::bus::Topic::ChatMessages)
            .await;
        match lag {
            Some(lag) if lag > self.max_backlog => {
                metrics::counter!("parley_chat_sends_refused_backlog_total").increment(1);
                Err(ApiError::unavailable(
                    "server busy: too many messages waiting to be delivered; retry shortly",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Counts one send (a message or a change to one) against the user's
    /// limit, which holds across every session and edge and in every
    /// window of its length (see [`parley::registry::rate`]).
    pub(crate) async fn count_send(&self, user: &UserId) -> Result<(), ApiError> {
        let decision = self
            .backends
            .registry
            .rate_limit(
                &format!("send:{user}"),
                self.send_limit.count,
                self.send_limit.window,
            )
            .await?;
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => {
                metrics::counter!("parley_chat_sends_rate_limited_total").increment(1);
                Err(ApiError::new(
                    parley::ErrorCode::RateLimited,
                    format!(
                        "too many messages, slow down (retry in {} ms)",
                        retry_after.as_millis().max(1)
                    ),
                ))
            }
        }
    }

    /// Runs the notifier with this webhook alongside the sequencer.
    pub fn with_webhook(mut self, webhook: Option<crate::notifier::Webhook>) -> Self {
        self.webhook = webhook;
        self
    }

    pub fn webhook(&self) -> Option<&crate::notifier::Webhook> {
        self.webhook.as_ref()
    }

    /// Validates, dedupes on `(sender, client_msg_id)`, and appends the
    /// message durably to `chat-messages`. On `Ok` no crash of a Parley
    /// process can lose the message; what the bus itself keeps through a
    /// crash of its host is in `docs/architecture.md#durability`.
    pub async fn send(
        &self,
        user: &UserId,
        target: &Target,
        client_msg_id: &str,
        body: &str,
    ) -> Result<Sent, ApiError> {
        validate_body(body)?;
        let id = MessageId::generate();
        let client_msg_id = if client_msg_id.is_empty() {
            id.as_str().to_owned()
        } else {
            parse_client_msg_id(client_msg_id)?
        };
        // First, before any store read: a refusal under overload must cost
        // far less than an acceptance, or refusing takes the capacity that
        // the backlog needs to drain.
        self.admit().await?;
        if let Some(stored) = self
            .stored_earlier(user, &client_msg_id, &ChatMessage::default())
            .await?
        {
            return Ok(Sent {
                message: stored,
                duplicate: true,
            });
        }
        self.count_send(user).await?;
        let conversation = resolve(
            self.backends.store.as_ref(),
            &self.directs,
            user,
            target,
            true,
        )
        .await?;
        let message = ChatMessage {
            id: id.into_string(),
            conversation_id: conversation.id,
            seq: 0,
            from: user.as_str().to_owned(),
            body: body.to_owned(),
            sent_at_ms: now_ms(),
            client_msg_id: client_msg_id.clone(),
            ..Default::default()
        };
        if let Some(earlier) = self.queue_once(&message).await? {
            return Ok(Sent {
                message: earlier,
                duplicate: true,
            });
        }
        metrics::counter!("parley_chat_messages_sent_total").increment(1);
        Ok(Sent {
            message,
            duplicate: false,
        })
    }

    /// The entry already stored under `(user, client_msg_id)`, if any: a
    /// resend, answered with it (refused when the key stood for another
    /// request than `asked`, see [`same_request`]). The store's unique index
    /// is the dedupe of last resort, when the registry's claim is gone.
    pub(crate) async fn stored_earlier(
        &self,
        user: &UserId,
        client_msg_id: &str,
        asked: &ChatMessage,
    ) -> Result<Option<ChatMessage>, ApiError> {
        let stored = self
            .backends
            .store
            .message_by_client_id(user.as_str(), client_msg_id)
            .await?;
        if let Some(stored) = &stored {
            same_request(stored, asked)?;
        }
        Ok(stored)
    }

    /// Queues `entry` once per `(from, client_msg_id)`, for messages and
    /// changes alike: claims the key in the registry, publishes, then marks
    /// the claim as sent. Answers `None` when this call queued it, or the
    /// earlier entry when the key was claimed and sent before (the caller
    /// checks the store first: the claim only has to cover the time until
    /// the sequencer stores the entry).
    ///
    /// While the publish is in flight the claim is a lease of
    /// [`PENDING_LEASE`] renewed every [`PENDING_RENEW`], held by this
    /// attempt alone (its value names the attempt's message id), so a
    /// resend elsewhere is refused for as long as this instance lives and
    /// takes the key over within [`PENDING_LEASE`] once it is killed. Only
    /// an instance cut off from the registry for longer than the lease while
    /// its publish still lands can let a resend publish a second copy; the
    /// sequencer then stores the first one only (the store's unique
    /// `(from, client_msg_id)` index), as after a registry restart.
    pub(crate) async fn queue_once(
        &self,
        entry: &ChatMessage,
    ) -> Result<Option<ChatMessage>, ApiError> {
        let claim_key = format!("dedupe:{}:{}", entry.from, entry.client_msg_id);
        let registry = &self.backends.registry;
        let pending = encode_claim("pending", entry);
        if let Some(earlier) = registry.claim(&claim_key, &pending, PENDING_LEASE).await? {
            // Acking a duplicate before the original is durable could ack an
            // entry that never exists: a pending original means "retry".
            let Some(earlier) = decode_claim(&earlier, entry) else {
                return Err(ApiError::unavailable(
                    "a message or change with this client_msg_id is being sent; retry shortly",
                ));
            };
            same_request(&earlier, entry)?;
            return Ok(Some(earlier));
        }
        let event = chat_event::Event::MessageSent(entry.clone());
        let publish = crate::log::queue(self.backends.bus.as_ref(), event);
        tokio::pin!(publish);
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + PENDING_RENEW, PENDING_RENEW);
        let published = loop {
            tokio::select! {
                result = &mut publish => break result,
                _ = renew.tick() => match registry.renew_if(&claim_key, &pending, PENDING_LEASE).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        key = %claim_key,
                        "a pending dedupe claim lapsed while its publish was in flight; a resend may publish a second copy (the store keeps one)"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot renew a pending dedupe claim"),
                },
            }
        };
        if let Err(e) = published {
            // Not durable, so not sent: let the client's retry claim again
            // (unless the claim lapsed and is another attempt's by now).
            let _ = registry.release_if(&claim_key, &pending).await;
            return Err(e.into());
        }
        if let Err(e) = registry
            .settle(&claim_key, &encode_claim("sent", entry), DEDUPE_TTL)
            .await
        {
            // The entry is durable; a resend within PENDING_LEASE is asked
            // to retry, after it the store's index answers.
            tracing::warn!(error = %e, "cannot mark dedupe claim as sent");
        }
        Ok(None)
    }

    /// Queues a delivered/read receipt (coalesced with the user's other
    /// marks of the same cursor, see [`crate::receipts`]); the sequencer
    /// moves the cursor and tells the members.
    pub async fn mark(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        kind: ReceiptKind,
        up_to_seq: u64,
    ) -> Result<(), ApiError> {
        if up_to_seq == 0 {
            return Err(ApiError::invalid("up_to_seq must be at least 1"));
        }
        if kind == ReceiptKind::Unspecified {
            return Err(ApiError::invalid("receipt kind is required"));
        }
        // The store clamps the cursor to the last seq when it moves it.
        if !self
            .memberships
            .is_member(
                self.backends.store.as_ref(),
                conversation.as_str(),
                user.as_str(),
            )
            .await?
        {
            return Err(ApiError::conversation_not_found());
        }
        let queued = self.receipts.add(ReceiptEvent {
            conversation_id: conversation.as_str().to_owned(),
            user_id: user.as_str().to_owned(),
            kind: kind as i32,
            up_to_seq,
            at_ms: now_ms(),
        });
        if !queued {
            return Err(ApiError::unavailable(
                "too many receipts waiting to be published; mark again shortly",
            ));
        }
        Ok(())
    }

    /// Ephemeral: pushed straight to the other members, never stored.
    pub async fn typing(
        &self,
        user: &UserId,
        target: &Target,
        state: &str,
    ) -> Result<(), ApiError> {
        if !matches!(state, "start" | "stop") {
            return Err(ApiError::invalid("state must be \"start\" or \"stop\""));
        }
        let c = resolve(
            self.backends.store.as_ref(),
            &self.directs,
            user,
            target,
            false,
        )
        .await?;
        let others: Vec<String> = c
            .members
            .iter()
            .filter(|m| *m != user.as_str())
            .cloned()
            .collect();
        self.pusher
            .push(vec![Outgoing {
                users: others,
                frame: server::typing(&c.id, user.as_str(), state).into(),
            }])
            .await;
        Ok(())
    }

    pub async fn history(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        before_seq: u64,
        limit: usize,
    ) -> Result<Page, ApiError> {
        let limit = if limit == 0 {
            DEFAULT_PAGE
        } else {
            limit.min(MAX_PAGE)
        };
        let store = self.backends.store.as_ref();
        member_of(store, user, conversation).await?;
        let mut messages = store
            .messages_before(conversation.as_str(), before_seq, limit + 1)
            .await?;
        let has_more = messages.len() > limit;
        if has_more {
            messages.remove(0);
        }
        Ok(Page { messages, has_more })
    }

    /// Everything after the given seq per conversation of the user; the
    /// conversations not named from their start. Ids the user is not a
    /// member of are ignored, revealing nothing.
    pub async fn sync(
        &self,
        user: &UserId,
        since: &HashMap<String, u64>,
        limit: usize,
    ) -> Result<Missed, ApiError> {
        let limit = if limit == 0 {
            DEFAULT_SYNC_PAGE
        } else {
            limit.min(MAX_SYNC_PAGE)
        };
        let store = self.backends.store.as_ref();
        let mut conversations = store.conversations_of(user.as_str()).await?;
        conversations.sort_by(|a, b| a.id.cmp(&b.id));
        let mut missed = Missed {
            messages: Vec::new(),
            truncated: Vec::new(),
        };
        for c in conversations {
            let after = since.get(&c.id).copied().unwrap_or(0);
            if after >= c.last_seq {
                continue;
            }
            let mut page = store.messages_after(&c.id, after, limit + 1).await?;
            if page.len() > limit {
                page.truncate(limit);
                missed.truncated.push(c.id.clone());
            }
            missed.messages.extend(page);
        }
        Ok(missed)
    }

    /// Messages of the user's own conversations whose body contains
    /// `query` (case-insensitively), newest first.
    pub async fn search(
        &self,
        user: &UserId,
        query: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ApiError> {
        let query = query.trim();
        if query.is_empty() {
            return Err(ApiError::invalid("the search text must not be empty"));
        }
        if query.chars().count() > MAX_SEARCH_CHARS {
            return Err(ApiError::invalid(format!(
                "the search text exceeds {MAX_SEARCH_CHARS} characters"
            )));
        }
        let limit = match limit {
            0 => DEFAULT_SEARCH_LIMIT,
            n => n.min(MAX_SEARCH_LIMIT),
        };
        let store = self.backends.store.as_ref();
        let mine: Vec<String> = store
            .conversations_of(user.as_str())
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        Ok(store.search_messages(&mine, query, limit).await?)
    }

    /// The user's conversations, most recent first, each with its last
    /// message and the number of unread messages: messages from others
    /// after the user's read cursor, deleted ones not counted. Changes (edits, reactions) are not
    /// unread messages; entries past the first [`UNREAD_SCAN`] after the
    /// cursor are counted without being looked at.
    pub async fn conversations(&self, user: &UserId) -> Result<Vec<ConversationSummary>, ApiError> {
        let store = self.backends.store.as_ref();
        let mut out = Vec::new();
        for c in store.conversations_of(user.as_str()).await? {
            let tail = store.messages_before(&c.id, 0, LAST_MESSAGE_SCAN).await?;
            let last_message = tail
                .iter()
                .rev()
                .find(|m| m.kind() == MessageKind::Message)
                .cloned();
            let read = c
                .cursors
                .iter()
                .find(|cur| cur.user_id == user.as_str())
                .map(|cur| cur.read_seq)
                .unwrap_or(0);
            let pending = c.last_seq.saturating_sub(read);
            let unread = if pending == 0 {
                0
            } else {
                // The tail already holds every entry after the cursor when
                // it starts at or before it (seq is dense): no second read.
                let seen = if tail.first().is_some_and(|m| m.seq <= read + 1) {
                    tail.into_iter().filter(|m| m.seq > read).collect()
                } else {
                    store.messages_after(&c.id, read, UNREAD_SCAN).await?
                };
                let counted = seen
                    .iter()
                    .filter(|m| {
                        m.kind() == MessageKind::Message && !m.deleted && m.from != user.as_str()
                    })
                    .count() as u64;
                counted + pending.saturating_sub(seen.len() as u64)
            };
            out.push(ConversationSummary {
                unread,
                conversation: Some(c),
                last_message,
            });
        }
        out.sort_by_key(|s| {
            std::cmp::Reverse(s.last_message.as_ref().map(|m| m.sent_at_ms).unwrap_or(0))
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_bounded() {
        assert!(validate_body("hi").is_ok());
        assert!(validate_body("   ").is_err());
        assert!(validate_body(&"é".repeat(MAX_BODY_CHARS)).is_ok());
        assert!(validate_body(&"é".repeat(MAX_BODY_CHARS + 1)).is_err());
    }

    #[test]
    fn claims_round_trip() {
        let m = ChatMessage {
            id: "m1".into(),
            conversation_id: "c1".into(),
            sent_at_ms: 42,
            ..Default::default()
        };
        let asked = ChatMessage {
            from: "u".into(),
            client_msg_id: "cm".into(),
            body: "b".into(),
            ..Default::default()
        };
        assert!(decode_claim(&encode_claim("pending", &m), &asked).is_none());
        let back = decode_claim(&encode_claim("sent", &m), &asked).unwrap();
        assert_eq!(
            (
                back.id.as_str(),
                back.conversation_id.as_str(),
                back.sent_at_ms
            ),
            ("m1", "c1", 42)
        );
        assert_eq!(back.kind(), MessageKind::Message);
        assert_eq!((back.from.as_str(), back.body.as_str()), ("u", "b"));
        let change = ChatMessage {
            kind: MessageKind::Reaction as i32,
            target_id: "m0".into(),
            ..m
        };
        let back = decode_claim(&encode_claim("sent", &change), &asked).unwrap();
        assert_eq!(back.kind(), MessageKind::Reaction);
        assert_eq!(back.target_id, "m0");
        assert!(
            same_request(&back, &asked).is_err(),
            "a reaction is not a message"
        );
        assert!(same_request(&back, &change).is_ok());
        let elsewhere = ChatMessage {
            target_id: "m9".into(),
            ..change.clone()
        };
        assert!(same_request(&back, &elsewhere).is_err());
    }
}
