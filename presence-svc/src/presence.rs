//! The presence domain. A user is online while they have a live session;
//! a clean close of the last one makes them offline at once, a dropped one
//! only after the grace period, so a flaky network does not flap. Sessions
//! that expire (a dead edge) are found by a periodic sweep.
//!
//! Every decision re-reads the user's live sessions and is taken under a
//! per-user lock, so a reload (close + open racing) cannot leave a
//! connected user shown offline.

use bytes::Bytes;
use parley::backends::Backends;
use parley::bus::Topic;
use parley::config::Liveness;
use parley::ids::UserId;
use parley::proto::PresenceEvent;
use parley::push::Pusher;
use parley::registry::{PresenceRecord, SessionEntry};
use parley::time::now_ms;
use parley::{ApiError, ErrorCode};
use prost::Message;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// Per-user serialization without a map that grows with users: users are
/// striped over a fixed set of async locks (held across registry calls,
/// hence tokio's mutex).
const STRIPES: usize = 64;

/// Live sessions one user may hold at once, over every edge, unless
/// configured otherwise (`PARLEY_MAX_SESSIONS_PER_USER`).
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 20;

#[derive(Clone, Debug)]
pub struct Presence {
    pub(crate) backends: Backends,
    pub(crate) pusher: Pusher,
    liveness: Liveness,
    max_sessions: usize,
    stripes: Arc<Vec<Mutex<()>>>,
    shutdown: CancellationToken,
}

impl Presence {
    /// `shutdown` ends pending grace-period timers and the sweeper.
    pub fn new(
        backends: Backends,
        pusher: Pusher,
        liveness: Liveness,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            backends,
            pusher,
            liveness,
            max_sessions: DEFAULT_MAX_SESSIONS_PER_USER,
            stripes: Arc::new((0..STRIPES).map(|_| Mutex::new(())).collect()),
            shutdown,
        }
    }

    /// At most `max` live sessions per user (at least 1); a session past
    /// it is refused with `rate_limited`.
    pub fn with_max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max.max(1);
        self
    }

    fn stripe(&self, user: &str) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        user.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Records a new session; the user's first makes them online. Answers
    /// the contacts online now, for the new session's first view. A session
    /// past the user's cap is taken back out and refused (`rate_limited`).
    pub async fn open_session(
        &self,
        session: &SessionEntry,
    ) -> Result<Vec<PresenceRecord>, ApiError> {
        let registry = &self.backends.registry;
        // Add first, then count: the registry's answer covers every edge
        // and process at once, where a count taken before the add would
        // let two joins racing at the cap both in. Racing that way, both
        // may be refused instead (each counts the other), never both let in.
        let live = registry
            .add_session(session, self.liveness.session_ttl)
            .await?;
        if live > self.max_sessions {
            registry.remove_session(session).await?;
            tracing::info!(user = %session.user_id, live, "session refused: too many sessions");
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many sessions: at most {} per user; close another one first",
                    self.max_sessions
                ),
            ));
        }
        self.reconcile(&session.user_id).await?;
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
            return self.reconcile(&session.user_id).await;
        }
        let this = self.clone();
        let user = session.user_id.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(this.liveness.offline_grace) => {}
                () = this.shutdown.cancelled() => return,
            }
            if let Err(e) = this.reconcile(&user).await {
                tracing::warn!(%user, error = %e, "cannot update presence after the grace period");
            }
        });
        Ok(())
    }

    /// An edge vouches for the sessions it still holds. This is also how
    /// a registry that lost its data (a Redis restart) is rebuilt: the
    /// sessions come back, and users with no presence record become online
    /// again.
    pub async fn heartbeat(&self, sessions: &[SessionEntry]) -> Result<(), ApiError> {
        let registry = &self.backends.registry;
        registry
            .refresh_sessions(sessions, self.liveness.session_ttl)
            .await?;
        let mut users: Vec<String> = sessions.iter().map(|s| s.user_id.clone()).collect();
        users.sort();
        users.dedup();
        let known: std::collections::HashSet<String> = registry
            .presence_of(&users)
            .await?
            .into_iter()
            .filter(|p| p.status != OFFLINE)
            .map(|p| p.user_id)
            .collect();
        for user in users.iter().filter(|u| !known.contains(*u)) {
            self.reconcile(user).await?;
        }
        Ok(())
    }

    /// `online`, `away` or `busy`, chosen by a connected user.
    pub async fn set_status(&self, user: &UserId, status: &str) -> Result<(), ApiError> {
        if !matches!(status, "online" | "away" | "busy") {
            return Err(ApiError::invalid(
                "status must be \"online\", \"away\" or \"busy\"",
            ));
        }
        let _serial = self.stripe(user.as_str()).lock().await;
        if self.live(user.as_str()).await? {
            self.change(user.as_str(), status).await?;
        }
        Ok(())
    }

    pub async fn get(&self, users: &[String]) -> Result<Vec<PresenceRecord>, ApiError> {
        Ok(self.backends.registry.presence_of(users).await?)
    }

    /// Periodically marks offline the users whose sessions all expired
    /// without a close (an edge that died, a lost close call).
    pub async fn sweep(self) {
        let mut ticker = tokio::time::interval(self.liveness.session_heartbeat());
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.shutdown.cancelled() => return,
            }
            let present = match self.backends.registry.present_users().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "presence sweep cannot list users");
                    continue;
                }
            };
            for p in present {
                if let Err(e) = self.reconcile(&p.user_id).await {
                    tracing::warn!(user = %p.user_id, error = %e, "presence sweep failed");
                }
            }
        }
    }

    async fn live(&self, user: &str) -> Result<bool, ApiError> {
        Ok(!self
            .backends
            .registry
            .sessions_of(&[user.to_owned()])
            .await?
            .is_empty())
    }

    /// Makes the stored status agree with the live sessions: online if any
    /// and the user was offline, offline if none.
    async fn reconcile(&self, user: &str) -> Result<(), ApiError> {
        let _serial = self.stripe(user).lock().await;
        let live = self.live(user).await?;
        let current = self.status(user).await?;
        match (live, current.as_str()) {
            (true, OFFLINE) => self.change(user, ONLINE).await,
            (false, status) if status != OFFLINE => self.change(user, OFFLINE).await,
            _ => Ok(()),
        }
    }

    async fn status(&self, user: &str) -> Result<String, ApiError> {
        Ok(self
            .backends
            .registry
            .presence_of(&[user.to_owned()])
            .await?
            .pop()
            .map(|p| p.status)
            .unwrap_or_else(|| OFFLINE.to_owned()))
    }

    /// Stores the new status and publishes the change, if it is one.
    /// Callers hold the user's stripe.
    async fn change(&self, user: &str, status: &str) -> Result<(), ApiError> {
        let previous = self.status(user).await?;
        if previous == status {
            return Ok(());
        }
        let now = now_ms();
        self.backends
            .registry
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
