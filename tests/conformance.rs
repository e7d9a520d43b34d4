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
        claims_are_exclusive
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
