//! Edits, deletions and reactions. Each is checked here (member, own
//! message, a message that is not deleted), queued on `chat-messages` like
//! a message, and applied by the sequencer, which checks again against the
//! state it is the only writer of (a deletion may have overtaken an edit).
//! A change is an entry of the conversation's log with its own seq, so
//! `sync` replays it in order, and it also changes its message in place, so
//! `history` shows each message as it now is.
//!
//! A change that would change nothing (reacting with an emoji the user
//! already has on the message, taking back one they do not have) is acked
//! as `unchanged` and neither queued nor pushed; the sequencer drops one
//! that became a no-op while queued (two identical reactions racing).
//!
//! A change is deduped on `(sender, client_msg_id)` exactly as a message
//! is (the store first, then the registry claim of [`Chat::queue_once`]):
//! a resend is answered with the earlier change, before it is checked
//! again, since the check would now see the change's own effect (a
//! deleted message, a reaction already there).

use crate::chat::Chat;
use crate::conversations::member_of;
use parley::ids::{ConversationId, MessageId, UserId, parse_client_msg_id};
use parley::proto::{ChatMessage, MessageKind};
use parley::store::changes_message;
use parley::time::now_ms;
use parley::{ApiError, ErrorCode};

/// Longest reaction, in characters (an emoji with skin tone or a ZWJ
/// family is several) and in bytes.
pub const MAX_EMOJI_CHARS: usize = 8;
pub const MAX_EMOJI_BYTES: usize = 32;

/// What became of a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    /// Queued: the entry, before it is sequenced (seq 0).
    Queued(Box<ChatMessage>),
    /// Its `client_msg_id` was seen before: the earlier change (with its
    /// seq once stored); nothing new was queued.
    Duplicate(Box<ChatMessage>),
    /// It would change nothing; nothing was queued. The conversation and
    /// message it named.
    Unchanged {
        conversation_id: String,
        message_id: String,
    },
}

/// What a client asked to do to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageChange {
    Edit(String),
    Delete,
    React { emoji: String, on: bool },
}

pub fn valid_emoji(emoji: &str) -> Result<(), ApiError> {
    let chars = emoji.chars().count();
    if chars == 0
        || chars > MAX_EMOJI_CHARS
        || emoji.len() > MAX_EMOJI_BYTES
        || emoji.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::invalid(format!(
            "emoji must be a short string: 1-{MAX_EMOJI_CHARS} characters, no spaces"
        )));
    }
    Ok(())
}

/// Why `change` by `user` may not apply to `target`, if it may not. Shared
/// by the check before queueing and the sequencer's check before applying.
pub fn refusal(target: &ChatMessage, user: &str, kind: MessageKind) -> Option<ApiError> {
    if target.kind != MessageKind::Message as i32 {
        return Some(ApiError::invalid("only a message can be changed"));
    }
    if target.deleted {
        return Some(ApiError::invalid("the message was deleted"));
    }
    if kind != MessageKind::Reaction && target.from != user {
        return Some(ApiError::new(
            ErrorCode::Forbidden,
            "only its sender can edit or delete a message",
        ));
    }
    None
}

impl Chat {
    /// Checks and queues a change; answers it before it is sequenced, the
    /// earlier change when `client_msg_id` was seen before (empty: a
    /// generated one, so no dedupe), or that it would change nothing (then
    /// nothing is queued nor counted against the send limit).
    pub async fn change_message(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        message_id: &str,
        client_msg_id: &str,
        change: MessageChange,
    ) -> Result<Changed, ApiError> {
        let message_id = MessageId::parse(message_id)?;
        let id = MessageId::generate().into_string();
        let client_msg_id = if client_msg_id.is_empty() {
            id.clone()
        } else {
            parse_client_msg_id(client_msg_id)?
        };
        let (kind, body, emoji, on) = match change {
            MessageChange::Edit(body) => {
                crate::chat::validate_body(&body)?;
                (MessageKind::Edit, body, String::new(), false)
            }
            MessageChange::Delete => (MessageKind::Delete, String::new(), String::new(), false),
            MessageChange::React { emoji, on } => {
                valid_emoji(&emoji)?;
                (MessageKind::Reaction, String::new(), emoji, on)
            }
        };
        // Before any store read, as for messages (see `Chat::send`).
        self.admit().await?;
        let asked = ChatMessage {
            kind: kind as i32,
            target_id: message_id.as_str().to_owned(),
            ..Default::default()
        };
        if let Some(stored) = self.stored_earlier(user, &client_msg_id, &asked).await? {
            return Ok(Changed::Duplicate(Box::new(stored)));
        }
        let store = self.backends.store.as_ref();
        let c = member_of(store, user, conversation).await?;
        let target = store
            .message_by_id(&c.id, message_id.as_str())
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such message"))?;
        if let Some(refused) = refusal(&target, user.as_str(), kind) {
            return Err(refused);
        }
        let mut entry = ChatMessage {
            conversation_id: c.id.clone(),
            from: user.as_str().to_owned(),
            kind: kind as i32,
            emoji,
            on,
            ..Default::default()
        };
        if !changes_message(&target, &entry) {
            metrics::counter!("parley_chat_changes_unchanged_total").increment(1);
            return Ok(Changed::Unchanged {
                conversation_id: c.id,
                message_id: target.id,
            });
        }
        self.count_send(user).await?;
        entry.client_msg_id = client_msg_id;
        entry.id = id;
        entry.body = body;
        entry.sent_at_ms = now_ms();
        entry.target_id = target.id;
        entry.target_seq = target.seq;
        if let Some(earlier) = self.queue_once(&entry).await? {
            return Ok(Changed::Duplicate(Box::new(earlier)));
        }
        metrics::counter!("parley_chat_message_changes_total").increment(1);
        Ok(Changed::Queued(Box::new(entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_are_short_strings() {
        for ok in ["👍", "❤️", "👨‍👩‍👧", "🇫🇷", "+1"] {
            assert!(valid_emoji(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "👍 👍", "a\nb", "thumbs_up_long", &"👍".repeat(9)] {
            assert!(valid_emoji(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_sender_edits_and_nobody_changes_a_tombstone() {
        let message = ChatMessage {
            from: "alice".into(),
            ..Default::default()
        };
        assert!(refusal(&message, "alice", MessageKind::Edit).is_none());
        assert!(refusal(&message, "bob", MessageKind::Reaction).is_none());
        let refused = refusal(&message, "bob", MessageKind::Delete).unwrap();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        let tomb = ChatMessage {
            deleted: true,
            ..message.clone()
        };
        assert!(refusal(&tomb, "alice", MessageKind::Reaction).is_some());
        let edit = ChatMessage {
            kind: MessageKind::Edit as i32,
            ..message
        };
        assert!(refusal(&edit, "alice", MessageKind::Edit).is_some());
    }
}
