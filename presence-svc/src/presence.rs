//! The presence domain. A user is online while they have a live session;
//! a clean close of the last one makes them offline at once, a dropped one
//! only after the grace period, so a flaky network does not flap.

use bytes::Bytes;
use parley::ApiError;
use parley::backends::Backends;
use parley::bus::Topic;
use parley::config::Liveness;
use parley::ids::UserId;
use parley::proto::PresenceEvent;
use parley::push::Pusher;
use parley::registry::{PresenceRecord, SessionEntry};
use parley::time::now_ms;
use prost::Message;

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

#[derive(Clone, Debug)]
pub struct Presence {
    pub(crate) backends: Backends,
    pub(crate) pusher: Pusher,
    liveness: Liveness,
}

impl Presence {
    pub fn new(backends: Backends, pusher: Pusher, liveness: Liveness) -> Self {
        Self {
            backends,
            pusher,
            liveness,
        }
    }

    /// Records a new session; the user's first makes them online. Answers
    /// the contacts online now, for the new session's first view.
    pub async fn open_session(
        &self,
        session: &SessionEntry,
    ) -> Result<Vec<PresenceRecord>, ApiError> {
        let registry = &self.backends.registry;
        let count = registry
            .add_session(session, self.liveness.session_ttl)
            .await?;
        if count == 1 {
            self.change(&session.user_id, ONLINE).await?;
        }
        let contacts = self.backends.store.contacts(&session.user_id).await?;
        let mut online = registry.presence_of(&contacts).await?;
        online.retain(|p| p.status != OFFLINE);
        Ok(online)
    }

    /// Forgets a session. When it was the user's last: offline now if it
    /// closed cleanly, else after the grace period unless they come back.
    pub async fn close_session(&self, session: &SessionEntry, clean: bool) -> Result<(), ApiError> {
        let left = self.backends.registry.remove_session(session).await?;
        if left > 0 {
            return Ok(());
        }
        if clean {
            return self.change(&session.user_id, OFFLINE).await;
        }
        let this = self.clone();
        let user = session.user_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.liveness.offline_grace).await;
            let back = this
                .backends
                .registry
                .sessions_of(std::slice::from_ref(&user))
                .await
                .map(|s| !s.is_empty())
                .unwrap_or(true);
            if !back && let Err(e) = this.change(&user, OFFLINE).await {
                tracing::warn!(%user, error = %e, "cannot mark user offline");
            }
        });
        Ok(())
    }

    /// An edge vouches for the sessions it still holds.
    pub async fn heartbeat(&self, sessions: &[SessionEntry]) -> Result<(), ApiError> {
        self.backends
            .registry
            .refresh_sessions(sessions, self.liveness.session_ttl)
            .await?;
        Ok(())
    }

    /// `online`, `away` or `busy`, chosen by the user.
    pub async fn set_status(&self, user: &UserId, status: &str) -> Result<(), ApiError> {
        if !matches!(status, "online" | "away" | "busy") {
            return Err(ApiError::invalid(
                "status must be \"online\", \"away\" or \"busy\"",
            ));
        }
        self.change(user.as_str(), status).await
    }

    pub async fn get(&self, users: &[String]) -> Result<Vec<PresenceRecord>, ApiError> {
        Ok(self.backends.registry.presence_of(users).await?)
    }

    /// Stores the new status and publishes the change, if it is one.
    async fn change(&self, user: &str, status: &str) -> Result<(), ApiError> {
        let registry = &self.backends.registry;
        let previous = registry
            .presence_of(&[user.to_owned()])
            .await?
            .pop()
            .map(|p| p.status)
            .unwrap_or_else(|| OFFLINE.to_owned());
        if previous == status {
            return Ok(());
        }
        let now = now_ms();
        registry
            .set_presence(&PresenceRecord {
                user_id: user.to_owned(),
                status: status.to_owned(),
                last_seen_ms: now,
            })
            .await?;
        let event = PresenceEvent {
            user_id: user.to_owned(),
            status: status.to_owned(),
            last_seen_ms: now,
            at_ms: now,
            previous_status: previous,
        };
        self.backends
            .bus
            .publish(
                Topic::UserPresence,
                user,
                Bytes::from(event.encode_to_vec()),
            )
            .await?;
        Ok(())
    }
}
