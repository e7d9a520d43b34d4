//! Groups: creating one and changing its members or name. A change is
//! checked against the group as it is when it is written (members only,
//! the member limit); then everyone it concerns, removed members included,
//! is told with `conversation_updated`.
//!
//! Changes to one group are serialized by a lock in the registry (Redis
//! `SET NX` with a TTL, so a crashed holder cannot keep it): FerretDB 1.x,
//! which stands in for MongoDB here, does not apply a filtered update
//! atomically, so the store's compare-and-set on the group's version alone
//! lets two concurrent additions both pass the limit (the conformance
//! suite showed it). The store's own check stays as a second line.
//!
//! Changes take effect for the message path at once: the sequencer reads a
//! conversation's members afresh for every batch, so a message sent after
//! a removal was answered never reaches the removed member, and reads
//! (`history`, `sync`) check membership on every call.

use crate::chat::Chat;
use parley::ids::{ConversationId, UserId};
use parley::proto::Conversation;
use parley::protocol::server;
use parley::push::Outgoing;
use parley::store::GroupChange;
use parley::time::now_ms;
use parley::{ApiError, ErrorCode};
use std::time::{Duration, Instant};

/// How long a group change may hold the group's lock; far above what one
/// takes, and how long a crashed holder blocks changes to its group.
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a change waits for the lock before it answers `unavailable`.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Longest group name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// What a client asked to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add(Vec<String>),
    Remove(Vec<String>),
    Leave,
    Rename(String),
}

impl Change {
    /// The word `conversation_updated.change` carries.
    fn label(&self) -> &'static str {
        match self {
            Self::Add(_) => "members_added",
            Self::Remove(_) => "members_removed",
            Self::Leave => "left",
            Self::Rename(_) => "renamed",
        }
    }
}

/// A group name is a user-visible name ([`parley::names::visible_name`]).
fn valid_name(name: &str) -> Result<String, ApiError> {
    parley::names::visible_name(name, "a group name", MAX_NAME_CHARS)
}

/// Parsed, deduplicated user ids, `except` left out.
fn member_ids(raw: &[String], except: Option<&UserId>) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for id in raw {
        let id = UserId::parse(id)?.into_string();
        if except.is_none_or(|me| id != me.as_str()) && !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

impl Chat {
    /// Fails with `not_found` when a member does not exist, and with
    /// `too_large` beyond the member limit; nothing is stored then.
    pub async fn create_group(
        &self,
        user: &UserId,
        name: &str,
        members: &[String],
    ) -> Result<Conversation, ApiError> {
        let name = valid_name(name)?;
        let others = member_ids(members, Some(user))?;
        if others.len() + 1 > self.max_group_members {
            return Err(too_many(self.max_group_members));
        }
        self.all_exist(&others).await?;
        let mut all = vec![user.as_str().to_owned()];
        all.extend(others);
        let group = Conversation {
            id: ConversationId::generate_group().into_string(),
            kind: "group".into(),
            name,
            members: all,
            created_at_ms: now_ms(),
            ..Default::default()
        };
        self.backends.store.create_group(&group).await?;
        metrics::counter!("parley_chat_groups_created_total").increment(1);
        self.announce(&group, &[], user, "created").await;
        Ok(group)
    }

    /// Applies `change` to the group if `user` is a member of it (anyone
    /// else gets `not_found`, as for a conversation that does not exist).
    pub async fn change_group(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        change: Change,
    ) -> Result<Conversation, ApiError> {
        let label = change.label();
        let store_change = match change {
            Change::Add(raw) => {
                // The caller stays in the list: a stranger adding
                // themselves is told the group does not exist.
                let ids = member_ids(&raw, None)?;
                if ids.is_empty() {
                    return Err(ApiError::invalid("name at least one member to add"));
                }
                if ids.len() > self.max_group_members {
                    return Err(too_many(self.max_group_members));
                }
                self.all_exist(&ids).await?;
                GroupChange::Add(ids)
            }
            Change::Remove(raw) => {
                let ids = member_ids(&raw, None)?;
                if ids.is_empty() {
                    return Err(ApiError::invalid("name at least one member to remove"));
                }
                GroupChange::Remove(ids)
            }
            Change::Leave => GroupChange::Remove(vec![user.as_str().to_owned()]),
            Change::Rename(name) => GroupChange::Rename(valid_name(&name)?),
        };
        let lock = self.lock_group(conversation).await?;
        let changed = self
            .backends
            .store
            .update_group(
                conversation.as_str(),
                user.as_str(),
                &store_change,
                self.max_group_members,
            )
            .await;
        let (key, token) = lock;
        if let Err(e) = self.backends.registry.release_if(&key, &token).await {
            tracing::warn!(error = %e, "group lock not released; it expires");
        }
        let changed = changed?;
        if changed.changed {
            self.memberships
                .forget(conversation.as_str(), &changed.removed);
            metrics::counter!("parley_chat_group_changes_total").increment(1);
            self.announce(&changed.conversation, &changed.removed, user, label)
                .await;
        }
        Ok(changed.conversation)
    }

    /// Waits for the group's lock; answers its key and this holder's
    /// token, to release it (only while it is still ours).
    async fn lock_group(
        &self,
        conversation: &ConversationId,
    ) -> Result<(String, String), ApiError> {
        let key = format!("group-lock:{conversation}");
        let token = parley::ids::new_session_id();
        let registry = &self.backends.registry;
        let began = Instant::now();
        let mut pause = Duration::from_millis(2);
        while registry.claim(&key, &token, LOCK_TTL).await?.is_some() {
            if began.elapsed() > LOCK_WAIT {
                return Err(ApiError::unavailable(
                    "the group is being changed; try again",
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok((key, token))
    }

    async fn all_exist(&self, ids: &[String]) -> Result<(), ApiError> {
        if ids.is_empty() {
            return Ok(());
        }
        let found = self.backends.store.users_by_ids(ids).await?;
        if let Some(missing) = ids.iter().find(|id| !found.iter().any(|u| &u.id == *id)) {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no such user {missing}"),
            ));
        }
        Ok(())
    }

    /// `conversation_updated` to every member and to those just removed
    /// (their last word about the group), one frame shared by all.
    async fn announce(&self, group: &Conversation, removed: &[String], by: &UserId, change: &str) {
        let mut users = group.members.clone();
        users.extend(removed.iter().cloned());
        let frame = server::conversation_updated(group, removed, by.as_str(), change);
        self.pusher
            .push(vec![Outgoing {
                users,
                frame: frame.into(),
            }])
            .await;
    }
}

fn too_many(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("a group has at most {limit} members"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_trimmed() {
        assert_eq!(valid_name("  team  ").unwrap(), "team");
        assert!(valid_name("   ").is_err());
        assert!(valid_name("a\u{7}b").is_err());
        assert!(valid_name("\u{200B}").is_err());
        assert!(valid_name("team\u{202E}gnp.exe").is_err());
        assert!(valid_name(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(valid_name(&"é".repeat(MAX_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn member_lists_drop_the_caller_and_repeats() {
        let me = UserId::parse("me").unwrap();
        let raw = ["a", "me", "a", "b"].map(String::from);
        assert_eq!(member_ids(&raw, Some(&me)).unwrap(), ["a", "b"]);
        assert_eq!(member_ids(&raw, None).unwrap(), ["a", "me", "b"]);
        assert!(member_ids(&["bad id!".into()], Some(&me)).is_err());
    }
}
