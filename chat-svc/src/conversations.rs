//! Resolving the conversation a frame names, and checking the caller is in it.

use parley::ApiError;
use parley::ids::{ConversationId, UserId};
use parley::proto::Conversation;
use parley::store::Store;
use parley::time::now_ms;

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
pub async fn resolve(
    store: &dyn Store,
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
            if let Some(existing) = store.conversation_head(id.as_str()).await? {
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
            Ok(store
                .ensure_direct(id.as_str(), user.as_str(), peer.as_str(), now_ms())
                .await?)
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
