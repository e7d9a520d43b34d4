//! Identifiers. Ids arrive from clients as strings; they are parsed here, at
//! the boundary, so a malformed id is an `invalid` error and never reaches a
//! backend query (no `{"$ne": null}` smuggled in as an id).

use crate::error::ApiError;
use std::fmt;
use uuid::Uuid;

/// Namespace for deriving the id of the 1:1 conversation between two users.
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_0d3c_2b9a_4e57_9c11_7a0f_3d5e_2b61);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1–64 characters of `[A-Za-z0-9_-]`.
            pub fn parse(raw: &str) -> Result<Self, ApiError> {
                if is_valid_id(raw) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(ApiError::invalid(concat!("malformed ", $what)))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A registered account.
    UserId,
    "user id"
);
id_type!(
    /// A 1:1 or group conversation.
    ConversationId,
    "conversation id"
);
id_type!(
    /// A message, unique and time-ordered (UUIDv7).
    MessageId,
    "message id"
);

impl UserId {
    pub fn generate() -> Self {
        Self(Uuid::new_v4().to_string())
    }
}

impl MessageId {
    /// Time-ordered, so ids sort roughly by send time across nodes.
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }
}

impl ConversationId {
    /// The same two users always share the same 1:1 conversation, whichever
    /// of them writes first and on whichever node.
    pub fn direct(a: &UserId, b: &UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let name = format!("{}|{}", lo.as_str(), hi.as_str());
        Self(Uuid::new_v5(&DIRECT_NAMESPACE, name.as_bytes()).to_string())
    }

    pub fn generate_group() -> Self {
        Self(Uuid::now_v7().to_string())
    }
}

/// A client-chosen idempotency key for `send_message`.
pub fn parse_client_msg_id(raw: &str) -> Result<String, ApiError> {
    if is_valid_id(raw) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid(
            "client_msg_id must be 1-64 characters of [A-Za-z0-9_-]",
        ))
    }
}

fn is_valid_id(raw: &str) -> bool {
    (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new opaque session id for one WebSocket connection.
pub fn new_session_id() -> String {
    Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conversation_id_is_symmetric() {
        let a = UserId::generate();
        let b = UserId::generate();
        assert_eq!(
            ConversationId::direct(&a, &b),
            ConversationId::direct(&b, &a)
        );
        assert_ne!(
            ConversationId::direct(&a, &b),
            ConversationId::direct(&a, &UserId::generate())
        );
    }

    #[test]
    fn operator_like_and_oversized_ids_are_rejected() {
        for bad in ["", "$ne", "{\"$ne\":null}", "a b", &"x".repeat(65), "ü"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(UserId::parse("0193b1c2-aaaa-7bbb-8ccc-123456789abc").is_ok());
    }

    #[test]
    fn message_ids_sort_by_creation() {
        let first = MessageId::generate();
        let second = MessageId::generate();
        assert!(first < second);
    }
}
