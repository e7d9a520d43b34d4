//! The store: users, conversations with their members' cursors, and message
//! history. MongoDB in production; [`embedded::EmbeddedStore`] on disk for
//! the one-process default.
//!
//! Appends are idempotent on `(sender, client_msg_id)`: a replayed bus record
//! or a resent frame finds the message already stored and gets it back with
//! its original id and seq.

pub mod embedded;
pub mod mongo;

use crate::proto::{ChatMessage, Conversation, ReceiptKind, User};
use async_trait::async_trait;

/// An account with what only auth-svc may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user: User,
    /// Lower-cased.
    pub email: String,
    /// PHC string (argon2id).
    pub password_hash: String,
}

/// The result of appending one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stored message, with its seq.
    pub message: ChatMessage,
    /// False when `(sender, client_msg_id)` was already stored: `message` is
    /// the earlier one and nothing was written.
    pub fresh: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique field is taken (`username`, `email`).
    #[error("{0} already taken")]
    Conflict(&'static str),
    #[error("no such conversation {0}")]
    NoConversation(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<StoreError> for crate::ApiError {
    fn from(err: StoreError) -> Self {
        use crate::ErrorCode;
        match err {
            StoreError::Conflict(field) => {
                crate::ApiError::new(ErrorCode::Conflict, format!("{field} already taken"))
            }
            StoreError::NoConversation(_) => crate::ApiError::conversation_not_found(),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                crate::ApiError::unavailable("storage unavailable, try again")
            }
            StoreError::Corrupt(_) => crate::ApiError::internal(&err),
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Fails with `Conflict` when the username (case-insensitively) or the
    /// email is taken.
    async fn create_user(&self, record: &UserRecord) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Users that exist among `ids`, in no particular order.
    async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<User>, StoreError>;
    /// Users whose username or display name contains `query`
    /// (case-insensitively); all users when it is empty.
    async fn search_users(&self, query: &str, limit: usize) -> Result<Vec<User>, StoreError>;

    /// The 1:1 conversation with this id between `a` and `b`, created if new.
    async fn ensure_direct(
        &self,
        id: &str,
        a: &str,
        b: &str,
        now_ms: i64,
    ) -> Result<Conversation, StoreError>;
    /// A conversation with its members' cursors.
    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError>;
    /// A conversation without its members' cursors (`cursors` is empty):
    /// what a membership check on every frame needs, and cheaper where the
    /// cursors are stored apart.
    async fn conversation_head(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        Ok(self.conversation(id).await?.map(|c| Conversation {
            cursors: Vec::new(),
            ..c
        }))
    }
    async fn conversations_of(&self, user: &str) -> Result<Vec<Conversation>, StoreError>;
    /// Users who share at least one conversation with `user`.
    async fn contacts(&self, user: &str) -> Result<Vec<String>, StoreError>;

    /// Appends in order, assigning each conversation's next seq. Called only
    /// by the partition owner of each conversation.
    async fn append_messages(&self, messages: &[ChatMessage]) -> Result<Vec<Appended>, StoreError>;
    async fn message_by_client_id(
        &self,
        sender: &str,
        client_msg_id: &str,
    ) -> Result<Option<ChatMessage>, StoreError>;
    /// Up to `limit` messages with `seq > after_seq`, oldest first.
    async fn messages_after(
        &self,
        conversation: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// The newest `limit` messages with `seq < before_seq` (no bound when
    /// 0), oldest first.
    async fn messages_before(
        &self,
        conversation: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// Messages of `conversations` whose body contains `query`
    /// (case-insensitively), newest first, at most `limit`. A scan of those
    /// conversations' messages on every backend: fine for a user's own
    /// history, not a full-text index.
    async fn search_messages(
        &self,
        conversations: &[String],
        query: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError>;
    /// Moves a member's cursor forward (never back, never past the last
    /// seq). Answers the new position when it moved.
    async fn advance_cursor(
        &self,
        conversation: &str,
        user: &str,
        kind: ReceiptKind,
        up_to_seq: u64,
    ) -> Result<Option<u64>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}
