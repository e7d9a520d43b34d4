//! The registry on Redis. Every key starts with a configurable prefix, so
//! deployments (and test runs) can share one Redis. Everything that
//! describes a live process or session carries a TTL.
//!
//! Keys (`P` is the prefix):
//! - `P:svc:<kind>:<id>` the instance (JSON, PX ttl); `P:svcs:<kind>` a
//!   sorted set of ids scored by expiry; `P:kinds` the kinds seen.
//! - `P:sess:<user>` a sorted set of `session|edge` scored by expiry (the key
//!   itself expires with its newest session); `P:gone:<session>` marks a
//!   session closed recently, so a racing heartbeat cannot bring it back.
//! - `P:pres:<user>` `status|last_seen_ms`; `P:present` the users not offline.
//! - `P:claim:<key>` idempotency claims (SET NX GET PX).
//! - `P:epoch` a random value written once (SET NX) and never expiring:
//!   with Redis's `run_id` it makes [`Registry::epoch`], which changes when
//!   Redis restarts or the keys are wiped.
//! - `P:rate:<key>` the theoretical arrival time of a rate limit (GCRA, ms
//!   of Redis's clock), expiring when it passes.
//!
//! Hot paths that need several commands send them as one pipeline.

use super::rate::{Decision, Gcra};
use super::{PresenceRecord, Registry, RegistryError, ServiceEntry, SessionEntry};
use crate::time::now_ms;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// How long a closed session is remembered against racing heartbeats.
const GONE_TTL: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct RedisRegistry {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn unavailable(e: redis::RedisError) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

const REFRESH: &str = r"
local prefix, expiry, ttl = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV, 3 do
  local user, sid, edge = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('EXISTS', prefix .. ':gone:' .. sid) == 0 then
    local key = prefix .. ':sess:' .. user
    redis.call('ZADD', key, expiry, sid .. '|' .. edge)
    redis.call('PEXPIRE', key, ttl, 'NX')
    redis.call('PEXPIRE', key, ttl, 'GT')
  end
end
return 0
";

/// [`Gcra::check`] on the server, atomically: KEYS[1] holds the TAT,
/// ARGV[1] is the interval and ARGV[2] the tolerance (ms). Answers 0 when
/// admitted, else the milliseconds until it would be.
///
/// The clock is Redis's own (`TIME`), not the caller's: every chat-svc
/// instance on every host reads and moves the same TAT, and hosts' clocks
/// differ; a caller behind by a second would see every TAT a second further
/// off (refused too long), one ahead would find them passed (admitted
/// early). One clock for every caller keeps the bound exact. (Scripts may
/// call `TIME` since Redis 5 replicates their effects, not the script.)
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - tolerance
if now < allowed_at then return allowed_at - now end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', tat - now)
return 0
";

impl RedisRegistry {
    /// Connects (with automatic reconnection) to `url`; fails if Redis does
    /// not answer now.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RegistryError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

fn parse_session(user: &str, member: &str) -> Option<SessionEntry> {
    let (session_id, edge_id) = member.split_once('|')?;
    Some(SessionEntry {
        session_id: session_id.to_owned(),
        user_id: user.to_owned(),
        edge_id: edge_id.to_owned(),
    })
}

fn parse_presence(user: &str, raw: &str) -> Option<PresenceRecord> {
    let (status, last_seen) = raw.split_once('|')?;
    Some(PresenceRecord {
        user_id: user.to_owned(),
        status: status.to_owned(),
        last_seen_ms: last_seen.parse().ok()?,
    })
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn register_service(
        &self,
        entry: &ServiceEntry,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let json =
            serde_json::to_string(entry).map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let expiry = now_ms() + i64::try_from(ms(ttl)).unwrap_or(i64::MAX / 2);
        redis::pipe()
            .cmd("SET")
            .arg(self.key(&["svc", &entry.kind, &entry.id]))
            .arg(json)
            .arg("PX")
            .arg(ms(ttl))
            .ignore()
            .cmd("ZADD")
            .arg(self.key(&["svcs", &entry.kind]))
            .arg(expiry)
            .arg(&entry.id)
            .ignore()
            .cmd("SADD")
            .arg(self.key(&["kinds"]))
            .arg(&entry.kind)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn deregister_service(&self, kind: &str, id: &str) -> Result<(), RegistryError> {
        redis::pipe()
            .cmd("DEL")
            .arg(self.key(&["svc", kind, id]))
            .ignore()
            .cmd("ZREM")
            .arg(self.key(&["svcs", kind]))
            .arg(id)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn services(&self, kind: Option<&str>) -> Result<Vec<ServiceEntry>, RegistryError> {
        let mut conn = self.conn();
        let kinds: Vec<String> = match kind {
            Some(k) => vec![k.to_owned()],
            None => redis::cmd("SMEMBERS")
                .arg(self.key(&["kinds"]))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?,
        };
        let now = now_ms();
        let mut out = Vec::new();
        for k in kinds {
            let set = self.key(&["svcs", &k]);
            let (ids,): (Vec<String>,) = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&set)
                .arg("-inf")
                .arg(now)
                .ignore()
                .cmd("ZRANGE")
                .arg(&set)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if ids.is_empty() {
                continue;
            }
            let keys: Vec<String> = ids.iter().map(|id| self.key(&["svc", &k, id])).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            out.extend(
                values
                    .into_iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_str::<ServiceEntry>(&v).ok()),
            );
        }
        out.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
        Ok(out)
    }

    async fn add_session(
        &self,
        session: &SessionEntry,
        ttl: Duration,
    ) -> Result<usize, RegistryError> {
        let key = self.key(&["sess", &session.user_id]);
        let now = now_ms();
        let expiry = now + i64::try_from(ms(ttl)).unwrap_or(i64::MAX / 2);
        let (count,): (usize,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZADD")
            .arg(&key)
            .arg(expiry)
            .arg(format!("{}|{}", session.session_id, session.edge_id))
            .ignore()
            .cmd("ZCARD")
            .arg(&key)
            // The key lives as long as its longest-lived session: set a TTL
            // when it has none, else only ever extend it.
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ms(ttl))
            .arg("NX")
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ms(ttl))
            .arg("GT")
            .ignore()
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(count)
    }

    async fn remove_session(&self, session: &SessionEntry) -> Result<usize, RegistryError> {
        let key = self.key(&["sess", &session.user_id]);
        let (count,): (usize,) = redis::pipe()
            .cmd("ZREM")
            .arg(&key)
            .arg(format!("{}|{}", session.session_id, session.edge_id))
            .ignore()
            .cmd("SET")
            .arg(self.key(&["gone", &session.session_id]))
            .arg(1)
            .arg("PX")
            .arg(ms(GONE_TTL))
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms())
            .ignore()
            .cmd("ZCARD")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(count)
    }

    async fn refresh_sessions(
        &self,
        sessions: &[SessionEntry],
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let expiry = now_ms() + i64::try_from(ms(ttl)).unwrap_or(i64::MAX / 2);
        let script = redis::Script::new(REFRESH);
        // Bounded script runs: a big edge refreshes in chunks.
        for chunk in sessions.chunks(500) {
            let mut invocation = script.prepare_invoke();
            invocation.arg(&self.prefix).arg(expiry).arg(ms(ttl));
            for s in chunk {
                invocation
                    .arg(&s.user_id)
                    .arg(&s.session_id)
                    .arg(&s.edge_id);
            }
            invocation
                .invoke_async::<i64>(&mut self.conn())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn sessions_of(&self, users: &[String]) -> Result<Vec<SessionEntry>, RegistryError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.key(&["sess", u]))
                .arg(now)
                .arg("+inf");
        }
        let members: Vec<Vec<String>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(users
            .iter()
            .zip(members)
            .flat_map(|(u, ms)| ms.into_iter().filter_map(move |m| parse_session(u, &m)))
            .collect())
    }

    async fn set_presence(&self, record: &PresenceRecord) -> Result<(), RegistryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.key(&["pres", &record.user_id]))
            .arg(format!("{}|{}", record.status, record.last_seen_ms))
            .ignore();
        let present = self.key(&["present"]);
        if record.status == "offline" {
            pipe.cmd("SREM").arg(present).arg(&record.user_id).ignore();
        } else {
            pipe.cmd("SADD").arg(present).arg(&record.user_id).ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn presence_of(&self, users: &[String]) -> Result<Vec<PresenceRecord>, RegistryError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|u| self.key(&["pres", u])).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(users
            .iter()
            .zip(values)
            .filter_map(|(u, v)| parse_presence(u, &v?))
            .collect())
    }

    async fn present_users(&self) -> Result<Vec<PresenceRecord>, RegistryError> {
        let users: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key(&["present"]))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut out = self.presence_of(&users).await?;
        out.retain(|p| p.status != "offline");
        Ok(out)
    }

    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, RegistryError> {
        redis::cmd("SET")
            .arg(self.key(&["claim", key]))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ms(ttl))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn settle(&self, key: &str, value: &str, ttl: Duration) -> Result<(), RegistryError> {
        redis::cmd("SET")
            .arg(self.key(&["claim", key]))
            .arg(value)
            .arg("PX")
            .arg(ms(ttl))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn renew_if(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, RegistryError> {
        // Compare and extend in one step, on the server.
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
             else return 0 end",
        );
        let renewed: i64 = script
            .key(self.key(&["claim", key]))
            .arg(value)
            .arg(ms(ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(renewed == 1)
    }

    async fn release(&self, key: &str) -> Result<(), RegistryError> {
        redis::cmd("DEL")
            .arg(self.key(&["claim", key]))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn release_if(&self, key: &str, value: &str) -> Result<bool, RegistryError> {
        // Compare and delete in one step, on the server.
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               return redis.call('DEL', KEYS[1]) \
             else return 0 end",
        );
        let dropped: i64 = script
            .key(self.key(&["claim", key]))
            .arg(value)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(dropped == 1)
    }

    async fn rate_limit(
        &self,
        key: &str,
        limit: u64,
        period: Duration,
    ) -> Result<Decision, RegistryError> {
        let gcra = Gcra::new(limit, period);
        let retry_ms: u64 = redis::Script::new(GCRA)
            .key(self.key(&["rate", key]))
            .arg(gcra.interval_ms)
            .arg(gcra.tolerance_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(if retry_ms == 0 {
            Decision::Allowed
        } else {
            Decision::Limited {
                retry_after: Duration::from_millis(retry_ms),
            }
        })
    }

    async fn ping(&self) -> Result<(), RegistryError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn epoch(&self) -> Result<String, RegistryError> {
        // The marker tells a wipe (FLUSHALL, a key eviction) that keeps the
        // server; run_id a restart, also one that reloaded a snapshot with
        // the marker in it (the snapshot misses what came after it).
        let fresh = crate::ids::new_session_id();
        let (held, info): (Option<String>, String) = redis::pipe()
            .cmd("SET")
            .arg(self.key(&["epoch"]))
            .arg(&fresh)
            .arg("NX")
            .arg("GET")
            .cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap_or_default()
            .trim();
        // None: there was no marker and this call wrote `fresh`.
        let marker = held.unwrap_or(fresh);
        Ok(format!("{run_id}/{marker}"))
    }
}
