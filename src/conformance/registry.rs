//! What every [`Registry`] must do.

use super::{eventually, unique};
use crate::registry::{PresenceRecord, Registry, ServiceEntry, SessionEntry};
use std::sync::Arc;
use std::time::Duration;

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

/// Counters count per key within a window and start again in the next one.
pub async fn counters_count_per_window(registry: Arc<dyn Registry>) {
    let key = unique("rate");
    let other = unique("rate");
    let window = Duration::from_secs(3600);
    assert_eq!(registry.hit(&key, window).await.unwrap(), 1);
    assert_eq!(registry.hit(&key, window).await.unwrap(), 2);
    assert_eq!(registry.hit(&other, window).await.unwrap(), 1);
    // A short window: a later window counts from 1 again.
    let short = Duration::from_millis(200);
    let first = registry.hit(&key, short).await.unwrap();
    assert!(first >= 1);
    eventually("a new window starts", || async {
        registry.hit(&key, short).await.unwrap() == 1
    })
    .await;
}
