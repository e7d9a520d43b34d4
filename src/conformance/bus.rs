//! What every [`EventBus`] must do.

use super::{PATIENCE, unique};
use crate::bus::{EventBus, Record, Subscription, Topic};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Every check of this module that takes a bus, listed once: a backend's
/// test module stamps them out with `parley::bus_checks!(check)`, which
/// expands to `check!(name);` for each (see `tests/conformance.rs`). A
/// backend that cannot pass one matches that name first in its own
/// `check!` and says why. ([`survives_reopen`] and
/// [`continues_after_trim_and_reopen`] take a way to reopen the bus, so
/// each backend calls them itself.)
#[macro_export]
macro_rules! bus_checks {
    ($check:ident) => {
        $check!(keeps_order_per_key);
        $check!(resumes_after_the_last_commit);
        $check!(groups_are_independent);
        $check!(members_share_and_take_over);
        $check!(reports_consumer_lag);
        $check!(counts_uncommitted_records);
    };
}

async fn next(sub: &mut Box<dyn Subscription>) -> Vec<Record> {
    tokio::time::timeout(PATIENCE, sub.next_batch(100))
        .await
        .expect("no records in time")
        .unwrap()
}

/// Reads until `count` records with the given key prefix were seen.
async fn collect(sub: &mut Box<dyn Subscription>, prefix: &str, count: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < count {
        out.extend(
            next(sub)
                .await
                .into_iter()
                .filter(|r| r.key.starts_with(prefix)),
        );
    }
    out
}

async fn publish_many(bus: &dyn EventBus, prefix: &str, keys: usize, per_key: usize) {
    for i in 0..per_key {
        for k in 0..keys {
            bus.publish(
                Topic::ChatMessages,
                &format!("{prefix}-k{k}"),
                Bytes::from(format!("{i}")),
            )
            .await
            .unwrap();
        }
    }
}

/// Events of one key come out in the order they went in, from one partition.
pub async fn keeps_order_per_key(bus: Arc<dyn EventBus>) {
    let prefix = unique("order");
    let mut sub = bus
        .subscribe(&unique("g"), Topic::ChatMessages)
        .await
        .unwrap();
    publish_many(bus.as_ref(), &prefix, 5, 20).await;
    let records = collect(&mut sub, &prefix, 100).await;
    let mut by_key: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in &records {
        by_key.entry(r.key.as_str()).or_default().push(r);
    }
    assert_eq!(by_key.len(), 5);
    for (key, rs) in by_key {
        let payloads: Vec<String> = rs
            .iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(payloads, expected, "order broken for {key}");
        let partitions: HashSet<u32> = rs.iter().map(|r| r.partition).collect();
        assert_eq!(partitions.len(), 1, "{key} spread over partitions");
    }
}

/// Uncommitted records come again to the next member of the group; the
/// committed ones do not.
pub async fn resumes_after_the_last_commit(bus: Arc<dyn EventBus>) {
    let prefix = unique("resume");
    let group = unique("g");
    let key = format!("{prefix}-k");
    let mut sub = bus.subscribe(&group, Topic::ChatMessages).await.unwrap();
    for i in 0..10 {
        bus.publish(Topic::ChatMessages, &key, Bytes::from(format!("{i}")))
            .await
            .unwrap();
    }
    let records = collect(&mut sub, &prefix, 10).await;
    sub.commit(&records[..4]).await.unwrap();
    drop(sub);
    let mut again = bus.subscribe(&group, Topic::ChatMessages).await.unwrap();
    let replayed = collect(&mut again, &prefix, 6).await;
    let payloads: Vec<String> = replayed
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(payloads, ["4", "5", "6", "7", "8", "9"]);
}

/// Each group sees every event.
pub async fn groups_are_independent(bus: Arc<dyn EventBus>) {
    let prefix = unique("groups");
    let mut one = bus
        .subscribe(&unique("g1"), Topic::ChatMessages)
        .await
        .unwrap();
    let mut two = bus
        .subscribe(&unique("g2"), Topic::ChatMessages)
        .await
        .unwrap();
    publish_many(bus.as_ref(), &prefix, 3, 3).await;
    assert_eq!(collect(&mut one, &prefix, 9).await.len(), 9);
    assert_eq!(collect(&mut two, &prefix, 9).await.len(), 9);
}

/// Members of one group split the partitions; when one leaves without
/// committing, the other takes over its partitions from the last commit.
///
/// A real broker assigns partitions asynchronously after a member joins, so
/// the same 16 keys are published in rounds until both members have
/// received records of one round.
pub async fn members_share_and_take_over(bus: Arc<dyn EventBus>) {
    let prefix = unique("share");
    let group = unique("g");
    let mut first = bus.subscribe(&group, Topic::ChatMessages).await.unwrap();
    let mut second = bus.subscribe(&group, Topic::ChatMessages).await.unwrap();
    let mut committed_first: Vec<Record> = Vec::new();
    let mut keys_second: HashSet<String> = HashSet::new();
    for round in 0.. {
        assert!(round < 30, "the group never split its partitions");
        publish_many(bus.as_ref(), &prefix, 16, 1).await;
        let mut seen_first: Vec<Record> = Vec::new();
        let mut seen_second: Vec<Record> = Vec::new();
        while seen_first.len() + seen_second.len() < 16 {
            tokio::select! {
                batch = next(&mut first) => seen_first.extend(batch.into_iter().filter(|r| r.key.starts_with(&prefix))),
                batch = next(&mut second) => seen_second.extend(batch.into_iter().filter(|r| r.key.starts_with(&prefix))),
            }
        }
        first.commit(&seen_first).await.unwrap();
        committed_first.extend(seen_first.iter().cloned());
        if seen_first.is_empty() || seen_second.is_empty() {
            continue;
        }
        let keys_first: HashSet<&str> = seen_first.iter().map(|r| r.key.as_str()).collect();
        keys_second = seen_second.iter().map(|r| r.key.clone()).collect();
        assert!(
            keys_first.iter().all(|k| !keys_second.contains(*k)),
            "a key went to both members in one round"
        );
        break;
    }
    drop(second);
    // The survivor now owns every partition: the second member's keys come
    // to it (from their last commit), together with everything new.
    publish_many(bus.as_ref(), &prefix, 16, 1).await;
    let mut taken_over: HashSet<String> = HashSet::new();
    while !keys_second.iter().all(|k| taken_over.contains(k)) {
        for r in next(&mut first).await {
            if r.key.starts_with(&prefix) {
                taken_over.insert(r.key.clone());
            }
        }
    }
}

/// A published event survives the bus being closed and opened again.
pub async fn survives_reopen<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn EventBus>>,
{
    let prefix = unique("durable");
    let group = unique("g");
    {
        let bus = open().await;
        bus.publish(
            Topic::ChatMessages,
            &format!("{prefix}-k"),
            Bytes::from_static(b"kept"),
        )
        .await
        .unwrap();
    }
    let bus = open().await;
    let mut sub = bus.subscribe(&group, Topic::ChatMessages).await.unwrap();
    let records = collect(&mut sub, &prefix, 1).await;
    assert_eq!(records[0].payload.as_ref(), b"kept");
}

/// A group that consumed and committed everything (so retention may have
/// dropped every record) gets what is published after a reopen: the log end
/// offset survives retention, new records never land below a committed
/// offset, and nothing already committed comes back.
pub async fn continues_after_trim_and_reopen<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn EventBus>>,
{
    let prefix = unique("trimmed");
    let group = unique("g");
    let key = format!("{prefix}-k");
    let mut last_offset = None;
    for round in 0..3u32 {
        let bus = open().await;
        let mut sub = bus.subscribe(&group, Topic::ChatMessages).await.unwrap();
        let per_round = if round == 0 { 5 } else { 2 };
        for i in 0..per_round {
            bus.publish(
                Topic::ChatMessages,
                &key,
                Bytes::from(format!("{round}-{i}")),
            )
            .await
            .unwrap();
        }
        let records = collect(&mut sub, &prefix, per_round).await;
        let payloads: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..per_round).map(|i| format!("{round}-{i}")).collect();
        assert_eq!(
            payloads, expected,
            "round {round}: records published after the reopen were lost or replayed"
        );
        for r in &records {
            if let Some(last) = last_offset {
                assert!(r.offset > last, "offset {} reused after {last}", r.offset);
            }
            last_offset = Some(r.offset);
        }
        sub.commit(&records).await.unwrap();
    }
}

/// Waits until `lag` answers `want` (views may trail by `LAG_REFRESH`).
async fn lag_becomes(bus: &dyn EventBus, group: &str, want: Option<u64>) {
    super::eventually(&format!("lag of {group} is {want:?}"), || async {
        bus.lag(group, Topic::ChatMessages).await == want
    })
    .await;
}

/// `lag` counts what a group has not committed: unknown before its first
/// commit, then the records published past its committed offsets.
pub async fn reports_consumer_lag(bus: Arc<dyn EventBus>) {
    let prefix = unique("lag");
    let group = unique("g");
    let key = format!("{prefix}-k");
    assert_eq!(bus.lag(&group, Topic::ChatMessages).await, None);
    let mut sub = bus.subscribe(&group, Topic::ChatMessages).await.unwrap();
    bus.publish(Topic::ChatMessages, &key, Bytes::from_static(b"0"))
        .await
        .unwrap();
    let first = collect(&mut sub, &prefix, 1).await;
    sub.commit(&first).await.unwrap();
    lag_becomes(bus.as_ref(), &group, Some(0)).await;
    for i in 1..=5 {
        bus.publish(Topic::ChatMessages, &key, Bytes::from(format!("{i}")))
            .await
            .unwrap();
    }
    lag_becomes(bus.as_ref(), &group, Some(5)).await;
    let rest = collect(&mut sub, &prefix, 5).await;
    sub.commit(&rest).await.unwrap();
    lag_becomes(bus.as_ref(), &group, Some(0)).await;
}

/// `uncommitted` counts what a group has still to process, also before its
/// first commit (the sequencer waits for 0 before chat-svc answers, see
/// `Store::rolls_back_on_crash`). For a bus of the check's own: it counts
/// every record of the topic.
pub async fn counts_uncommitted_records(bus: Arc<dyn EventBus>) {
    let prefix = unique("uncommitted");
    let group = unique("g");
    let Some(before) = bus.uncommitted(&group, Topic::ChatMessages).await else {
        return;
    };
    assert_eq!(before, 0, "an empty topic has nothing uncommitted");
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        bus.publish(
            Topic::ChatMessages,
            &format!("{prefix}-{key}"),
            Bytes::from(format!("{i}")),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        bus.uncommitted(&group, Topic::ChatMessages).await,
        Some(3),
        "a group that never committed has every record still to process"
    );
    let mut sub = bus.subscribe(&group, Topic::ChatMessages).await.unwrap();
    let records = collect(&mut sub, &prefix, 3).await;
    sub.commit(&records[..1]).await.unwrap();
    assert_eq!(bus.uncommitted(&group, Topic::ChatMessages).await, Some(2));
    sub.commit(&records).await.unwrap();
    assert_eq!(bus.uncommitted(&group, Topic::ChatMessages).await, Some(0));
}
