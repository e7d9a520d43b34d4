#![allow(clippy::unwrap_used)]

//! The backend conformance suite stamped out for the embedded backends.
//! The real backends run the same checks (see `parley::conformance`).

use parley::bus::EventBus;
use parley::bus::embedded::EmbeddedBus;
use parley::conformance::{bus, registry, store};
use parley::registry::Registry;
use parley::registry::memory::MemoryRegistry;
use parley::store::Store;
use parley::store::embedded::EmbeddedStore;
use std::path::PathBuf;
use std::sync::Arc;

fn embedded_bus(dir: PathBuf) -> impl Fn() -> std::future::Ready<Arc<dyn EventBus>> {
    move || std::future::ready(Arc::new(EmbeddedBus::open(&dir, 8).unwrap()) as Arc<dyn EventBus>)
}

fn embedded_store(dir: PathBuf) -> impl Fn() -> std::future::Ready<Arc<dyn Store>> {
    move || std::future::ready(Arc::new(EmbeddedStore::open(&dir).unwrap()) as Arc<dyn Store>)
}

mod embedded_bus_checks {
    use super::*;
    macro_rules! check {
        ($($name:ident),+) => {$(
            #[tokio::test]
            async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                bus::$name(embedded_bus(dir.path().to_path_buf())().await).await;
            }
        )+};
    }
    check!(
        keeps_order_per_key,
        resumes_after_the_last_commit,
        groups_are_independent,
        members_share_and_take_over
    );

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        bus::survives_reopen(embedded_bus(dir.path().to_path_buf())).await;
    }
}

mod memory_registry_checks {
    use super::*;
    macro_rules! check {
        ($($name:ident),+) => {$(
            #[tokio::test]
            async fn $name() {
                registry::$name(Arc::new(MemoryRegistry::new()) as Arc<dyn Registry>).await;
            }
        )+};
    }
    check!(
        services_register_and_expire,
        sessions_count_refresh_and_expire,
        presence_is_kept_per_user,
        claims_are_exclusive,
        counters_count_per_window
    );
}

mod embedded_store_checks {
    use super::*;
    macro_rules! check {
        ($($name:ident),+) => {$(
            #[tokio::test]
            async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                store::$name(embedded_store(dir.path().to_path_buf())().await).await;
            }
        )+};
    }
    check!(
        users_are_unique_and_found,
        appends_are_sequenced_and_idempotent,
        history_pages_by_seq,
        cursors_move_forward_only
    );

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        store::survives_reopen(embedded_store(dir.path().to_path_buf())).await;
    }
}

/// The real servers' addresses, when the run is meant to use them
/// (`scripts/test` starts them and sets these); `None` skips, saying so.
fn real(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var_os("PARLEY_REQUIRE_REAL_BACKENDS").is_none(),
                "{var} is not set but PARLEY_REQUIRE_REAL_BACKENDS is"
            );
            eprintln!("skipped: {var} is not set (scripts/test sets it)");
            None
        }
    }
}

fn random(prefix: &str) -> String {
    parley::conformance::unique(prefix).replace('-', "_")
}

mod kafka_bus_checks {
    use super::*;
    use parley::bus::kafka::KafkaBus;

    async fn open(brokers: &str, prefix: &str) -> Arc<dyn EventBus> {
        Arc::new(KafkaBus::connect(brokers, prefix, 4, 1).await.unwrap())
    }

    macro_rules! check {
        ($($name:ident),+) => {$(
            #[tokio::test]
            async fn $name() {
                let Some(brokers) = real("KAFKA_BROKERS") else { return };
                let prefix = format!("{}.", random("t"));
                bus::$name(open(&brokers, &prefix).await).await;
            }
        )+};
    }
    check!(
        keeps_order_per_key,
        resumes_after_the_last_commit,
        groups_are_independent,
        members_share_and_take_over
    );

    #[tokio::test]
    async fn survives_reopen() {
        let Some(brokers) = real("KAFKA_BROKERS") else {
            return;
        };
        let prefix = format!("{}.", random("t"));
        bus::survives_reopen(|| open(&brokers, &prefix)).await;
    }
}

mod redis_registry_checks {
    use super::*;
    use parley::registry::redis::RedisRegistry;

    macro_rules! check {
        ($($name:ident),+) => {$(
            #[tokio::test]
            async fn $name() {
                let Some(url) = real("REDIS_URL") else { return };
                let registry = RedisRegistry::connect(&url, &random("test")).await.unwrap();
                registry::$name(Arc::new(registry) as Arc<dyn Registry>).await;
            }
        )+};
    }
    check!(
        services_register_and_expire,
        sessions_count_refresh_and_expire,
        presence_is_kept_per_user,
        claims_are_exclusive,
        counters_count_per_window
    );
}

mod mongo_store_checks {
    use super::*;
    use parley::store::mongo::MongoStore;

    async fn open(url: &str, database: &str) -> Arc<dyn Store> {
        Arc::new(MongoStore::connect(url, Some(database)).await.unwrap())
    }

    macro_rules! check {
        ($($name:ident),+) => {$(
            #[tokio::test]
            async fn $name() {
                let Some(url) = real("MONGODB_URL") else { return };
                store::$name(open(&url, &random("test")).await).await;
            }
        )+};
    }
    check!(
        users_are_unique_and_found,
        appends_are_sequenced_and_idempotent,
        history_pages_by_seq,
        cursors_move_forward_only
    );

    #[tokio::test]
    async fn survives_reopen() {
        let Some(url) = real("MONGODB_URL") else {
            return;
        };
        let database = random("test");
        store::survives_reopen(|| open(&url, &database)).await;
    }
}
