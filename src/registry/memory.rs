//! The in-process registry: maps behind one mutex, entries expiring lazily.
//!
//! One `std::sync::Mutex` is enough: every operation is a few map lookups
//! with no await inside, far shorter than the network calls around them.

use super::rate::{Decision, Gcra};
use super::{PresenceRecord, Registry, RegistryError, ServiceEntry, SessionEntry};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How long a removed session is remembered (longer than any heartbeat
/// round trip that could race its removal).
const REMOVED_MEMORY: Duration = Duration::from_secs(120);

/// The in-process registry.
#[derive(Debug)]
pub struct MemoryRegistry {
    state: Mutex<State>,
    /// Rate limits count milliseconds from here (a monotonic clock: a
    /// wall-clock step must not refill or empty every bucket).
    origin: Instant,
    /// This registry's data lives exactly as long as the value: its epoch
    /// never changes.
    epoch: String,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            origin: Instant::now(),
            epoch: crate::ids::new_session_id(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    services: HashMap<(String, String), (ServiceEntry, Instant)>,
    /// user → session id → (entry, expiry)
    sessions: HashMap<String, HashMap<String, (SessionEntry, Instant)>>,
    /// Sessions removed within a session TTL: a heartbeat snapshot taken
    /// before the close must not resurrect them.
    removed: HashMap<String, Instant>,
    presence: HashMap<String, PresenceRecord>,
    claims: HashMap<String, (String, Instant)>,
    /// Expired claims are dropped lazily; a sweep runs when the map has
    /// doubled since the last one, so the cost is amortized O(1).
    sweep_claims_at: usize,
    /// key → theoretical arrival time of its rate limit (ms since
    /// `origin`); swept like the claims.
    rates: HashMap<String, u64>,
    sweep_rates_at: usize,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, RegistryError> {
        self.state
            .lock()
            .map_err(|_| RegistryError::Unavailable("registry lock poisoned".into()))
    }
}

fn live_sessions<'a>(
    state: &'a mut State,
    user: &str,
    now: Instant,
) -> Option<&'a mut HashMap<String, (SessionEntry, Instant)>> {
    let sessions = state.sessions.get_mut(user)?;
    sessions.retain(|_, (_, expiry)| *expiry > now);
    Some(sessions)
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register_service(
        &self,
        entry: &ServiceEntry,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let mut state = self.lock()?;
        state.services.insert(
            (entry.kind.clone(), entry.id.clone()),
            (entry.clone(), Instant::now() + ttl),
        );
        Ok(())
    }

    async fn deregister_service(&self, kind: &str, id: &str) -> Result<(), RegistryError> {
        self.lock()?
            .services
            .remove(&(kind.to_owned(), id.to_owned()));
        Ok(())
    }

    async fn services(&self, kind: Option<&str>) -> Result<Vec<ServiceEntry>, RegistryError> {
        let now = Instant::now();
        let mut state = self.lock()?;
        state.services.retain(|_, (_, expiry)| *expiry > now);
        let mut out: Vec<ServiceEntry> = state
            .services
            .values()
            .filter(|(e, _)| kind.is_none_or(|k| e.kind == k))
            .map(|(e, _)| e.clone())
            .collect();
        out.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
        Ok(out)
    }

    async fn add_session(
        &self,
        session: &SessionEntry,
        ttl: Duration,
    ) -> Result<usize, RegistryError> {
        let now = Instant::now();
        let mut state = self.lock()?;
        let sessions = state.sessions.entry(session.user_id.clone()).or_default();
        sessions.retain(|_, (_, expiry)| *expiry > now);
        sessions.insert(session.session_id.clone(), (session.clone(), now + ttl));
        Ok(sessions.len())
    }

    async fn remove_session(&self, session: &SessionEntry) -> Result<usize, RegistryError> {
        let now = Instant::now();
        let mut state = self.lock()?;
        let tombstone = now + REMOVED_MEMORY;
        state.removed.insert(session.session_id.clone(), tombstone);
        if state.removed.len() > 1024 {
            state.removed.retain(|_, until| *until > now);
        }
        let left = match live_sessions(&mut state, &session.user_id, now) {
            Some(sessions) => {
                sessions.remove(&session.session_id);
                sessions.len()
            }
            None => 0,
        };
        if left == 0 {
            state.sessions.remove(&session.user_id);
        }
        Ok(left)
    }

    async fn refresh_sessions(
        &self,
        sessions: &[SessionEntry],
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let now = Instant::now();
        let expiry = now + ttl;
        let mut state = self.lock()?;
        for s in sessions {
            if state
                .removed
                .get(&s.session_id)
                .is_some_and(|until| *until > now)
            {
                continue;
            }
            state
                .sessions
                .entry(s.user_id.clone())
                .or_default()
                .insert(s.session_id.clone(), (s.clone(), expiry));
        }
        Ok(())
    }

    async fn sessions_of(&self, users: &[String]) -> Result<Vec<SessionEntry>, RegistryError> {
        let now = Instant::now();
        let mut state = self.lock()?;
        let mut out = Vec::new();
        for user in users {
            if let Some(sessions) = live_sessions(&mut state, user, now) {
                out.extend(sessions.values().map(|(s, _)| s.clone()));
            }
        }
        Ok(out)
    }

    async fn set_presence(&self, record: &PresenceRecord) -> Result<(), RegistryError> {
        self.lock()?
            .presence
            .insert(record.user_id.clone(), record.clone());
        Ok(())
    }

    async fn present_users(&self) -> Result<Vec<PresenceRecord>, RegistryError> {
        let state = self.lock()?;
        Ok(state
            .presence
            .values()
            .filter(|p| p.status != "offline")
            .cloned()
            .collect())
    }

    async fn presence_of(&self, users: &[String]) -> Result<Vec<PresenceRecord>, RegistryError> {
        let state = self.lock()?;
        Ok(users
            .iter()
            .filter_map(|u| state.presence.get(u).cloned())
            .collect())
    }

    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, RegistryError> {
        let now = Instant::now();
        let mut state = self.lock()?;
        match state.claims.get(key) {
            Some((existing, expiry)) if *expiry > now => Ok(Some(existing.clone())),
            _ => {
                state
                    .claims
                    .insert(key.to_owned(), (value.to_owned(), now + ttl));
                if state.claims.len() >= state.sweep_claims_at {
                    state.claims.retain(|_, (_, expiry)| *expiry > now);
                    state.sweep_claims_at = (state.claims.len() * 2).max(1024);
                }
                Ok(None)
            }
        }
    }

    async fn settle(&self, key: &str, value: &str, ttl: Duration) -> Result<(), RegistryError> {
        let expiry = Instant::now() + ttl;
        self.lock()?
            .claims
            .insert(key.to_owned(), (value.to_owned(), expiry));
        Ok(())
    }

    async fn renew_if(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, RegistryError> {
        let now = Instant::now();
        let mut state = self.lock()?;
        match state.claims.get_mut(key) {
            Some((held, expiry)) if held == value && *expiry > now => {
                *expiry = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str) -> Result<(), RegistryError> {
        self.lock()?.claims.remove(key);
        Ok(())
    }

    async fn release_if(&self, key: &str, value: &str) -> Result<bool, RegistryError> {
        let now = Instant::now();
        let mut state = self.lock()?;
        match state.claims.get(key) {
            Some((held, expiry)) if held == value && *expiry > now => {
                state.claims.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn rate_limit(
        &self,
        key: &str,
        limit: u64,
        period: Duration,
    ) -> Result<Decision, RegistryError> {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
        let gcra = Gcra::new(limit, period);
        let mut state = self.lock()?;
        let (decision, tat) = gcra.check(now, state.rates.get(key).copied());
        if decision.allowed() {
            state.rates.insert(key.to_owned(), tat);
            // A TAT in the past is the same as none: drop those now and
            // then, so the map holds only keys that are limiting.
            if state.rates.len() >= state.sweep_rates_at {
                state.rates.retain(|_, tat| *tat > now);
                state.sweep_rates_at = (state.rates.len() * 2).max(1024);
            }
        }
        Ok(decision)
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        self.lock().map(|_| ())
    }

    async fn epoch(&self) -> Result<String, RegistryError> {
        Ok(self.epoch.clone())
    }
}
