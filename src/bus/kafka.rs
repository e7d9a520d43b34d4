//! The event bus on Kafka (rdkafka).
//!
//! - Producer: idempotent (`enable.idempotence=true`, `acks=all`), so a
//!   retried send is written once; a publish returns only when the broker
//!   has it on every in-sync replica. That is replication, not an fsync:
//!   Kafka leaves flushing to the OS unless `flush.messages` is set, so on
//!   one broker with replication factor 1 (`scripts/infra`,
//!   `docker-compose.yml`, `PARLEY_REPLICATION`'s default) an acked record
//!   survives a kill of any process but not a crash of the broker's host
//!   (`docs/architecture.md#durability`). `linger.ms=2` trades 2 ms at low
//!   load for batching at high load. No `partitioner` is set: librdkafka's
//!   default, `consistent_random` (CRC32 of the key), places records.
//! - Consumers: one rdkafka consumer per subscription, in the given group,
//!   auto-commit off, offsets committed by [`Subscription::commit`] after
//!   processing (at-least-once). `fetch.wait.max.ms=10` keeps an idle
//!   partition's next record from waiting for the 500 ms default. A dead
//!   member is noticed after [`SESSION_TIMEOUT_MS`] (1.5 s; the broker must
//!   allow it, see there).
//! - Topics are `<prefix><name>` (the prefix isolates test runs) and are
//!   created at start-up with the configured partition count and
//!   replication factor, and `min.insync.replicas` set to a majority of the
//!   replicas ([`min_insync_replicas`]): `acks=all` waits only for the
//!   replicas in sync at the time, so without it an ack after the other
//!   replicas fell out of sync rests on one broker (Kafka's documentation,
//!   "min.insync.replicas"). A topic that exists already keeps its own
//!   settings.

use super::{BusError, EventBus, Record, Subscription, Topic};
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Bound of the producer's local queue (librdkafka's
/// `queue.buffering.max.messages`): records handed to the client and not
/// yet acknowledged by the broker. A publish that finds it full is refused
/// at once ([`BusError::Overloaded`]) rather than waiting for room; the
/// broker's own ack still has `message.timeout.ms` (10 s).
const PRODUCER_QUEUE: usize = 10_000;

/// How long the group coordinator waits for a consumer's heartbeat
/// before it declares it dead and hands its partitions to the others
/// (`session.timeout.ms`). A killed chat-svc's partitions stall about this
/// long plus one [`HEARTBEAT_INTERVAL_MS`] and a rebalance; at librdkafka's
/// 45 s default (and the 10 s used before issue 11) that was the longest
/// delivery stall of a kill. 1.5 s keeps it under the 3 s goal. Heartbeats
/// come from librdkafka's own thread, not the runtime, so a busy process
/// does not miss them; a false expiry costs a rebalance and a replay, never
/// a record. The broker refuses session timeouts below its
/// `group.min.session.timeout.ms` (6 s by default): `scripts/infra` and
/// `docker-compose.yml` set it to 1 s; a broker configured otherwise fails
/// the group join with `INVALID_SESSION_TIMEOUT`.
pub const SESSION_TIMEOUT_MS: u32 = 1500;

/// How often a consumer heartbeats its group coordinator
/// (`heartbeat.interval.ms`): five per session timeout, so one late or lost
/// heartbeat is not an expiry, and a member learns of a rebalance (a peer
/// expired) within this long.
pub const HEARTBEAT_INTERVAL_MS: u32 = 300;

/// How long the broker holds a fetch that finds no new record
/// (`fetch.wait.max.ms`). With `fetch.min.bytes` = 1 (the default) a fetch
/// is answered as soon as a record arrives, so this adds no latency to a
/// record; it sets how often an idle consumer asks again. At 10 ms every
/// consumer asked the broker 100 times a second, busy or idle: measured
/// with `scripts/bench real-rate`, Kafka's CPU per accepted message fell
/// from 0.92 to 0.57 ms at 500 msg/s (0.42 to 0.34 at 1,000) at 100 ms,
/// with send → deliver no slower.
pub const FETCH_WAIT_MAX_MS: u32 = 100;

/// One background view of a consumer lag: `None` until first measured.
type LagView = Arc<Mutex<Option<u64>>>;

#[derive(Clone)]
pub struct KafkaBus {
    brokers: String,
    prefix: String,
    producer: FutureProducer,
    /// Consumer lag per (group, topic) asked about, each refreshed by a
    /// background task every [`super::LAG_REFRESH`] while this bus lives.
    lags: Arc<Mutex<HashMap<(String, Topic), LagView>>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn unavailable(e: KafkaError) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl KafkaBus {
    /// Connects to `brokers`, creates the topics that are missing and checks
    /// the cluster answers. Fails (naming the brokers) if it does not.
    pub async fn connect(
        brokers: &str,
        prefix: &str,
        partitions: u32,
        replication: u16,
    ) -> Result<Self, BusError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "10000")
            .set("queue.buffering.max.messages", PRODUCER_QUEUE.to_string())
            .set("socket.connection.setup.timeout.ms", "3000")
            .create()
            .map_err(unavailable)?;
        let bus = Self {
            brokers: brokers.to_owned(),
            prefix: prefix.to_owned(),
            producer,
            lags: Arc::default(),
        };
        bus.probe().await?;
        bus.create_topics(partitions, replication).await?;
        bus.await_topics().await?;
        Ok(bus)
    }

    /// One metadata round trip, so an unreachable cluster is reported in
    /// seconds rather than after the admin client's retries.
    async fn probe(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
    }

    /// Waits until the cluster's metadata lists every topic with a leader
    /// for each partition: a consumer subscribing to a topic it does not
    /// know yet would otherwise wait for its next metadata refresh.
    async fn await_topics(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        let names: Vec<String> = Topic::ALL.iter().map(|t| self.topic_name(*t)).collect();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let ready = producer
                    .client()
                    .fetch_metadata(None, Duration::from_secs(3))
                    .map(|m| {
                        names.iter().all(|n| {
                            m.topics().iter().any(|t| {
                                t.name() == n
                                    && t.error().is_none()
                                    && !t.partitions().is_empty()
                                    && t.partitions().iter().all(|p| p.leader() >= 0)
                            })
                        })
                    })
                    .unwrap_or(false);
                if ready {
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    return Err(BusError::Unavailable(
                        "topics were created but have no leaders after 15 s".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
    }

    /// Starts the background view of `group`'s lag on `topic`: a consumer
    /// client of the group that never joins it (so it takes no partitions)
    /// asks for the committed offsets and each partition's high watermark.
    fn watch_lag(&self, group: &str, topic: Topic, view: &LagView) {
        let consumer: BaseConsumer = match ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("socket.connection.setup.timeout.ms", "3000")
            .create()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch consumer lag");
                return;
            }
        };
        let consumer = Arc::new(consumer);
        let name = self.topic_name(topic);
        let view: Weak<Mutex<Option<u64>>> = Arc::downgrade(view);
        tokio::spawn(async move {
            loop {
                let (c, n) = (consumer.clone(), name.clone());
                let measured = tokio::task::spawn_blocking(move || measure_lag(&c, &n))
                    .await
                    .ok()
                    .and_then(|r| {
                        r.map_err(|e| tracing::debug!(error = %e, "lag not measured"))
                            .ok()
                    })
                    .flatten();
                let Some(view) = view.upgrade() else { return };
                if let Ok(mut v) = view.lock() {
                    *v = measured;
                }
                drop(view);
                tokio::time::sleep(super::LAG_REFRESH).await;
            }
        });
    }

    fn topic_name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    fn topic_of(&self, name: &str) -> Option<Topic> {
        let name = name.strip_prefix(&self.prefix)?;
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }

    async fn create_topics(&self, partitions: u32, replication: u16) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("socket.connection.setup.timeout.ms", "3000")
            .create()
            .map_err(unavailable)?;
        let names: Vec<String> = Topic::ALL.iter().map(|t| self.topic_name(*t)).collect();
        let partitions = i32::try_from(partitions.max(1)).unwrap_or(i32::MAX);
        let min_insync = min_insync_replicas(replication).to_string();
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                NewTopic::new(
                    n,
                    partitions,
                    TopicReplication::Fixed(i32::from(replication)),
                )
                .set("min.insync.replicas", &min_insync)
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = tokio::time::timeout(
            Duration::from_secs(15),
            admin.create_topics(topics.iter(), &options),
        )
        .await
        .map_err(|_| {
            BusError::Unavailable(format!("Kafka at {} did not answer in 15 s", self.brokers))
        })?
        .map_err(unavailable)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::Unavailable(format!(
                        "cannot create topic {topic}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn publish(&self, topic: Topic, key: &str, payload: Bytes) -> Result<(), BusError> {
        let name = self.topic_name(topic);
        let record = FutureRecord::to(&name).key(key).payload(payload.as_ref());
        // A zero queue timeout: a full local queue fails the send at once.
        self.producer
            .send(record, Duration::ZERO)
            .await
            .map(|_| ())
            .map_err(|(e, _)| match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    BusError::Overloaded("the Kafka producer queue is full")
                }
                e => unavailable(e),
            })
    }

    async fn subscribe(
        &self,
        group: &str,
        topic: Topic,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
            .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
            .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS.to_string())
            // Also the rebalance timeout: how long a join waits for members
            // that will never come back (e.g. this consumer's own previous
            // member id after a broker restart). The 300 s default stalls a
            // group for minutes; a batch is processed far faster than this.
            .set("max.poll.interval.ms", "30000")
            // Eager range/round-robin rebalancing: every member revokes and
            // rejoins, which keeps a partition's single owner unambiguous.
            .set("partition.assignment.strategy", "range,roundrobin")
            // Notice new topics and partitions within seconds, not minutes.
            .set("topic.metadata.refresh.interval.ms", "5000")
            .create()
            .map_err(unavailable)?;
        let name = self.topic_name(topic);
        consumer.subscribe(&[&name]).map_err(unavailable)?;
        Ok(Box::new(KafkaSubscription {
            bus: self.clone(),
            consumer: Some(consumer),
            buffer: Vec::new(),
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        let name = self.topic_name(Topic::ChatMessages);
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(3))
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
        .map_err(|e| BusError::Unavailable(e.to_string()))?
    }

    async fn lag(&self, group: &str, topic: Topic) -> Option<u64> {
        let (view, new) = {
            let mut lags = self.lags.lock().ok()?;
            match lags.get(&(group.to_owned(), topic)) {
                Some(v) => (v.clone(), false),
                None => {
                    let v = Arc::new(Mutex::new(None));
                    lags.insert((group.to_owned(), topic), v.clone());
                    (v, true)
                }
            }
        };
        if new {
            self.watch_lag(group, topic, &view);
        }
        *view.lock().ok()?
    }
}

/// `min.insync.replicas` for topics of `replication` replicas: a majority
/// (1 of 1, 2 of 2, 2 of 3, 3 of 5), so an acked record is on most
/// replicas and a minority's loss cannot lose it; while fewer are in sync,
/// Kafka refuses the produce (`NOT_ENOUGH_REPLICAS`) and the send is
/// answered `unavailable` rather than acked on too few.
pub fn min_insync_replicas(replication: u16) -> u16 {
    replication.max(1) / 2 + 1
}

/// Sum over `topic`'s partitions of high watermark − the group's committed
/// offset; `None` when the group has committed on none of them.
fn measure_lag(consumer: &BaseConsumer, topic: &str) -> Result<Option<u64>, KafkaError> {
    let timeout = Duration::from_secs(2);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(list, timeout)?;
    let mut lag = 0u64;
    let mut known = false;
    for p in partitions {
        let Some(Offset::Offset(c)) = committed.find_partition(topic, p).map(|e| e.offset()) else {
            continue;
        };
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        known = true;
        lag += u64::try_from(high.saturating_sub(c)).unwrap_or(0);
    }
    Ok(known.then_some(lag))
}

/// Errors librdkafka reports while it reconnects on its own (broker down,
/// transport failures): informational, not a reason to stop consuming. A
/// caller that backed off on each of them would fall far behind the
/// backlog of such events an outage leaves in the queue.
fn is_transient(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::CoordinatorLoadInProgress
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
        )
    )
}

fn log_transient(e: &KafkaError) {
    tracing::debug!(error = %e, "Kafka consumer reconnecting");
    metrics::counter!("parley_bus_consumer_transient_errors_total").increment(1);
}

struct KafkaSubscription {
    bus: KafkaBus,
    /// Always `Some` until dropped: [`Drop`] takes it to close it off the
    /// runtime's threads.
    consumer: Option<StreamConsumer>,
    /// Records received but not yet handed out.
    buffer: Vec<Record>,
}

/// The subscription's consumer; an error only once it is being dropped.
fn open(consumer: &Option<StreamConsumer>) -> Result<&StreamConsumer, BusError> {
    consumer
        .as_ref()
        .ok_or_else(|| BusError::Unavailable("the subscription is closed".into()))
}

impl Drop for KafkaSubscription {
    /// On a `current_thread` runtime, closes the consumer on a thread of
    /// its own. librdkafka's close blocks: it leaves the group and runs the
    /// final rebalance on the calling thread, and on a single-threaded
    /// runtime's only thread (tests, when the runtime cancels the
    /// subscribing task at its end) that wait was seen never to end: the
    /// whole-system suite hung in `BaseConsumer::drop` → `rd_kafka_assign`.
    /// On a multi-threaded runtime (every binary) it closes here as before,
    /// so a stopping process leaves its group before it exits.
    fn drop(&mut self) {
        let single_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if !single_threaded {
            return;
        }
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        // If no thread starts, `spawn` drops the closure, and with it the
        // consumer, here: closed in place, as before.
        let _ = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || drop(consumer));
    }
}

impl KafkaSubscription {
    fn record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Record> {
        Some(Record {
            topic: self.bus.topic_of(m.topic())?,
            partition: u32::try_from(m.partition()).ok()?,
            offset: u64::try_from(m.offset()).ok()?,
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        })
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        // Every received record goes to `self.buffer` before the next await,
        // so a caller that drops this future (select!) loses nothing.
        while self.buffer.is_empty() {
            match open(&self.consumer)?.recv().await {
                Ok(m) => {
                    let record = self.record(&m);
                    self.buffer.extend(record);
                }
                Err(e) if is_transient(&e) => log_transient(&e),
                Err(e) => return Err(unavailable(e)),
            }
        }
        // Take what is already fetched, without waiting for more.
        while self.buffer.len() < max.max(1) {
            match tokio::time::timeout(Duration::from_millis(1), open(&self.consumer)?.recv()).await
            {
                Ok(Ok(m)) => {
                    let record = self.record(&m);
                    self.buffer.extend(record);
                }
                Ok(Err(e)) if is_transient(&e) => log_transient(&e),
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => break,
            }
        }
        Ok(std::mem::take(&mut self.buffer))
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), BusError> {
        let mut next: HashMap<(Topic, u32), u64> = HashMap::new();
        for r in records {
            let n = next.entry((r.topic, r.partition)).or_insert(0);
            *n = (*n).max(r.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            list.add_partition_offset(
                &self.bus.topic_name(topic),
                i32::try_from(partition).unwrap_or(i32::MAX),
                Offset::Offset(i64::try_from(offset).unwrap_or(i64::MAX)),
            )
            .map_err(unavailable)?;
        }
        // Async: never blocks the runtime; a lost commit only replays.
        open(&self.consumer)?
            .commit(&list, CommitMode::Async)
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::min_insync_replicas;

    #[test]
    fn an_ack_needs_a_majority_of_the_replicas() {
        let got: Vec<u16> = [0, 1, 2, 3, 4, 5].map(min_insync_replicas).to_vec();
        assert_eq!(got, [1, 1, 2, 2, 3, 3]);
    }
}
