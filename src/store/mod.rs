//! The store: users, conversations with their members' cursors, and message
//! history. MongoDB in production; [`embedded::EmbeddedStore`] on disk for
//! the one-process default.
//!
//! Appends are idempotent on `(sender, client_msg_id)`: a replayed bus record
//! or a resent frame finds the message already stored and gets it back with
//! its original id and seq.

pub mod embedded;
pub mod mongo;

use crate::proto::{
    ChatMessage, Conversation, MessageKind, Reaction, ReceiptEvent, ReceiptKind, User,
};
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

impl Appended {
    /// The same message met again later in one batch: nothing new stored.
    pub fn repeated(&self) -> Self {
        Self {
            message: self.message.clone(),
            fresh: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique field is taken (`username`, `email`).
    #[error("{0} already taken")]
    Conflict(&'static str),
    #[error("no such conversation {0}")]
    NoConversation(String),
    /// A group change aimed at a direct conversation.
    #[error("conversation {0} is not a group")]
    NotAGroup(String),
    /// Adding would take a group past its member limit.
    #[error("a group has at most {0} members")]
    GroupFull(usize),
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
            StoreError::NotAGroup(_) => {
                crate::ApiError::invalid("only a group's members can be changed")
            }
            StoreError::GroupFull(limit) => crate::ApiError::new(
                ErrorCode::TooLarge,
                format!("a group has at most {limit} members"),
            ),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                crate::ApiError::unavailable("storage unavailable, try again")
            }
            StoreError::Corrupt(_) => crate::ApiError::internal(&err),
        }
    }
}

/// A change to a group's members or name. Stores apply it atomically with
/// [`apply_group_change`], against the group as it is when the write lands,
/// so concurrent changes can neither lose each other nor pass the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    Add(Vec<String>),
    Remove(Vec<String>),
    Rename(String),
}

/// What [`Store::update_group`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupChanged {
    /// The group after the change (without cursors).
    pub conversation: Conversation,
    /// Members the change took out: they are told once more, then no longer.
    pub removed: Vec<String>,
    /// False when the change changed nothing (adding members already in it).
    pub changed: bool,
}

/// The group `c` after `actor` makes `change`, and who was removed; `None`
/// when nothing would change. Only members may change a group: anyone else
/// is told it does not exist.
pub fn apply_group_change(
    c: &Conversation,
    actor: &str,
    change: &GroupChange,
    max_members: usize,
) -> Result<Option<(Conversation, Vec<String>)>, StoreError> {
    if !c.members.iter().any(|m| m == actor) {
        return Err(StoreError::NoConversation(c.id.clone()));
    }
    if c.kind != "group" {
        return Err(StoreError::NotAGroup(c.id.clone()));
    }
    let mut next = Conversation {
        cursors: Vec::new(),
        ..c.clone()
    };
    let mut removed = Vec::new();
    match change {
        GroupChange::Add(users) => {
            for u in users {
                if !next.members.contains(u) {
                    next.members.push(u.clone());
                }
            }
            if next.members.len() == c.members.len() {
                return Ok(None);
            }
            if next.members.len() > max_members {
                return Err(StoreError::GroupFull(max_members));
            }
        }
        GroupChange::Remove(users) => {
            next.members.retain(|m| {
                let out = users.contains(m);
                if out {
                    removed.push(m.clone());
                }
                !out
            });
            if removed.is_empty() {
                return Ok(None);
            }
        }
        GroupChange::Rename(name) => {
            if *name == c.name {
                return Ok(None);
            }
            next.name = name.clone();
        }
    }
    Ok(Some((next, removed)))
}

/// Whether applying `change` to `target` would change it. Only reactions
/// can be no-ops: one the user already has on, or takes back without
/// having it (an edit always moves `edited_at`; a second deletion is
/// refused before this).
pub fn changes_message(target: &ChatMessage, change: &ChatMessage) -> bool {
    match change.kind() {
        MessageKind::Reaction => {
            let present = target
                .reactions
                .iter()
                .any(|r| r.user_id == change.from && r.emoji == change.emoji);
            present != change.on
        }
        MessageKind::Message | MessageKind::Edit | MessageKind::Delete => true,
    }
}

/// A member's `(delivered, read)` cursors in a conversation: the highest
/// seqs it has received and read.
pub type Cursors = (u64, u64);

/// Applies a receipt of `kind` up to `seq` (already clamped to the
/// conversation's last seq) to `cursors`, the one rule every store and the
/// group tally follow: cursors only move forward, and reading a message
/// implies it was delivered, so a read raises both. Answers the new
/// cursors and, when the receipt's own cursor moved, where to.
pub fn apply_receipt(cursors: Cursors, kind: ReceiptKind, seq: u64) -> (Cursors, Option<u64>) {
    let (delivered, read) = cursors;
    match kind {
        ReceiptKind::Read => (
            (delivered.max(seq), read.max(seq)),
            (seq > read).then_some(seq),
        ),
        _ => ((delivered.max(seq), read), (seq > delivered).then_some(seq)),
    }
}

/// Applies a change entry (an edit, a deletion or a reaction) to the
/// message it targets. Idempotent, so a replayed change lands the same.
pub fn apply_message_change(target: &mut ChatMessage, change: &ChatMessage) {
    match change.kind() {
        MessageKind::Message => {}
        MessageKind::Edit => {
            target.body = change.body.clone();
            target.edited_at_ms = change.sent_at_ms;
            if !target.edit_seqs.contains(&change.seq) {
                target.edit_seqs.push(change.seq);
            }
        }
        MessageKind::Delete => {
            target.deleted = true;
            target.body.clear();
            target.reactions.clear();
        }
        MessageKind::Reaction => {
            let mine = |r: &Reaction| r.user_id == change.from && r.emoji == change.emoji;
            let present = target.reactions.iter().any(mine);
            if change.on && !present {
                target.reactions.push(Reaction {
                    emoji: change.emoji.clone(),
                    user_id: change.from.clone(),
                });
            } else if !change.on {
                target.reactions.retain(|r| !mine(r));
            }
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
    /// Whether `user` is a member of `conversation` (false when it does
    /// not exist): the check on every receipt, which in a large group
    /// should not cost decoding its member list. A store that keeps each
    /// user's memberships apart may answer yes for a moment after a
    /// removal; the sequencer checks receipts against the group itself.
    async fn is_member(&self, conversation: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self
            .conversation_head(conversation)
            .await?
            .is_some_and(|c| c.members.iter().any(|m| m == user)))
    }
    /// Stores a new group (its id is fresh, so nothing can race it).
    async fn create_group(&self, group: &Conversation) -> Result<(), StoreError>;
    /// Applies `change` by `actor` atomically (see [`apply_group_change`]).
    async fn update_group(
        &self,
        id: &str,
        actor: &str,
        change: &GroupChange,
        max_members: usize,
    ) -> Result<GroupChanged, StoreError>;
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
    /// The entry with this id in `conversation`, in its current state.
    async fn message_by_id(
        &self,
        conversation: &str,
        id: &str,
    ) -> Result<Option<ChatMessage>, StoreError>;
    /// Applies a stored change entry to its target (`target_seq`) in place
    /// with [`apply_message_change`]; a deletion also blanks the text of
    /// the message's edit entries (`edit_seqs`). Called only by the
    /// partition owner.
    async fn apply_change(&self, change: &ChatMessage) -> Result<(), StoreError>;
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

    /// [`Store::advance_cursor`] for each receipt, in order, in one write
    /// where the store can: a busy group's receipts arrive by the hundred.
    /// A receipt for a conversation that does not exist answers `None`;
    /// only a failure a retry can cure fails the call.
    async fn advance_cursors(
        &self,
        receipts: &[ReceiptEvent],
    ) -> Result<Vec<Option<u64>>, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;

    /// Makes every write made before it durable. The sequencer's writes
    /// ([`Store::append_messages`], [`Store::apply_change`]) need to be
    /// durable only from here on: the sequencer calls it before it commits
    /// the offsets of what it wrote, so a crash in between replays those
    /// records from the bus onto the store as it was at the last `sync`,
    /// assigning the same seqs (the log is the write-ahead record, the
    /// store a view of it: one durability point per message, issue 12).
    /// The embedded store commits those writes without fsync and fsyncs
    /// here; a store whose writes are as durable as they will get when they
    /// return has nothing to do beyond what it left to write after them:
    /// the Mongo store, whose writes are acknowledged at write concern
    /// `majority` with `j: true` unless the URL names another (see
    /// `docs/architecture.md#durability`), waits here for the id keys and
    /// `last_seq` raises it writes after an append answers (an index over
    /// the messages, rebuilt by probing or scanning if a crash loses it).
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether a crash can take back the sequencer's writes since the last
    /// [`Store::sync`] (the embedded store's, beside the embedded bus). Clients may have been
    /// pushed what they wrote, so chat-svc then answers nothing until its
    /// sequencer has replayed what the log held at start: no client sees
    /// the store behind what it was shown before the crash (`sync` and
    /// `history` without it, an edit of it refused as `not_found`).
    fn rolls_back_on_crash(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_raises_both_cursors_and_nothing_moves_back() {
        let (read, delivered) = (ReceiptKind::Read, ReceiptKind::Delivered);
        assert_eq!(apply_receipt((0, 0), delivered, 3), ((3, 0), Some(3)));
        assert_eq!(apply_receipt((3, 0), read, 2), ((3, 2), Some(2)));
        assert_eq!(apply_receipt((3, 2), read, 5), ((5, 5), Some(5)));
        assert_eq!(apply_receipt((5, 5), delivered, 4), ((5, 5), None));
        assert_eq!(apply_receipt((5, 5), read, 5), ((5, 5), None));
        assert_eq!(apply_receipt((5, 2), delivered, 5), ((5, 2), None));
    }
}
