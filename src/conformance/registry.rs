//! What every [`Registry`] must do.

use super::{eventually, unique};
use crate::registry::{PresenceRecord, Registry, ServiceEntry, SessionEntry};
use std::sync::Arc;
use std::time::Duration;

/// Every check of this module that takes a registry, listed once: a
/// backend's test module stamps them out with
/// `parley::registry_checks!(check)`, which expands to `check!(name);` for
/// each (see `tests/conformance.rs`). A backend that cannot pass one
/// matches that name first in its own `check!` and says why.
/// ([`a_loss_of_data_changes_the_epoch_and_wakes_watchers`] takes a way to
/// lose the registry's data, so each backend that can lose it calls it
/// itself.)
#[macro_export]
macro_rules! registry_checks {
    ($check:ident) => {
        $check!(services_register_and_expire);
        $check!(sessions_count_refresh_and_expire);
        $check!(presence_is_kept_per_user);
        $check!(claims_are_exclusive);
        $check!(claims_renew_only_for_their_holder);
        $check!(epoch_is_stable_while_the_data_lives);
        $check!(rate_limits_hold_in_every_window);
    };
}

fn entry(kind: &str, id: &str) -> ServiceEntry {
    ServiceEntry {
        kind: kind.to_owned(),
        id: id.to_owned(),
        grpc_addr: "127.0.0.1:1".into(),
        http_addr: None,
        started_at_ms: 1,
        load: 0,
    }
}

/// Instances are listed by kind, refreshed, deregistered, and expire.
pub async fn services_register_and_expire(registry: Arc<dyn Registry>) {
    let kind = unique("kind");
    let long = Duration::from_secs(30);
    registry
        .register_service(&entry(&kind, "a"), long)
        .await
        .unwrap();
    registry
        .register_service(&entry(&kind, "b"), Duration::from_millis(300))
        .await
        .unwrap();
    let ids = |list: Vec<ServiceEntry>| list.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let listed = ids(registry.services(Some(&kind)).await.unwrap());
    assert_eq!(listed, ["a", "b"]);
    assert!(
        registry
            .services(None)
            .await
            .unwrap()
            .iter()
            .any(|e| e.kind == kind)
    );
    eventually("b expires", || async {
        ids(registry.services(Some(&kind)).await.unwrap()) == ["a"]
    })
    .await;
    registry.deregister_service(&kind, "a").await.unwrap();
    assert!(registry.services(Some(&kind)).await.unwrap().is_empty());
}

/// Sessions count per user, can be refreshed, and expire on their own.
pub async fn sessions_count_refresh_and_expire(registry: Arc<dyn Registry>) {
    let user = unique("u");
    let s = |id: &str| SessionEntry {
        session_id: id.to_owned(),
        user_id: user.clone(),
        edge_id: "edge-1".into(),
    };
    let short = Duration::from_millis(300);
    assert_eq!(
        registry
            .add_session(&s("1"), Duration::from_secs(30))
            .await
            .unwrap(),
        1
    );
    assert_eq!(registry.add_session(&s("2"), short).await.unwrap(), 2);
    let mut live = registry
        .sessions_of(std::slice::from_ref(&user))
        .await
        .unwrap();
    live.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    assert_eq!(live, [s("1"), s("2")]);
    eventually("session 2 expires", || async {
        registry
            .sessions_of(std::slice::from_ref(&user))
            .await
            .unwrap()
            == [s("1")]
    })
    .await;
    registry
        .refresh_sessions(&[s("2")], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        registry
            .sessions_of(std::slice::from_ref(&user))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(registry.remove_session(&s("1")).await.unwrap(), 1);
    assert_eq!(registry.remove_session(&s("2")).await.unwrap(), 0);
    assert!(
        registry
            .sessions_of(std::slice::from_ref(&user))
            .await
            .unwrap()
            .is_empty()
    );
    // A heartbeat that raced the close does not bring the session back.
    registry
        .refresh_sessions(&[s("1")], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(registry.sessions_of(&[user]).await.unwrap().is_empty());
}

pub async fn presence_is_kept_per_user(registry: Arc<dyn Registry>) {
    let (a, b) = (unique("u"), unique("u"));
    let record = PresenceRecord {
        user_id: a.clone(),
        status: "away".into(),
        last_seen_ms: 42,
    };
    registry.set_presence(&record).await.unwrap();
    assert_eq!(
        registry.presence_of(&[a.clone(), b]).await.unwrap(),
        std::slice::from_ref(&record)
    );
    assert!(registry.present_users().await.unwrap().contains(&record));
    let offline = PresenceRecord {
        status: "offline".into(),
        ..record
    };
    registry.set_presence(&offline).await.unwrap();
    assert!(
        !registry
            .present_users()
            .await
            .unwrap()
            .iter()
            .any(|p| p.user_id == a)
    );
}

/// A claim holds until released or expired; the holder's value is answered.
pub async fn claims_are_exclusive(registry: Arc<dyn Registry>) {
    let key = unique("claim");
    let ttl = Duration::from_secs(30);
    assert_eq!(registry.claim(&key, "first", ttl).await.unwrap(), None);
    assert_eq!(
        registry
            .claim(&key, "second", ttl)
            .await
            .unwrap()
            .as_deref(),
        Some("first")
    );
    registry.settle(&key, "settled", ttl).await.unwrap();
    assert_eq!(
        registry
            .claim(&key, "second", ttl)
            .await
            .unwrap()
            .as_deref(),
        Some("settled")
    );
    // Only the holder's token releases it.
    assert!(!registry.release_if(&key, "not-mine").await.unwrap());
    assert!(registry.release_if(&key, "settled").await.unwrap());
    assert!(!registry.release_if(&key, "settled").await.unwrap());
    assert_eq!(registry.claim(&key, "again", ttl).await.unwrap(), None);
    registry.release(&key).await.unwrap();
    assert_eq!(
        registry
            .claim(&key, "third", Duration::from_millis(200))
            .await
            .unwrap(),
        None
    );
    eventually("claim expires", || async {
        registry.claim(&key, "fourth", ttl).await.unwrap().is_none()
    })
    .await;
}

/// A claim renewed by its holder is a lease: it outlives its first TTL for
/// as long as the holder renews it, no one else can renew it, and once the
/// holder stops it lapses and the key can be claimed again (a chat-svc
/// killed with a publish in flight must not block resends for long).
pub async fn claims_renew_only_for_their_holder(registry: Arc<dyn Registry>) {
    let key = unique("lease");
    let lease = Duration::from_millis(600);
    assert_eq!(registry.claim(&key, "holder", lease).await.unwrap(), None);
    // Renewed past three first TTLs: still held.
    let until = tokio::time::Instant::now() + lease * 3;
    while tokio::time::Instant::now() < until {
        assert!(registry.renew_if(&key, "holder", lease).await.unwrap());
        assert!(!registry.renew_if(&key, "other", lease).await.unwrap());
        tokio::time::sleep(lease / 4).await;
    }
    assert_eq!(
        registry
            .claim(&key, "resend", lease)
            .await
            .unwrap()
            .as_deref(),
        Some("holder")
    );
    // The holder stops renewing: the claim lapses and goes to a resend,
    // which the old holder cannot renew or bring back.
    eventually("an unrenewed lease lapses", || async {
        registry
            .claim(&key, "resend", lease)
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(!registry.renew_if(&key, "holder", lease).await.unwrap());
    assert!(registry.renew_if(&key, "resend", lease).await.unwrap());
    // A renewal never creates a claim that is not there.
    let absent = unique("lease");
    assert!(!registry.renew_if(&absent, "holder", lease).await.unwrap());
    assert_eq!(registry.claim(&absent, "first", lease).await.unwrap(), None);
}

/// The epoch stays the same while the registry keeps its data, and a
/// watcher of it stays quiet.
pub async fn epoch_is_stable_while_the_data_lives(registry: Arc<dyn Registry>) {
    let mut restarts = crate::registry::watch::Restarts::watch(&registry);
    let first = registry.epoch().await.unwrap();
    assert!(!first.is_empty());
    registry
        .register_service(&entry(&unique("kind"), "a"), Duration::from_secs(30))
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(crate::registry::watch::POLL).await;
        assert_eq!(registry.epoch().await.unwrap(), first);
    }
    assert!(
        tokio::time::timeout(crate::registry::watch::POLL * 3, restarts.changed())
            .await
            .is_err(),
        "a registry that kept its data was reported restarted"
    );
    assert_eq!(restarts.count(), 0);
}

/// Once the registry's data is lost (`lose_data`: a wipe or a restart of
/// the server), the epoch is another and watchers are woken within a poll
/// or two, so instances and sessions can be written again at once.
pub async fn a_loss_of_data_changes_the_epoch_and_wakes_watchers<F, Fut>(
    registry: Arc<dyn Registry>,
    lose_data: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut restarts = crate::registry::watch::Restarts::watch(&registry);
    let before = registry.epoch().await.unwrap();
    // Let the watcher read the epoch before the loss.
    tokio::time::sleep(crate::registry::watch::POLL * 2).await;
    lose_data().await;
    let lost_at = tokio::time::Instant::now();
    tokio::time::timeout(super::PATIENCE, restarts.changed())
        .await
        .expect("the watcher never noticed the loss of data");
    let noticed = lost_at.elapsed();
    assert!(
        noticed <= crate::registry::watch::POLL * 3,
        "noticed {noticed:?} after the loss"
    );
    assert_eq!(restarts.count(), 1);
    let after = registry.epoch().await.unwrap();
    assert_ne!(after, before);
    assert_eq!(
        registry.epoch().await.unwrap(),
        after,
        "the new epoch holds"
    );
}

/// A rate limit admits at most `limit` events in every window of its
/// period, also in one that straddles a whole multiple of the period
/// (where a fixed window aligned to the clock starts again and admits a
/// second `limit` at once); it admits a burst at once, answers how long to
/// wait when it refuses, and keeps keys apart.
pub async fn rate_limits_hold_in_every_window(registry: Arc<dyn Registry>) {
    use crate::registry::Decision;
    use tokio::time::Instant;
    let key = unique("rate");
    let other = unique("rate");
    let limit = 10;
    let period = Duration::from_millis(1000);
    // Start 200 ms before a whole second of the wall clock, where the old
    // fixed windows began.
    let into = u64::try_from(crate::time::now_ms().rem_euclid(1000)).unwrap();
    tokio::time::sleep(Duration::from_millis((1800 - into) % 1000)).await;

    // Each admitted event as (asked at, answered at): the registry decided
    // somewhere in between, on its own clock.
    let mut admitted: Vec<(Instant, Instant)> = Vec::new();
    let mut refused = 0;
    let end = Instant::now() + period * 5 / 2;
    while Instant::now() < end {
        let asked = Instant::now();
        match registry.rate_limit(&key, limit, period).await.unwrap() {
            Decision::Allowed => admitted.push((asked, Instant::now())),
            Decision::Limited { retry_after } => {
                refused += 1;
                assert!(retry_after > Duration::ZERO, "{retry_after:?}");
                assert!(retry_after <= period, "{retry_after:?}");
                // Hammer again soon: several sockets would not wait.
                tokio::time::sleep(retry_after.min(Duration::from_millis(5))).await;
            }
        }
    }
    assert!(refused > 0, "never limited");
    // A burst goes through at once...
    let burst = usize::try_from(limit.div_ceil(2)).unwrap();
    assert!(admitted.len() > burst, "{}", admitted.len());
    let first_burst = admitted[burst - 1].1 - admitted[0].0;
    assert!(first_burst < period / 2, "burst took {first_burst:?}");
    // ...and the rest of the limit is used over time, but no `limit + 1`
    // admitted events fit in one period: even counting from when the first
    // was asked to when the last was answered, they span at least a period.
    let n = usize::try_from(limit).unwrap();
    assert!(admitted.len() >= n + burst, "{}", admitted.len());
    for run in admitted.windows(n + 1) {
        let span = run[n].1 - run[0].0;
        assert!(span >= period, "{} events admitted within {span:?}", n + 1);
    }
    // Another key has its own allowance.
    assert_eq!(
        registry.rate_limit(&other, limit, period).await.unwrap(),
        Decision::Allowed
    );
}
