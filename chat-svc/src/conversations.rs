//! Resolving the conversation a frame names, and checking the caller is in it.

use parley::ApiError;
use parley::ids::{ConversationId, UserId};
use parley::proto::Conversation;
use parley::store::Store;
use parley::time::now_ms;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a client frame points: a user (the 1:1 conversation) or a
/// conversation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(UserId),
    Conversation(ConversationId),
}

impl Target {
    /// Exactly one of `to` and `conversation_id` must be given.
    pub fn parse(to: &str, conversation_id: &str) -> Result<Self, ApiError> {
        match (to.is_empty(), conversation_id.is_empty()) {
            (false, true) => Ok(Self::User(UserId::parse(to)?)),
            (true, false) => Ok(Self::Conversation(ConversationId::parse(conversation_id)?)),
            _ => Err(ApiError::invalid(
                "give exactly one of `to` and `conversation_id`",
            )),
        }
    }
}

/// The conversation `target` names, if `user` is a member. A 1:1
/// conversation is created when `create` is set and it does not exist yet.
/// A 1:1 conversation's head comes from `directs` (see [`Directs`]: its
/// `last_seq` is not filled in); a group's is read from the store.
pub async fn resolve(
    store: &dyn Store,
    directs: &Directs,
    user: &UserId,
    target: &Target,
    create: bool,
) -> Result<Conversation, ApiError> {
    match target {
        Target::User(peer) => {
            if peer == user {
                return Err(ApiError::invalid("cannot message yourself"));
            }
            let id = ConversationId::direct(user, peer);
            if let Some(existing) = directs.head(store, id.as_str()).await? {
                return Ok(existing);
            }
            let exists = !store
                .users_by_ids(&[peer.as_str().to_owned()])
                .await?
                .is_empty();
            if !exists {
                return Err(ApiError::new(parley::ErrorCode::NotFound, "no such user"));
            }
            if !create {
                // Nothing said yet: an empty, not yet stored conversation.
                return Ok(Conversation {
                    id: id.into_string(),
                    kind: "direct".into(),
                    members: vec![user.as_str().to_owned(), peer.as_str().to_owned()],
                    ..Default::default()
                });
            }
            let created = store
                .ensure_direct(id.as_str(), user.as_str(), peer.as_str(), now_ms())
                .await?;
            directs.remember(&created);
            Ok(created)
        }
        Target::Conversation(id) => member_of(store, user, id).await,
    }
}

/// The conversation if `user` is a member; the same `not_found` whether it
/// does not exist or the user is not in it.
pub async fn member_of(
    store: &dyn Store,
    user: &UserId,
    id: &ConversationId,
) -> Result<Conversation, ApiError> {
    match store.conversation_head(id.as_str()).await? {
        Some(c) if c.members.iter().any(|m| m == user.as_str()) => Ok(c),
        _ => Err(ApiError::conversation_not_found()),
    }
}

/// 1:1 conversations kept at most by [`Directs`]; past it the map starts
/// over (each conversation then costs one store read again).
const DIRECTS_KEPT: usize = 100_000;

/// The heads of 1:1 conversations seen, by id. A 1:1 conversation's kind,
/// name and members are fixed when it is created (group changes refuse
/// it), so one read answers every later send and fan-out: under a 1:1
/// flood these reads were a third of what the Mongo-wire store did. The
/// heads [`Directs::head`] answers carry no `last_seq` and no cursors,
/// whatever the conversation's kind (those change); callers that need them
/// read the store.
#[derive(Debug, Clone, Default)]
pub struct Directs(Arc<Mutex<HashMap<String, Conversation>>>);

impl Directs {
    fn heads(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conversation>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The conversation's kind, name and members: from here for a 1:1
    /// conversation seen before, else from the store (and kept if it is a
    /// 1:1 one). `None` when it does not exist.
    pub async fn head(
        &self,
        store: &dyn Store,
        id: &str,
    ) -> Result<Option<Conversation>, parley::store::StoreError> {
        if let Some(head) = self.heads().get(id) {
            return Ok(Some(head.clone()));
        }
        let head = store.conversation_head(id).await?.map(without_state);
        if let Some(head) = &head {
            self.remember(head);
        }
        Ok(head)
    }

    /// Keeps `c` if it is a 1:1 conversation.
    pub fn remember(&self, c: &Conversation) {
        if c.kind != "direct" {
            return;
        }
        let mut heads = self.heads();
        if heads.len() >= DIRECTS_KEPT {
            heads.clear();
        }
        heads.insert(c.id.clone(), without_state(c.clone()));
    }
}

/// A head without what changes after creation (`last_seq`, cursors), so
/// a kept head never passes for a current one.
fn without_state(c: Conversation) -> Conversation {
    Conversation {
        last_seq: 0,
        cursors: Vec::new(),
        ..c
    }
}

/// How long a confirmed membership is believed without asking the store.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(1);
/// Entries kept at most; beyond it the cache starts over.
const MEMBERSHIPS_KEPT: usize = 100_000;

/// Memberships recently confirmed, for the receipt path: every member of a
/// busy group marks every message, and asking the store each time was the
/// busiest thing FerretDB did under the 500-member benchmark. Only "yes" is
/// kept, for [`MEMBERSHIP_TTL`]; a group change made here forgets the
/// removed members at once (another chat-svc instance may believe it for up
/// to the TTL, which lets at most a removed member's receipt through).
#[derive(Debug, Clone, Default)]
pub struct MembershipCache(Arc<Mutex<HashMap<(String, String), Instant>>>);

impl MembershipCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `user` is in `conversation`, from the cache or the store.
    pub async fn is_member(
        &self,
        store: &dyn Store,
        conversation: &str,
        user: &str,
    ) -> Result<bool, ApiError> {
        let key = (conversation.to_owned(), user.to_owned());
        if self
            .entries()
            .get(&key)
            .is_some_and(|at| at.elapsed() < MEMBERSHIP_TTL)
        {
            return Ok(true);
        }
        let member = store.is_member(conversation, user).await?;
        let mut entries = self.entries();
        if member {
            if entries.len() >= MEMBERSHIPS_KEPT {
                entries.clear();
            }
            entries.insert(key, Instant::now());
        } else {
            entries.remove(&key);
        }
        Ok(member)
    }

    /// Forgets these users' membership of `conversation`.
    pub fn forget(&self, conversation: &str, users: &[String]) {
        let mut entries = self.entries();
        for u in users {
            entries.remove(&(conversation.to_owned(), u.clone()));
        }
    }
}
