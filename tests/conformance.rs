#![allow(clippy::unwrap_used)]

//! The backend conformance suite stamped out for the embedded backends,
//! and for the real ones when `KAFKA_BROKERS`, `REDIS_URL` and
//! `MONGODB_URL` name them (`scripts/test` sets them; each is skipped,
//! saying so, when unset, unless `PARLEY_REQUIRE_REAL_BACKENDS` is set).

use parley::bus::EventBus;
use parley::bus::embedded::EmbeddedBus;
use parley::conformance::{bus, registry, store, unique};
use parley::registry::Registry;
use parley::registry::memory::MemoryRegistry;
use parley::store::embedded::EmbeddedStore;
use parley::store::{Store, StoreError};
use std::path::PathBuf;
use std::sync::Arc;

/// A check this backend cannot pass, marked with the reason: listed as
/// ignored (`cargo test -- --ignored` runs nothing for it) rather than
/// dropped from the list without a word.
macro_rules! cannot {
    ($name:ident, $reason:literal) => {
        #[test]
        #[ignore = $reason]
        fn $name() {}
    };
}

fn embedded_bus(dir: PathBuf) -> impl Fn() -> std::future::Ready<Arc<dyn EventBus>> {
    move || std::future::ready(Arc::new(EmbeddedBus::open(&dir, 8).unwrap()) as Arc<dyn EventBus>)
}

fn embedded_store(dir: PathBuf) -> impl Fn() -> std::future::Ready<Arc<dyn Store>> {
    move || std::future::ready(Arc::new(EmbeddedStore::open(&dir).unwrap()) as Arc<dyn Store>)
}

mod embedded_bus_checks {
    use super::*;
    macro_rules! check {
        ($name:ident) => {
            #[tokio::test]
            async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                bus::$name(embedded_bus(dir.path().to_path_buf())().await).await;
            }
        };
    }
    parley::bus_checks!(check);

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        bus::survives_reopen(embedded_bus(dir.path().to_path_buf())).await;
    }

    #[tokio::test]
    async fn continues_after_trim_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        bus::continues_after_trim_and_reopen(embedded_bus(dir.path().to_path_buf())).await;
    }
}

mod memory_registry_checks {
    use super::*;
    macro_rules! check {
        ($name:ident) => {
            #[tokio::test]
            async fn $name() {
                registry::$name(Arc::new(MemoryRegistry::new()) as Arc<dyn Registry>).await;
            }
        };
    }
    parley::registry_checks!(check);
}

mod embedded_store_checks {
    use super::*;
    macro_rules! check {
        ($name:ident) => {
            #[tokio::test]
            async fn $name() {
                let dir = tempfile::tempdir().unwrap();
                store::$name(embedded_store(dir.path().to_path_buf())().await).await;
            }
        };
    }
    parley::store_checks!(check);

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
        (counts_uncommitted_records) => {
            cannot!(
                counts_uncommitted_records,
                "`EventBus::uncommitted` is answered only where the bus can from memory; the Kafka bus answers None (the sequencer start-up gate then does not wait for a replay, see `sequencer::replayed`, which matters only beside the embedded store)"
            );
        };
        ($name:ident) => {
            #[tokio::test]
            async fn $name() {
                let Some(brokers) = real("KAFKA_BROKERS") else { return };
                let prefix = format!("{}.", random("t"));
                bus::$name(open(&brokers, &prefix).await).await;
            }
        };
    }
    parley::bus_checks!(check);

    #[tokio::test]
    async fn survives_reopen() {
        let Some(brokers) = real("KAFKA_BROKERS") else {
            return;
        };
        let prefix = format!("{}.", random("t"));
        bus::survives_reopen(|| open(&brokers, &prefix)).await;
    }

    #[tokio::test]
    async fn continues_after_trim_and_reopen() {
        let Some(brokers) = real("KAFKA_BROKERS") else {
            return;
        };
        let prefix = format!("{}.", random("t"));
        bus::continues_after_trim_and_reopen(|| open(&brokers, &prefix)).await;
    }
}

mod redis_registry_checks {
    use super::*;
    use parley::registry::redis::RedisRegistry;

    macro_rules! check {
        ($name:ident) => {
            #[tokio::test]
            async fn $name() {
                let Some(url) = real("REDIS_URL") else { return };
                let registry = RedisRegistry::connect(&url, &random("test")).await.unwrap();
                registry::$name(Arc::new(registry) as Arc<dyn Registry>).await;
            }
        };
    }
    parley::registry_checks!(check);

    /// The prefix's keys deleted behind the registry's back, as a Redis
    /// restart without persistence (or a FLUSHALL) loses them; a restart of
    /// the server itself is checked by the fault tests.
    #[tokio::test]
    async fn a_loss_of_data_changes_the_epoch_and_wakes_watchers() {
        let Some(url) = real("REDIS_URL") else { return };
        let prefix = random("test");
        let registry = RedisRegistry::connect(&url, &prefix).await.unwrap();
        registry::a_loss_of_data_changes_the_epoch_and_wakes_watchers(
            Arc::new(registry) as Arc<dyn Registry>,
            || async {
                let client = redis::Client::open(url.as_str()).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}:*"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(!keys.is_empty(), "the registry wrote no keys");
                let _: () = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            },
        )
        .await;
    }
}

mod mongo_store_checks {
    use super::*;
    use parley::store::mongo::MongoStore;

    async fn open(url: &str, database: &str) -> Arc<dyn Store> {
        Arc::new(MongoStore::connect(url, Some(database)).await.unwrap())
    }

    macro_rules! check {
        (concurrent_group_changes_keep_the_limit) => {
            cannot!(
                concurrent_group_changes_keep_the_limit,
                "FerretDB 1.x applies a filtered update by rewriting the whole document, not atomically, so concurrent changes of one group can overwrite each other; chat-svc serializes them with a registry lock (`Chat::lock_group`), tested through the whole system"
            );
        };
        ($name:ident) => {
            #[tokio::test]
            async fn $name() {
                let Some(url) = real("MONGODB_URL") else { return };
                store::$name(open(&url, &random("test")).await).await;
            }
        };
    }
    parley::store_checks!(check);

    #[tokio::test]
    async fn survives_reopen() {
        let Some(url) = real("MONGODB_URL") else {
            return;
        };
        let database = random("test");
        store::survives_reopen(|| open(&url, &database)).await;
    }

    /// A store on a fresh database, and a plain client of that database to
    /// set up what a crash leaves behind.
    async fn open_with_raw(url: &str) -> (Arc<dyn Store>, mongodb::Database) {
        let database = random("test");
        let store = open(url, &database).await;
        let raw = mongodb::Client::with_uri_str(url)
            .await
            .unwrap()
            .database(&database);
        (store, raw)
    }

    /// Appends write a message's key, then the message, then (after the
    /// append answers) `last_seq`, with no transaction: each state a crash
    /// can leave between two of those writes is completed by the next
    /// append (the replay).
    #[tokio::test]
    async fn interrupted_appends_are_completed() {
        use mongodb::bson::doc;
        let Some(url) = real("MONGODB_URL") else {
            return;
        };
        let (store, raw) = open_with_raw(&url).await;
        // `last_seq` is kept in `seqs`, apart from the member list.
        let seqs = raw.collection::<mongodb::bson::Document>("seqs");
        let messages = raw.collection::<mongodb::bson::Document>("messages");
        let (a, b, c) = (unique("a"), unique("b"), unique("c"));
        store.ensure_direct(&c, &a, &b, 1).await.unwrap();
        let m = |n: &str| store::message(&c, &a, n);
        store.append_messages(&[m("1"), m("2")]).await.unwrap();
        // The raise is written after the append answers; waited for, so
        // the crash state below is not overwritten by it.
        store.sync().await.unwrap();

        // Stopped after the messages, before `last_seq` was raised.
        let lowered = seqs
            .update_one(doc! {"_id": &c}, doc! {"$set": {"last_seq": 0_i64}})
            .await
            .unwrap();
        assert_eq!(lowered.modified_count, 1, "no crash state was set up");
        // A crash loses what the process held in memory: a new handle.
        let store = open(&url, raw.name()).await;
        let third = store.append_messages(&[m("3")]).await.unwrap();
        assert_eq!((third[0].message.seq, third[0].fresh), (3, true));

        // Stopped after the key of 4, before the message: the replay
        // writes it at the seq its key reserved, with its id.
        let four = m("4");
        store
            .append_messages(std::slice::from_ref(&four))
            .await
            .unwrap();
        store.sync().await.unwrap();
        messages.delete_one(doc! {"id": &four.id}).await.unwrap();
        let lowered = seqs
            .update_one(doc! {"_id": &c}, doc! {"$set": {"last_seq": 3_i64}})
            .await
            .unwrap();
        assert_eq!(lowered.modified_count, 1, "no crash state was set up");
        let store = open(&url, raw.name()).await;
        assert_eq!(store.message_by_client_id(&a, "4").await.unwrap(), None);
        let replay = store
            .append_messages(&[four.clone(), m("5")])
            .await
            .unwrap();
        let got: Vec<(u64, bool)> = replay.iter().map(|r| (r.message.seq, r.fresh)).collect();
        assert_eq!(got, [(4, true), (5, true)]);
        assert_eq!(replay[0].message.id, four.id);

        let history = store.messages_after(&c, 0, 100).await.unwrap();
        let bodies: Vec<(u64, &str)> = history
            .iter()
            .map(|h| (h.seq, h.client_msg_id.as_str()))
            .collect();
        assert_eq!(bodies, [(1, "1"), (2, "2"), (3, "3"), (4, "4"), (5, "5")]);
        assert_eq!(messages.count_documents(doc! {}).await.unwrap(), 5);
        assert_eq!(store.conversation(&c).await.unwrap().unwrap().last_seq, 5);

        // Keys that do not match their seq (only a second writer of the
        // conversation leaves them): the message gets a new seq, the key is
        // rewritten, nothing is lost. One points at another message; one
        // reserves a seq a new message of the same batch takes first.
        let keys = raw.collection::<mongodb::bson::Document>("message_keys");
        for (client_msg_id, seq) in [("stale", 2_i64), ("late", 7_i64)] {
            keys.insert_one(
                doc! {"_id": format!("{a}|{client_msg_id}"), "conversation_id": &c, "seq": seq},
            )
            .await
            .unwrap();
        }
        let stale = store.append_messages(&[m("stale")]).await.unwrap();
        assert_eq!((stale[0].message.seq, stale[0].fresh), (6, true));
        let both = store
            .append_messages(&[m("first"), m("late")])
            .await
            .unwrap();
        let got: Vec<(u64, bool)> = both.iter().map(|r| (r.message.seq, r.fresh)).collect();
        assert_eq!(got, [(7, true), (8, true)]);
        for (client_msg_id, seq) in [("stale", 6), ("first", 7), ("late", 8)] {
            let found = store.message_by_client_id(&a, client_msg_id).await.unwrap();
            assert_eq!(found.map(|f| f.seq), Some(seq), "{client_msg_id}");
        }
        assert_eq!(messages.count_documents(doc! {}).await.unwrap(), 8);
    }

    /// The partition moved away and back: the process that wrote the
    /// conversation first holds a last seq that is too low by now. Its next
    /// append is refused (the seq is taken) and the retry finds the store's
    /// seq: nothing overwritten, seqs dense.
    #[tokio::test]
    async fn a_stale_held_seq_costs_a_retry_not_a_seq() {
        let Some(url) = real("MONGODB_URL") else {
            return;
        };
        let (first, raw) = open_with_raw(&url).await;
        let second = open(&url, raw.name()).await;
        let (a, b, c) = (unique("a"), unique("b"), unique("c"));
        first.ensure_direct(&c, &a, &b, 1).await.unwrap();
        let m = |n: &str| store::message(&c, &a, n);
        first.append_messages(&[m("1"), m("2")]).await.unwrap();
        second.append_messages(&[m("3")]).await.unwrap();
        let refused = first.append_messages(&[m("4")]).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "a taken seq must refuse the append, got {refused:?}"
        );
        // Its key, planned at the taken seq, must not pass for the message
        // stored there (a resend would be answered with another message).
        assert_eq!(first.message_by_client_id(&a, "4").await.unwrap(), None);
        assert_eq!(second.message_by_client_id(&a, "4").await.unwrap(), None);
        let retried = first.append_messages(&[m("4")]).await.unwrap();
        assert_eq!((retried[0].message.seq, retried[0].fresh), (4, true));
        let history = second.messages_after(&c, 0, 100).await.unwrap();
        let got: Vec<(u64, &str)> = history
            .iter()
            .map(|h| (h.seq, h.client_msg_id.as_str()))
            .collect();
        assert_eq!(got, [(1, "1"), (2, "2"), (3, "3"), (4, "4")]);
    }

    /// A replay after a restart: the first batch finds only messages
    /// stored already (seqs 1 and 2 of 3). Their seqs say nothing about the
    /// conversation's last one, so the next new message still gets 4; a
    /// process that held 2 planned 3 on every retry and stalled its
    /// partition for good.
    #[tokio::test]
    async fn replayed_duplicates_do_not_lower_the_next_seq() {
        let Some(url) = real("MONGODB_URL") else {
            return;
        };
        let (before, raw) = open_with_raw(&url).await;
        let (a, b, c) = (unique("a"), unique("b"), unique("c"));
        before.ensure_direct(&c, &a, &b, 1).await.unwrap();
        let m = |n: &str| store::message(&c, &a, n);
        before
            .append_messages(&[m("1"), m("2"), m("3")])
            .await
            .unwrap();
        let after = open(&url, raw.name()).await;
        let replay = after.append_messages(&[m("1"), m("2")]).await.unwrap();
        let got: Vec<(u64, bool)> = replay.iter().map(|r| (r.message.seq, r.fresh)).collect();
        assert_eq!(got, [(1, false), (2, false)]);
        let next = after.append_messages(&[m("4")]).await;
        assert!(
            matches!(&next, Ok(n) if n[0].message.seq == 4 && n[0].fresh),
            "the next message must get seq 4 at once, got {next:?}"
        );
    }

    /// The id keys and `last_seq` an append leaves to be written after it
    /// answers, lost (a crash before they were written, or given up): every
    /// read still finds every message, and the next append the next seq.
    #[tokio::test]
    async fn messages_are_found_without_their_indexes() {
        use mongodb::bson::doc;
        let Some(url) = real("MONGODB_URL") else {
            return;
        };
        let (store, raw) = open_with_raw(&url).await;
        let (a, b, c) = (unique("a"), unique("b"), unique("c"));
        store.ensure_direct(&c, &a, &b, 1).await.unwrap();
        let m = |n: &str| store::message(&c, &a, n);
        let mut sent = Vec::new();
        for batch in [["1", "2", "3"], ["4", "5", "6"], ["7", "8", "9"]] {
            let batch: Vec<_> = batch.iter().map(|n| m(n)).collect();
            store.append_messages(&batch).await.unwrap();
            sent.extend(batch);
        }
        store.sync().await.unwrap();
        let seqs = raw.collection::<mongodb::bson::Document>("seqs");
        let keys = raw.collection::<mongodb::bson::Document>("message_keys");
        let dropped = seqs.delete_one(doc! {"_id": &c}).await.unwrap();
        assert_eq!(dropped.deleted_count, 1, "no crash state was set up");
        let dropped = keys
            .delete_many(doc! {"_id": {"$regex": "^id:"}})
            .await
            .unwrap();
        assert_eq!(dropped.deleted_count, 9, "no crash state was set up");

        // Another process, which holds nothing in memory.
        let reader = open(&url, raw.name()).await;
        let conversation = reader.conversation(&c).await.unwrap().unwrap();
        assert_eq!(conversation.last_seq, 9);
        let after: Vec<u64> = reader
            .messages_after(&c, 3, 100)
            .await
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(after, [4, 5, 6, 7, 8, 9]);
        let before: Vec<u64> = reader
            .messages_before(&c, 0, 2)
            .await
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect();
        assert_eq!(before, [8, 9]);
        let found = reader.message_by_id(&c, &sent[6].id).await.unwrap();
        assert_eq!(found.map(|f| f.seq), Some(7));
        let next = reader.append_messages(&[m("10")]).await.unwrap();
        assert_eq!((next[0].message.seq, next[0].fresh), (10, true));
    }

    /// A resend in the middle of a batch of new messages: the guess that
    /// every key is new fails after the other keys were inserted, and the
    /// checked append must still hand out dense seqs.
    #[tokio::test]
    async fn a_resend_among_new_messages_leaves_no_gap() {
        let Some(url) = real("MONGODB_URL") else {
            return;
        };
        let (store, _raw) = open_with_raw(&url).await;
        let (a, b, c) = (unique("a"), unique("b"), unique("c"));
        store.ensure_direct(&c, &a, &b, 1).await.unwrap();
        let m = |n: &str| store::message(&c, &a, n);
        let resent = m("resent");
        store
            .append_messages(std::slice::from_ref(&resent))
            .await
            .unwrap();
        let batch = store
            .append_messages(&[m("x"), resent.clone(), m("y")])
            .await
            .unwrap();
        let got: Vec<(u64, bool)> = batch.iter().map(|r| (r.message.seq, r.fresh)).collect();
        assert_eq!(got, [(2, true), (1, false), (3, true)]);
        let history = store.messages_after(&c, 0, 100).await.unwrap();
        let seqs: Vec<u64> = history.iter().map(|h| h.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        for (client_msg_id, seq) in [("x", 2), ("y", 3)] {
            let found = store.message_by_client_id(&a, client_msg_id).await.unwrap();
            assert_eq!(found.map(|f| f.seq), Some(seq), "{client_msg_id}");
        }
    }

    /// A login key lost between the account and its key is rebuilt.
    #[tokio::test]
    async fn lost_login_keys_are_rebuilt() {
        use mongodb::bson::doc;
        let Some(url) = real("MONGODB_URL") else {
            return;
        };
        let (store, raw) = open_with_raw(&url).await;
        let keys = raw.collection::<mongodb::bson::Document>("user_keys");
        let record = store::record(&unique("u"));
        store.create_user(&record).await.unwrap();
        keys.delete_many(doc! {}).await.unwrap();
        let found = store.user_by_email(&record.email).await.unwrap();
        assert_eq!(found.map(|r| r.user), Some(record.user.clone()));
        assert_eq!(keys.count_documents(doc! {}).await.unwrap(), 1);
    }
}
