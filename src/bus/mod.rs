//! The event bus: topics split into partitions by key, consumer groups that
//! share a topic's partitions, offsets committed after processing.
//!
//! Shaped like Kafka on purpose (the real backend is Kafka), but the trait
//! speaks only of what the chat needs: publish an event for a key durably,
//! and consume a topic as a member of a group, at least once.

pub mod embedded;
pub mod kafka;

use async_trait::async_trait;
use bytes::Bytes;

/// The topics Parley uses; names are those of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Messages and receipts, keyed by conversation id.
    ChatMessages,
    /// Presence changes, keyed by user id.
    UserPresence,
    /// Messages for users with no live session, keyed by user id.
    PushNotifications,
}

impl Topic {
    pub const ALL: [Topic; 3] = [
        Topic::ChatMessages,
        Topic::UserPresence,
        Topic::PushNotifications,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ChatMessages => "chat-messages",
            Self::UserPresence => "user-presence",
            Self::PushNotifications => "push-notifications",
        }
    }

    fn index(self) -> u8 {
        match self {
            Self::ChatMessages => 0,
            Self::UserPresence => 1,
            Self::PushNotifications => 2,
        }
    }
}

/// One consumed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Topic,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("event bus storage failed: {0}")]
    Storage(String),
    #[error("event bus is shut down")]
    Closed,
    /// The bus (or the consumers behind it) is past a stated bound; the
    /// caller should refuse the work now and let the client retry.
    #[error("event bus overloaded: {0}")]
    Overloaded(&'static str),
}

impl From<BusError> for crate::ApiError {
    fn from(err: BusError) -> Self {
        if let BusError::Overloaded(_) = err {
            metrics::counter!("parley_bus_overloaded_total").increment(1);
            return crate::ApiError::unavailable("server busy, retry shortly");
        }
        tracing::warn!(error = %err, "bus error");
        crate::ApiError::unavailable("message bus unavailable, try again")
    }
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Appends an event to the partition of `key`. When this returns `Ok`, the
    /// event is durable: it will be consumed even if this process dies now.
    /// What each implementation's `Ok` survives beyond that (a host crash of
    /// a single Kafka broker, for one) is in `docs/architecture.md#durability`.
    async fn publish(&self, topic: Topic, key: &str, payload: Bytes) -> Result<(), BusError>;

    /// Joins `group` on `topic`. Members of one group split the partitions
    /// between them; each partition is consumed in order by one member.
    async fn subscribe(&self, group: &str, topic: Topic)
    -> Result<Box<dyn Subscription>, BusError>;

    /// Answers whether the bus can take writes now (for readiness).
    async fn ping(&self) -> Result<(), BusError>;

    /// The consumer lag of `group` on `topic`, summed over partitions:
    /// records published and not yet committed by the group (Kafka's
    /// definition: log end offset − committed offset, per partition). Cheap
    /// enough for every send: answered from memory, or from a view refreshed
    /// in the background (at most [`LAG_REFRESH`] old). `None` while it is
    /// unknown (the group never committed, the view is not filled yet or the
    /// broker does not answer): callers must not refuse work on a `None`.
    async fn lag(&self, group: &str, topic: Topic) -> Option<u64>;

    /// Records of `topic` after `group`'s committed offset in each
    /// partition, a partition it never committed on counted from offset 0:
    /// what the group has still to process, where nothing of that
    /// partition was trimmed before the group joined (true of a topic with
    /// one consumer group, as `chat-messages`). Unlike [`EventBus::lag`] it
    /// also counts a group that never committed. `None` where the bus
    /// cannot answer from memory.
    async fn uncommitted(&self, _group: &str, _topic: Topic) -> Option<u64> {
        None
    }
}

/// How old a background view of consumer lag may be.
pub const LAG_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);

#[async_trait]
pub trait Subscription: Send {
    /// Waits for records of the partitions this member owns, at most `max`,
    /// in partition order. Records not committed are delivered again after a
    /// rebalance or a restart. Cancel-safe: dropping the future before it
    /// completes loses no record.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError>;

    /// Marks `records` (and everything before them in their partitions)
    /// processed. On the embedded bus the commit is written when this
    /// returns `Ok`. On Kafka it is sent asynchronously (`CommitMode::Async`,
    /// so the runtime never blocks on the broker): `Ok` means queued, and a
    /// commit the broker then refuses is only logged by librdkafka. Such a
    /// lost commit costs a replay of those records after a rebalance or
    /// restart, which the store dedupes, and the next commit covers it.
    async fn commit(&mut self, records: &[Record]) -> Result<(), BusError>;
}

/// The embedded bus's partitioner: FNV-1a of the key, modulo the partition
/// count. Only [`embedded::EmbeddedBus`] uses it. The Kafka producer sets no
/// `partitioner`, so librdkafka's default, `consistent_random` (CRC32 of the
/// key; Java clients default to murmur2), places its records, and a key may
/// land on another partition number there than here. Nothing depends on the
/// two agreeing: what matters is that one key always maps to one partition
/// of a given bus, so one conversation's events stay in order.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    // FNV-1a: stable across runs and platforms, unlike `DefaultHasher`.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

/// Joins `group` on `topic`, retrying every second while the bus refuses;
/// `None` once `shutdown` is cancelled. For long-running consumers.
pub async fn subscribe_until(
    bus: &dyn EventBus,
    group: &str,
    topic: Topic,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Box<dyn Subscription>> {
    loop {
        match bus.subscribe(group, topic).await {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::warn!(%group, topic = topic.name(), error = %e, "cannot join the consumer group; retrying");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// The next batch, retrying consume errors after a short pause; `None`
/// once `shutdown` is cancelled.
pub async fn next_batch_until(
    subscription: &mut dyn Subscription,
    max: usize,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Vec<Record>> {
    loop {
        let batch = tokio::select! {
            batch = subscription.next_batch(max) => batch,
            () = shutdown.cancelled() => return None,
        };
        match batch {
            Ok(b) => return Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "consume failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}
