//! The browser-facing protocol: JSON text frames over `/ws`, each with a
//! `type`. Names here are the public contract: `docs/protocol.md`, in brief
//! `docs/architecture.md#client-contract`.
//!
//! Client frames are decoded in two steps so a bad frame still gets its
//! `ref` echoed: first as loose JSON (to read `type` and `ref`), then into the
//! typed [`ClientFrame`]. Fields a client may not set (`from`, `seq`, `id`)
//! are simply not part of the typed frames and are ignored.

use crate::error::ApiError;
use crate::proto;
use serde::de::{Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;

/// Largest text frame the edge accepts; larger ones get `too_large`.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest message body, in characters.
pub const MAX_BODY_CHARS: usize = 4000;

/// A decoded client frame with its optional correlation `ref`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub reference: Option<String>,
    pub frame: ClientFrame,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Join {
        token: String,
    },
    SendMessage {
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        conversation_id: Option<String>,
        #[serde(default)]
        client_msg_id: Option<String>,
        body: String,
    },
    MarkDelivered {
        conversation_id: String,
        up_to_seq: u64,
    },
    MarkRead {
        conversation_id: String,
        up_to_seq: u64,
    },
    Typing {
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        conversation_id: Option<String>,
        state: TypingState,
    },
    Sync {
        #[serde(default)]
        since: HashMap<String, u64>,
    },
    History {
        conversation_id: String,
        #[serde(default)]
        before_seq: Option<u64>,
        #[serde(default)]
        limit: Option<PageLimit>,
    },
    SetStatus {
        status: String,
    },
    CreateGroup {
        name: String,
        #[serde(default)]
        members: Vec<String>,
    },
    AddMembers {
        conversation_id: String,
        members: Vec<String>,
    },
    RemoveMembers {
        conversation_id: String,
        members: Vec<String>,
    },
    Leave {
        conversation_id: String,
    },
    RenameGroup {
        conversation_id: String,
        name: String,
    },
    EditMessage {
        conversation_id: String,
        message_id: String,
        #[serde(default)]
        client_msg_id: Option<String>,
        body: String,
    },
    DeleteMessage {
        conversation_id: String,
        message_id: String,
        #[serde(default)]
        client_msg_id: Option<String>,
    },
    React {
        conversation_id: String,
        message_id: String,
        #[serde(default)]
        client_msg_id: Option<String>,
        emoji: String,
        #[serde(default = "yes")]
        on: bool,
    },
    Ping {},
}

impl ClientFrame {
    /// Whether the frame writes a message or changes one: the commands a
    /// client resends with the same `client_msg_id` when told `unavailable`,
    /// so an overloaded edge may refuse them instead of queueing them
    /// (`docs/protocol.md`, "Errors and resending").
    pub fn resendable(&self) -> bool {
        matches!(
            self,
            Self::SendMessage { .. }
                | Self::EditMessage { .. }
                | Self::DeleteMessage { .. }
                | Self::React { .. }
        )
    }
}

fn yes() -> bool {
    true
}

/// A page size in a frame: any non-negative JSON integer, however large
/// (`1e30` too), saturated to `u32::MAX`; the service then clamps it to its
/// own maximum, as the protocol says. A negative, fractional or non-number
/// value is refused (`invalid`). 0 asks for the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageLimit(pub u32);

/// A page size in a query string (`?limit=`): digits only, however many,
/// saturated like [`PageLimit`]; anything else (a sign, a fraction, a
/// letter, nothing) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryLimit(pub u32);

fn saturate(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

struct LimitVisitor {
    strings: bool,
}

impl Visitor<'_> for LimitVisitor {
    type Value = u32;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a non-negative integer")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
        Ok(saturate(v))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<u32, E> {
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
        u64::try_from(v)
            .map(saturate)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u32, E> {
        // Integers beyond u64 arrive as floats (`18446744073709551616`,
        // `1e30`); they are integers all the same.
        if v.is_finite() && v >= 0.0 && v.fract() == 0.0 {
            Ok(if v >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                // In range and integral: exact.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let n = v as u32;
                n
            })
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u32, E> {
        if !self.strings || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::invalid_type(Unexpected::Str(v), &self));
        }
        // All digits: only overflow can fail, and that saturates.
        Ok(v.parse::<u64>().map(saturate).unwrap_or(u32::MAX))
    }
}

impl<'de> Deserialize<'de> for PageLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LimitVisitor { strings: false })
            .map(PageLimit)
    }
}

impl<'de> Deserialize<'de> for QueryLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LimitVisitor { strings: true })
            .map(QueryLimit)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    Start,
    Stop,
}

impl TypingState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
        }
    }
}

/// Why a text frame could not be decoded; the `ref` is kept when readable.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub reference: Option<String>,
    pub error: ApiError,
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Envelope, DecodeError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(DecodeError {
            reference: None,
            error: ApiError::new(crate::ErrorCode::TooLarge, "frame exceeds 64 KiB"),
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError {
        reference: None,
        error: ApiError::invalid(format!("invalid JSON: {e}")),
    })?;
    let reference = match value.get("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.len() <= 128 => Some(r.clone()),
        Some(_) => {
            return Err(DecodeError {
                reference: None,
                error: ApiError::invalid("ref must be a string of at most 128 bytes"),
            });
        }
    };
    let kind = match value.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => {
            return Err(DecodeError {
                reference,
                error: ApiError::invalid("frame has no string `type`"),
            });
        }
    };
    match serde_json::from_value::<ClientFrame>(value) {
        Ok(frame) => Ok(Envelope { reference, frame }),
        Err(e) => {
            let message = if e.to_string().starts_with("unknown variant") {
                format!("unknown frame type `{kind}`")
            } else {
                format!("bad `{kind}` frame: {e}")
            };
            Err(DecodeError {
                reference,
                error: ApiError::invalid(message),
            })
        }
    }
}

/// The JSON form of a log entry, as in `new_message` and `history`. A
/// message carries its current state (`edited_at`, `deleted`, `reactions`
/// as emoji → user ids) when it has one; a change carries its `kind`
/// (`edit`, `delete`, `reaction`) and the `message_id` it applies to.
pub fn message_json(m: &proto::ChatMessage) -> Value {
    let mut value = json!({
        "id": m.id,
        "conversation_id": m.conversation_id,
        "seq": m.seq,
        "from": m.from,
        "body": m.body,
        "sent_at": m.sent_at_ms,
        "client_msg_id": m.client_msg_id,
    });
    let Some(obj) = value.as_object_mut() else {
        return value;
    };
    match m.kind() {
        proto::MessageKind::Message => {
            if m.edited_at_ms != 0 {
                obj.insert("edited_at".into(), json!(m.edited_at_ms));
            }
            if m.deleted {
                obj.insert("deleted".into(), json!(true));
            }
            if !m.reactions.is_empty() {
                obj.insert("reactions".into(), reactions_json(&m.reactions));
            }
        }
        kind => {
            obj.insert("kind".into(), json!(kind_name(kind)));
            obj.insert("message_id".into(), json!(m.target_id));
            if kind == proto::MessageKind::Reaction {
                obj.insert("emoji".into(), json!(m.emoji));
                obj.insert("on".into(), json!(m.on));
            }
        }
    }
    value
}

fn kind_name(kind: proto::MessageKind) -> &'static str {
    match kind {
        proto::MessageKind::Message => "message",
        proto::MessageKind::Edit => "edit",
        proto::MessageKind::Delete => "delete",
        proto::MessageKind::Reaction => "reaction",
    }
}

/// emoji → the users who reacted with it, in the order they did.
fn reactions_json(reactions: &[proto::Reaction]) -> Value {
    let mut by_emoji = serde_json::Map::new();
    for r in reactions {
        let users = by_emoji
            .entry(r.emoji.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = users {
            list.push(json!(r.user_id));
        }
    }
    Value::Object(by_emoji)
}

/// The JSON form of a conversation (without cursors), as in
/// `conversation_updated` and the `create_group` ack.
pub fn conversation_json(c: &proto::Conversation) -> Value {
    json!({
        "id": c.id,
        "kind": c.kind,
        "name": c.name,
        "members": c.members,
        "last_seq": c.last_seq,
        "created_at": c.created_at_ms,
    })
}

pub fn user_json(u: &proto::User) -> Value {
    json!({"id": u.id, "username": u.username, "display_name": u.display_name})
}

/// Builders for server frames. Each returns the encoded text, so a frame
/// fanned out to many sessions is serialized once.
pub mod server {
    use super::*;

    fn encode(value: Value) -> String {
        value.to_string()
    }

    fn with_ref(mut value: Value, reference: Option<&str>) -> Value {
        if let (Some(r), Some(obj)) = (reference, value.as_object_mut()) {
            obj.insert("ref".into(), Value::String(r.to_owned()));
        }
        value
    }

    pub fn connected(user: &proto::User, session_id: &str, node: &str) -> String {
        encode(json!({
            "type": "connected",
            "user": user_json(user),
            "session_id": session_id,
            "node": node,
        }))
    }

    pub fn new_message(m: &proto::ChatMessage) -> String {
        encode(json!({"type": "new_message", "message": message_json(m)}))
    }

    /// The frame for one log entry: `new_message` for a message, and for
    /// a change `message_edited`, `message_deleted` or `reaction`, each
    /// with the change's own `seq` (so a client's sync cursor moves past
    /// it) and `message_id`, the message it changed.
    pub fn entry(m: &proto::ChatMessage) -> String {
        let (kind, extra) = match m.kind() {
            proto::MessageKind::Message => return new_message(m),
            proto::MessageKind::Edit => ("message_edited", json!({"body": m.body})),
            proto::MessageKind::Delete => ("message_deleted", json!({})),
            proto::MessageKind::Reaction => ("reaction", json!({"emoji": m.emoji, "on": m.on})),
        };
        let mut value = json!({
            "type": kind,
            "conversation_id": m.conversation_id,
            "message_id": m.target_id,
            "seq": m.seq,
            "by": m.from,
            "at": m.sent_at_ms,
            "id": m.id,
            "client_msg_id": m.client_msg_id,
        });
        if let (Some(obj), Value::Object(extra)) = (value.as_object_mut(), extra) {
            obj.extend(extra);
        }
        encode(value)
    }

    /// A group was created or changed: the group as it is now, who
    /// changed it and how, and the members the change removed.
    pub fn conversation_updated(
        c: &proto::Conversation,
        removed: &[String],
        by: &str,
        change: &str,
    ) -> String {
        encode(json!({
            "type": "conversation_updated",
            "conversation": conversation_json(c),
            "change": change,
            "by": by,
            "removed": removed,
        }))
    }

    /// How far a group's members have got, aggregated: for each distinct
    /// cursor position (newest first), how many members are at or past
    /// it. "Delivered to N of M" for a message at seq s is the count of
    /// the lowest position at or above s, without the sender.
    pub fn receipt_counts(
        conversation_id: &str,
        members: usize,
        delivered: &[(u64, usize)],
        read: &[(u64, usize)],
    ) -> String {
        let list = |counts: &[(u64, usize)]| -> Vec<Value> {
            counts
                .iter()
                .map(|(seq, n)| json!({"up_to_seq": seq, "count": n}))
                .collect()
        };
        encode(json!({
            "type": "receipt_counts",
            "conversation_id": conversation_id,
            "members": members,
            "delivered": list(delivered),
            "read": list(read),
        }))
    }

    /// `message_delivered` or `message_read`.
    pub fn receipt(r: &proto::ReceiptEvent) -> String {
        let kind = if r.kind == proto::ReceiptKind::Read as i32 {
            "message_read"
        } else {
            "message_delivered"
        };
        encode(json!({
            "type": kind,
            "conversation_id": r.conversation_id,
            "up_to_seq": r.up_to_seq,
            "by": r.user_id,
            "at": r.at_ms,
        }))
    }

    pub fn typing(conversation_id: &str, from: &str, state: &str) -> String {
        encode(json!({
            "type": "typing",
            "conversation_id": conversation_id,
            "from": from,
            "state": state,
        }))
    }

    /// `user_joined`, `user_left` or `presence`, from a presence change.
    pub fn presence(p: &proto::PresenceEvent) -> String {
        let was_online = !matches!(p.previous_status.as_str(), "" | "offline");
        match p.status.as_str() {
            "offline" => encode(json!({
                "type": "user_left",
                "user_id": p.user_id,
                "last_seen": p.last_seen_ms,
            })),
            status if !was_online => encode(json!({
                "type": "user_joined",
                "user_id": p.user_id,
                "status": status,
            })),
            status => encode(json!({
                "type": "presence",
                "user_id": p.user_id,
                "status": status,
                "last_seen": p.last_seen_ms,
            })),
        }
    }

    pub fn user_joined(user_id: &str, status: &str) -> String {
        encode(json!({"type": "user_joined", "user_id": user_id, "status": status}))
    }

    /// A bare `ack`, or one carrying extra fields (`message`, `messages`).
    pub fn ack(reference: Option<&str>, extra: Value) -> String {
        let mut value = json!({"type": "ack"});
        if let (Some(obj), Value::Object(extra)) = (value.as_object_mut(), extra) {
            obj.extend(extra);
        }
        encode(with_ref(value, reference))
    }

    pub fn error(reference: Option<&str>, err: &ApiError) -> String {
        encode(with_ref(
            json!({"type": "error", "code": err.code.as_str(), "message": err.message}),
            reference,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn history_limit(raw: &str) -> Result<Option<PageLimit>, ApiError> {
        let text = format!(r#"{{"type":"history","conversation_id":"c","limit":{raw}}}"#);
        match decode(&text).map_err(|e| e.error)?.frame {
            ClientFrame::History { limit, .. } => Ok(limit),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn page_limits_of_any_size_are_clamped_and_non_integers_refused() {
        assert_eq!(history_limit("50").unwrap(), Some(PageLimit(50)));
        assert_eq!(history_limit("0").unwrap(), Some(PageLimit(0)));
        for huge in [
            "4294967297",
            "18446744073709551615",
            "18446744073709551616",
            "1000000000000000000000000000000",
            "1e30",
        ] {
            assert_eq!(
                history_limit(huge).unwrap(),
                Some(PageLimit(u32::MAX)),
                "{huge}"
            );
        }
        for bad in ["-1", "1.5", "\"5\"", "null", "true", "[]"] {
            let refused = history_limit(bad);
            if bad == "null" {
                assert_eq!(refused.unwrap(), None);
                continue;
            }
            assert_eq!(refused.unwrap_err().code, ErrorCode::Invalid, "{bad}");
        }
        let query = |raw: &str| serde_json::from_value::<QueryLimit>(Value::String(raw.into()));
        assert_eq!(query("7").unwrap(), QueryLimit(7));
        assert_eq!(
            query("99999999999999999999999999999").unwrap(),
            QueryLimit(u32::MAX)
        );
        for bad in ["", "-1", "+1", "1.0", "ten", " 1"] {
            assert!(query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn send_message_ignores_server_owned_fields() {
        let env = decode(
            r#"{"type":"send_message","ref":"r1","to":"u2","client_msg_id":"c1","body":"hi","from":"evil","seq":99,"id":"x"}"#,
        )
        .unwrap();
        assert_eq!(env.reference.as_deref(), Some("r1"));
        assert_eq!(
            env.frame,
            ClientFrame::SendMessage {
                to: Some("u2".into()),
                conversation_id: None,
                client_msg_id: Some("c1".into()),
                body: "hi".into()
            }
        );
    }

    #[test]
    fn unknown_type_keeps_ref() {
        let err = decode(r#"{"type":"launch_missiles","ref":"r9"}"#).unwrap_err();
        assert_eq!(err.reference.as_deref(), Some("r9"));
        assert_eq!(err.error.code, ErrorCode::Invalid);
        assert!(err.error.message.contains("launch_missiles"));
    }

    #[test]
    fn wrong_field_types_and_operators_are_invalid() {
        for text in [
            r#"{"type":"send_message","to":{"$ne":null},"body":"x"}"#,
            r#"{"type":"mark_read","conversation_id":"c","up_to_seq":"7"}"#,
            r#"{"type":"join","token":42}"#,
            r#"not json"#,
            r#"[1,2]"#,
        ] {
            assert_eq!(
                decode(text).unwrap_err().error.code,
                ErrorCode::Invalid,
                "{text}"
            );
        }
    }

    #[test]
    fn oversized_frames_are_too_large() {
        let body = "x".repeat(MAX_FRAME_BYTES);
        let text = format!(r#"{{"type":"send_message","to":"u","body":"{body}"}}"#);
        assert_eq!(decode(&text).unwrap_err().error.code, ErrorCode::TooLarge);
    }

    #[test]
    fn ack_echoes_ref_and_extra_fields() {
        let text = server::ack(Some("r1"), json!({"messages": []}));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "ack");
        assert_eq!(v["ref"], "r1");
        assert!(v["messages"].is_array());
    }
}
