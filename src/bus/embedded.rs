//! The embedded event bus: Kafka's semantics in one process, persisted in a
//! redb file under the data directory.
//!
//! One writer thread owns every write transaction. Publishes that arrive
//! while a commit is in flight are gathered into the next transaction (group
//! commit), so durability costs one fsync per batch, not per message.
//! Consumers read committed records from an in-memory tail of each
//! partition (`Tail`) or, when behind it, straight from the file, and sleep
//! on a per-topic watch channel until the writer announces new records.

use super::{BusError, EventBus, Record, Subscription, Topic, partition_for};
use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, watch};

/// Committed offsets by (group, topic, partition), shared by the writer,
/// which moves them, and [`EventBus::lag`], which reads them.
type Committed = Arc<Mutex<HashMap<(String, Topic, u32), u64>>>;

/// (topic, partition, offset) → (key, payload).
const LOG: TableDefinition<(u8, u32, u64), (&str, &[u8])> = TableDefinition::new("log");
/// (group, topic, partition) → next offset to consume.
const OFFSETS: TableDefinition<(&str, u8, u32), u64> = TableDefinition::new("offsets");
/// (topic, partition) → log end offset: the offset the next record gets.
/// Kept on its own because retention deletes the records it could otherwise
/// be derived from: with every record of a partition trimmed, "last
/// record + 1" would restart at 0 below the groups' committed offsets, and every
/// record published after a restart would be skipped as already consumed
/// (Kafka keeps its log end offset across retention for the same reason).
const HEADS: TableDefinition<(u8, u32), u64> = TableDefinition::new("heads");
/// Settings the data was written with: `partitions`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// redb's page cache for the log. redb's default is 1 GiB per database,
/// which a busy server fills and keeps; records live only until every group
/// consumed them, so the hot part of the log is small.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Bound of the writer's queue (publishes and commits waiting for the next
/// transaction). Past it a publish is refused at once with
/// [`BusError::Overloaded`] instead of waiting: a send the bus cannot take
/// is answered `unavailable` and resent by the client.
const WRITE_QUEUE: usize = 4096;

/// Most operations folded into one write transaction.
const MAX_GROUP_COMMIT: usize = 1024;

/// Records kept in memory per partition after their commit (see [`Tail`]),
/// at most, and at most [`TAIL_BYTES`] of payload.
const TAIL_RECORDS: usize = 1024;

/// Payload bytes kept per partition in the [`Tail`]: with the default 8
/// partitions (`PARLEY_PARTITIONS`) and three topics at most 24 MiB (3 MiB
/// per partition configured) however large the messages (a message body
/// may be 4,000 characters); at 100-byte chat events the record count
/// binds first.
const TAIL_BYTES: usize = 1024 * 1024;

/// The newest committed records of each partition, in offset order, so a
/// consumer that keeps up reads what was just appended from memory rather
/// than through a redb read transaction on the blocking pool (a thread
/// handoff per poll, and a read that waits for the writer's fsync). Like
/// Kafka serving a fresh fetch from the page cache. A consumer further
/// behind than [`TAIL_RECORDS`] reads the file. Filled before the heads
/// move, so any offset below a head a reader sees is here or in the file.
type Tail = Arc<Mutex<HashMap<(Topic, u32), Kept>>>;

/// One partition's tail: contiguous offsets, oldest first.
#[derive(Default)]
struct Kept {
    records: VecDeque<Record>,
    bytes: usize,
}

impl Kept {
    fn push(&mut self, record: Record) {
        self.bytes += record.payload.len();
        self.records.push_back(record);
        while self.records.len() > TAIL_RECORDS || self.bytes > TAIL_BYTES {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(old) = self.records.pop_front() {
            self.bytes -= old.payload.len();
        }
    }

    /// The records from `offset` on, or `None` when it is not kept.
    fn from(&self, offset: u64) -> Option<impl Iterator<Item = &Record>> {
        let first = self.records.front()?.offset;
        let index = usize::try_from(offset.checked_sub(first)?).ok()?;
        // Offsets are contiguous by construction; checked all the same, as
        // a wrong record here would be handed out under the wrong offset.
        (self.records.get(index)?.offset == offset).then(|| self.records.iter().skip(index))
    }
}

#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus")
            .field("partitions", &self.inner.partitions)
            .finish()
    }
}

struct Inner {
    db: Arc<Database>,
    partitions: u32,
    writer: Mutex<Option<mpsc::SyncSender<WriteOp>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Next offset per (topic, partition): everything below is readable.
    heads: Arc<Mutex<HashMap<(Topic, u32), u64>>>,
    tail: Tail,
    /// Reads the [`Tail`] answered (the file answered the others).
    tail_reads: std::sync::atomic::AtomicU64,
    /// Bumped after every commit that added records to the topic.
    versions: Arc<HashMap<Topic, watch::Sender<u64>>>,
    groups: Mutex<HashMap<(String, Topic), Group>>,
    next_member: Mutex<u64>,
    /// Committed offsets as in `OFFSETS`, mirrored in memory for [`EventBus::lag`].
    committed: Committed,
}

struct Group {
    members: Vec<u64>,
    generation: watch::Sender<u64>,
}

enum WriteOp {
    Publish {
        topic: Topic,
        key: String,
        payload: Bytes,
        done: oneshot::Sender<Result<(), BusError>>,
    },
    Commit {
        group: String,
        topic: Topic,
        offsets: Vec<(u32, u64)>,
        done: oneshot::Sender<Result<(), BusError>>,
    },
}

fn storage(e: impl std::fmt::Display) -> BusError {
    BusError::Storage(e.to_string())
}

impl EmbeddedBus {
    /// Opens (or creates) `bus.redb` in `dir` with `partitions` per topic.
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, BusError> {
        let partitions = partitions.max(1);
        std::fs::create_dir_all(dir).map_err(storage)?;
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(dir.join("bus.redb"))
                .map_err(storage)?,
        );
        let heads;
        let committed;
        {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(LOG).map_err(storage)?;
            txn.open_table(OFFSETS).map_err(storage)?;
            {
                // Keys were spread over the partition count of the first
                // start; another count would strand records and break
                // per-key order, so it is refused.
                let mut meta = txn.open_table(META).map_err(storage)?;
                let stored = meta.get("partitions").map_err(storage)?.map(|v| v.value());
                match stored {
                    Some(n) if n != u64::from(partitions) => {
                        return Err(BusError::Storage(format!(
                            "the bus in {} was created with {n} partitions, not {partitions}; keep the partition count of a data directory",
                            dir.display()
                        )));
                    }
                    Some(_) => {}
                    None => {
                        meta.insert("partitions", u64::from(partitions))
                            .map_err(storage)?;
                    }
                }
            }
            txn.open_table(HEADS).map_err(storage)?;
            txn.commit().map_err(storage)?;
            committed = committed_offsets(&db)?;
            heads = recover_heads(&db, partitions, &committed)?;
        }
        let heads = Arc::new(Mutex::new(heads));
        let tail = Tail::default();
        let committed = Arc::new(Mutex::new(committed));
        let versions: Arc<HashMap<Topic, watch::Sender<u64>>> = Arc::new(
            Topic::ALL
                .into_iter()
                .map(|t| (t, watch::Sender::new(0)))
                .collect(),
        );
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE);
        let writer = Writer {
            db: db.clone(),
            partitions,
            heads: heads.clone(),
            tail: tail.clone(),
            versions: versions.clone(),
            committed: committed.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("parley-bus-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(storage)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                partitions,
                writer: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                heads,
                tail,
                tail_reads: std::sync::atomic::AtomicU64::new(0),
                versions,
                groups: Mutex::new(HashMap::new()),
                next_member: Mutex::new(0),
                committed,
            }),
        })
    }

    fn send(&self, op: WriteOp) -> Result<(), BusError> {
        let guard = self.inner.writer.lock().map_err(|_| BusError::Closed)?;
        guard
            .as_ref()
            .ok_or(BusError::Closed)?
            .try_send(op)
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => BusError::Overloaded("the bus write queue is full"),
                mpsc::TrySendError::Disconnected(_) => BusError::Closed,
            })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop; joining it releases the
        // file lock, so the same data directory can be opened again at once.
        if let Ok(mut writer) = self.writer.lock() {
            writer.take();
        }
        if let Some(thread) = self.writer_thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// The log end offset of every partition at start-up: the highest of the
/// stored head, the last record kept + 1 and any group's committed offset.
/// The last two only matter for a data directory written before `HEADS`
/// existed; taking the maximum means no new record can ever get an offset
/// a group has already committed past.
fn recover_heads(
    db: &Database,
    partitions: u32,
    committed: &HashMap<(String, Topic, u32), u64>,
) -> Result<HashMap<(Topic, u32), u64>, BusError> {
    let txn = db.begin_read().map_err(storage)?;
    let log = txn.open_table(LOG).map_err(storage)?;
    let stored = txn.open_table(HEADS).map_err(storage)?;
    let mut consumed: HashMap<(Topic, u32), u64> = HashMap::new();
    for ((_, topic, p), offset) in committed {
        let c = consumed.entry((*topic, *p)).or_insert(0);
        *c = (*c).max(*offset);
    }
    let mut heads = HashMap::new();
    for topic in Topic::ALL {
        let t = topic.index();
        for p in 0..partitions {
            let after_last = log
                .range((t, p, 0)..=(t, p, u64::MAX))
                .map_err(storage)?
                .next_back()
                .transpose()
                .map_err(storage)?
                .map_or(0, |(k, _)| k.value().2 + 1);
            let kept = stored
                .get((t, p))
                .map_err(storage)?
                .map_or(0, |v| v.value());
            let consumed = consumed.get(&(topic, p)).copied().unwrap_or(0);
            heads.insert((topic, p), after_last.max(kept).max(consumed));
        }
    }
    Ok(heads)
}

/// Every group's committed offsets, by (group, topic, partition).
fn committed_offsets(db: &Database) -> Result<HashMap<(String, Topic, u32), u64>, BusError> {
    let txn = db.begin_read().map_err(storage)?;
    let offsets = txn.open_table(OFFSETS).map_err(storage)?;
    let mut out = HashMap::new();
    for row in offsets.iter().map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        let (group, t, p) = k.value();
        if let Some(topic) = Topic::ALL.into_iter().find(|x| x.index() == t) {
            out.insert((group.to_owned(), topic, p), v.value());
        }
    }
    Ok(out)
}

/// What one write transaction did.
struct Written {
    appended: Vec<Record>,
    /// (topic index, partition, floor): records below the floor dropped.
    trimmed: Vec<(u8, u32, u64)>,
}

struct Writer {
    db: Arc<Database>,
    partitions: u32,
    heads: Arc<Mutex<HashMap<(Topic, u32), u64>>>,
    tail: Tail,
    versions: Arc<HashMap<Topic, watch::Sender<u64>>>,
    committed: Committed,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<WriteOp>) {
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            while ops.len() < MAX_GROUP_COMMIT {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.apply(ops);
        }
    }

    fn apply(&self, ops: Vec<WriteOp>) {
        let mut next = match self.heads.lock() {
            Ok(h) => h.clone(),
            Err(_) => return,
        };
        let result = self.write(&ops, &mut next);
        let touched: Vec<Topic> = match &result {
            Ok(written) => {
                {
                    // Filled whatever a panic elsewhere left: a record
                    // missing here while the head moves would be a gap.
                    let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
                    // Retention applies to the tail too: a group that
                    // joins later starts from the oldest record kept.
                    for (t, p, floor) in &written.trimmed {
                        let Some(topic) = Topic::ALL.into_iter().find(|x| x.index() == *t) else {
                            continue;
                        };
                        if let Some(kept) = tail.get_mut(&(topic, *p)) {
                            while kept.records.front().is_some_and(|r| r.offset < *floor) {
                                kept.pop_front();
                            }
                        }
                    }
                    for record in &written.appended {
                        tail.entry((record.topic, record.partition))
                            .or_default()
                            .push(record.clone());
                    }
                }
                let mut touched: Vec<Topic> = ops
                    .iter()
                    .filter_map(|op| match op {
                        WriteOp::Publish { topic, .. } => Some(*topic),
                        WriteOp::Commit { .. } => None,
                    })
                    .collect();
                touched.sort();
                touched.dedup();
                if let Ok(mut heads) = self.heads.lock() {
                    *heads = next;
                }
                if let Ok(mut committed) = self.committed.lock() {
                    for op in &ops {
                        if let WriteOp::Commit {
                            group,
                            topic,
                            offsets,
                            ..
                        } = op
                        {
                            for (p, o) in offsets {
                                let c = committed.entry((group.clone(), *topic, *p)).or_insert(0);
                                *c = (*c).max(*o);
                            }
                        }
                    }
                }
                touched
            }
            Err(_) => Vec::new(),
        };
        for topic in touched {
            if let Some(v) = self.versions.get(&topic) {
                v.send_modify(|n| *n += 1);
            }
        }
        for op in ops {
            let done = match op {
                WriteOp::Publish { done, .. } | WriteOp::Commit { done, .. } => done,
            };
            let _ = done.send(match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(BusError::Storage(e.clone())),
            });
        }
    }

    /// Writes `ops` in one transaction.
    fn write(
        &self,
        ops: &[WriteOp],
        next: &mut HashMap<(Topic, u32), u64>,
    ) -> Result<Written, String> {
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let publishes = ops.iter().any(|op| matches!(op, WriteOp::Publish { .. }));
        // Offsets alone need no fsync of their own: they become durable with
        // the next publish, and losing one only replays records, which every
        // consumer handles (at-least-once).
        let durability = if publishes {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).map_err(|e| e.to_string())?;
        let mut records = Vec::new();
        let trimmed;
        {
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let mut offsets = txn.open_table(OFFSETS).map_err(|e| e.to_string())?;
            // The heads move in the same transaction as the records, so a
            // crash keeps both or neither.
            let mut appended: Vec<(Topic, u32)> = Vec::new();
            for op in ops {
                match op {
                    WriteOp::Publish {
                        topic,
                        key,
                        payload,
                        ..
                    } => {
                        let p = partition_for(key, self.partitions);
                        let offset = next.entry((*topic, p)).or_insert(0);
                        log.insert((topic.index(), p, *offset), (key.as_str(), &payload[..]))
                            .map_err(|e| e.to_string())?;
                        records.push(Record {
                            topic: *topic,
                            partition: p,
                            offset: *offset,
                            key: key.clone(),
                            payload: payload.clone(),
                        });
                        *offset += 1;
                        if !appended.contains(&(*topic, p)) {
                            appended.push((*topic, p));
                        }
                    }
                    WriteOp::Commit {
                        group,
                        topic,
                        offsets: list,
                        ..
                    } => {
                        for (p, o) in list {
                            let key = (group.as_str(), topic.index(), *p);
                            let current = offsets
                                .get(key)
                                .map_err(|e| e.to_string())?
                                .map(|v| v.value())
                                .unwrap_or(0);
                            if *o > current {
                                offsets.insert(key, *o).map_err(|e| e.to_string())?;
                            }
                        }
                    }
                }
            }
            if !appended.is_empty() {
                let mut heads = txn.open_table(HEADS).map_err(|e| e.to_string())?;
                for (topic, p) in appended {
                    let head = next.get(&(topic, p)).copied().unwrap_or(0);
                    heads
                        .insert((topic.index(), p), head)
                        .map_err(|e| e.to_string())?;
                }
            }
            trimmed = trim(&mut log, &offsets, ops)?;
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(Written {
            appended: records,
            trimmed,
        })
    }
}

/// Retention: drops the records of each partition a commit touched that
/// every group on that topic has consumed. Only groups that committed count,
/// so a group that joins later starts from the oldest record kept.
fn trim(
    log: &mut redb::Table<(u8, u32, u64), (&str, &[u8])>,
    offsets: &redb::Table<(&str, u8, u32), u64>,
    ops: &[WriteOp],
) -> Result<Vec<(u8, u32, u64)>, String> {
    let mut touched: Vec<(u8, u32)> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Commit { topic, offsets, .. } => Some((topic.index(), offsets)),
            WriteOp::Publish { .. } => None,
        })
        .flat_map(|(t, list)| list.iter().map(move |(p, _)| (t, *p)))
        .collect();
    if touched.is_empty() {
        return Ok(Vec::new());
    }
    touched.sort_unstable();
    touched.dedup();
    let mut floors: HashMap<(u8, u32), u64> = HashMap::new();
    for row in offsets.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let (_, t, p) = k.value();
        let floor = floors.entry((t, p)).or_insert(u64::MAX);
        *floor = (*floor).min(v.value());
    }
    let mut trimmed = Vec::new();
    for (t, p) in touched {
        if let Some(&floor) = floors.get(&(t, p)) {
            log.retain_in((t, p, 0)..(t, p, floor), |_, _| false)
                .map_err(|e| e.to_string())?;
            trimmed.push((t, p, floor));
        }
    }
    Ok(trimmed)
}

#[async_trait]
impl EventBus for EmbeddedBus {
    async fn publish(&self, topic: Topic, key: &str, payload: Bytes) -> Result<(), BusError> {
        let (done, rx) = oneshot::channel();
        self.send(WriteOp::Publish {
            topic,
            key: key.to_owned(),
            payload,
            done,
        })?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    async fn subscribe(
        &self,
        group: &str,
        topic: Topic,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let member = {
            let mut n = self
                .inner
                .next_member
                .lock()
                .map_err(|_| BusError::Closed)?;
            *n += 1;
            *n
        };
        let generation = {
            let mut groups = self.inner.groups.lock().map_err(|_| BusError::Closed)?;
            let g = groups
                .entry((group.to_owned(), topic))
                .or_insert_with(|| Group {
                    members: Vec::new(),
                    generation: watch::Sender::new(0),
                });
            g.members.push(member);
            g.generation.send_modify(|n| *n += 1);
            g.generation.subscribe()
        };
        let version = self
            .inner
            .versions
            .get(&topic)
            .ok_or(BusError::Closed)?
            .subscribe();
        Ok(Box::new(EmbeddedSubscription {
            bus: self.clone(),
            group: group.to_owned(),
            topic,
            member,
            generation,
            assigned: false,
            version,
            positions: HashMap::new(),
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        let guard = self.inner.writer.lock().map_err(|_| BusError::Closed)?;
        guard.as_ref().map(|_| ()).ok_or(BusError::Closed)
    }

    async fn lag(&self, group: &str, topic: Topic) -> Option<u64> {
        let heads = self.inner.heads.lock().ok()?;
        let committed = self.inner.committed.lock().ok()?;
        let mut lag = 0;
        let mut known = false;
        for ((g, t, p), c) in committed.iter() {
            if g == group && *t == topic {
                known = true;
                lag += heads
                    .get(&(topic, *p))
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(*c);
            }
        }
        known.then_some(lag)
    }

    async fn uncommitted(&self, group: &str, topic: Topic) -> Option<u64> {
        let heads = self.inner.heads.lock().ok()?;
        let committed = self.inner.committed.lock().ok()?;
        Some(
            heads
                .iter()
                .filter(|((t, _), _)| *t == topic)
                .map(|((t, p), head)| {
                    let done = committed
                        .get(&(group.to_owned(), *t, *p))
                        .copied()
                        .unwrap_or(0);
                    head.saturating_sub(done)
                })
                .sum(),
        )
    }
}

struct EmbeddedSubscription {
    bus: EmbeddedBus,
    group: String,
    topic: Topic,
    member: u64,
    generation: watch::Receiver<u64>,
    assigned: bool,
    version: watch::Receiver<u64>,
    /// Owned partitions and the next offset to hand out for each.
    positions: HashMap<u32, u64>,
}

impl EmbeddedSubscription {
    /// Takes this member's share of the partitions (round-robin by join
    /// order) and resumes each from its committed offset.
    fn rebalance(&mut self) -> Result<(), BusError> {
        self.generation.borrow_and_update();
        let members = {
            let groups = self.bus.inner.groups.lock().map_err(|_| BusError::Closed)?;
            groups
                .get(&(self.group.clone(), self.topic))
                .map(|g| g.members.clone())
                .unwrap_or_default()
        };
        let index = members.iter().position(|m| *m == self.member).unwrap_or(0);
        let count = members.len().max(1);
        // The in-memory mirror of `OFFSETS`: no read transaction needed.
        let committed = self
            .bus
            .inner
            .committed
            .lock()
            .map_err(|_| BusError::Closed)?;
        self.positions.clear();
        for p in 0..self.bus.inner.partitions {
            if (p as usize) % count == index {
                let offset = committed
                    .get(&(self.group.clone(), self.topic, p))
                    .copied()
                    .unwrap_or(0);
                self.positions.insert(p, offset);
            }
        }
        self.assigned = true;
        Ok(())
    }

    /// The next records of the owned partitions: from the [`Tail`] when it
    /// holds them all, else from the file (redb reads block, so on the
    /// blocking pool). Positions advance past what is returned.
    async fn read(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        let heads = self
            .bus
            .inner
            .heads
            .lock()
            .map_err(|_| BusError::Closed)?
            .clone();
        if let Some(records) = self.read_tail(&heads, max)? {
            return Ok(records);
        }
        let db = self.bus.inner.db.clone();
        let topic = self.topic;
        let mut positions = self.positions.clone();
        let (records, positions) = tokio::task::spawn_blocking(move || {
            read_log(&db, topic, &heads, &mut positions, max).map(|r| (r, positions))
        })
        .await
        .map_err(storage)??;
        self.positions = positions;
        Ok(records)
    }
}

impl EmbeddedSubscription {
    /// What [`Self::read`] answers, from memory; `None` when a partition
    /// has records below the tail (a consumer behind, or just started).
    fn read_tail(
        &mut self,
        heads: &HashMap<(Topic, u32), u64>,
        max: usize,
    ) -> Result<Option<Vec<Record>>, BusError> {
        let tail = self.bus.inner.tail.lock().map_err(|_| BusError::Closed)?;
        let mut positions = self.positions.clone();
        let mut partitions: Vec<u32> = positions.keys().copied().collect();
        partitions.sort_unstable();
        let mut out = Vec::new();
        for p in partitions {
            let head = heads.get(&(self.topic, p)).copied().unwrap_or(0);
            let Some(pos) = positions.get_mut(&p) else {
                continue;
            };
            if *pos >= head || out.len() >= max {
                continue;
            }
            let Some(kept) = tail.get(&(self.topic, p)).and_then(|k| k.from(*pos)) else {
                return Ok(None);
            };
            for record in kept {
                if record.offset >= head || out.len() >= max {
                    break;
                }
                out.push(record.clone());
                *pos = record.offset + 1;
            }
        }
        drop(tail);
        self.positions = positions;
        self.bus
            .inner
            .tail_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(out))
    }
}

fn read_log(
    db: &Database,
    topic: Topic,
    heads: &HashMap<(Topic, u32), u64>,
    positions: &mut HashMap<u32, u64>,
    max: usize,
) -> Result<Vec<Record>, BusError> {
    let txn = db.begin_read().map_err(storage)?;
    let log = txn.open_table(LOG).map_err(storage)?;
    let t = topic.index();
    let mut out = Vec::new();
    let mut partitions: Vec<u32> = positions.keys().copied().collect();
    partitions.sort_unstable();
    for p in partitions {
        let head = heads.get(&(topic, p)).copied().unwrap_or(0);
        let Some(pos) = positions.get_mut(&p) else {
            continue;
        };
        if *pos >= head || out.len() >= max {
            continue;
        }
        for entry in log.range((t, p, *pos)..(t, p, head)).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let (key, payload) = v.value();
            out.push(Record {
                topic,
                partition: p,
                offset: k.value().2,
                key: key.to_owned(),
                payload: Bytes::copy_from_slice(payload),
            });
            *pos = k.value().2 + 1;
            if out.len() >= max {
                break;
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, BusError> {
        loop {
            if !self.assigned || self.generation.has_changed().unwrap_or(false) {
                self.rebalance()?;
            }
            // Mark the current version seen before reading, so a publish that
            // lands after the read still wakes us.
            self.version.borrow_and_update();
            let batch = self.read(max.max(1)).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            tokio::select! {
                changed = self.version.changed() => changed.map_err(|_| BusError::Closed)?,
                changed = self.generation.changed() => changed.map_err(|_| BusError::Closed)?,
            }
        }
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), BusError> {
        let mut offsets: HashMap<u32, u64> = HashMap::new();
        for r in records {
            // Only partitions this member still owns, as far as it knows: it
            // learns of a rebalance at its next `next_batch`, so for a moment
            // two members may process one partition. Stores must therefore
            // sequence idempotently (the store appends are serialized).
            if self.positions.contains_key(&r.partition) {
                let next = offsets.entry(r.partition).or_insert(0);
                *next = (*next).max(r.offset + 1);
            }
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.bus.send(WriteOp::Commit {
            group: self.group.clone(),
            topic: self.topic,
            offsets: offsets.into_iter().collect(),
            done,
        })?;
        rx.await.map_err(|_| BusError::Closed)?
    }
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        if let Ok(mut groups) = self.bus.inner.groups.lock()
            && let Some(g) = groups.get_mut(&(self.group.clone(), self.topic))
        {
            g.members.retain(|m| *m != self.member);
            g.generation.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    #[test]
    fn a_data_dir_keeps_its_partition_count() {
        let dir = tempfile::tempdir().unwrap();
        drop(EmbeddedBus::open(dir.path(), 4).unwrap());
        let err = EmbeddedBus::open(dir.path(), 8).unwrap_err();
        assert!(err.to_string().contains("4 partitions"), "{err}");
        assert!(EmbeddedBus::open(dir.path(), 4).is_ok());
    }

    #[tokio::test]
    async fn records_every_group_consumed_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), 1).unwrap();
        for i in 0..5u8 {
            bus.publish(Topic::ChatMessages, "k", Bytes::from(vec![i]))
                .await
                .unwrap();
        }
        let mut first = bus.subscribe("first", Topic::ChatMessages).await.unwrap();
        let consumed = first.next_batch(10).await.unwrap();
        assert_eq!(consumed.len(), 5);
        first.commit(&consumed).await.unwrap();
        let count = |bus: &EmbeddedBus| {
            let txn = bus.inner.db.begin_read().unwrap();
            txn.open_table(LOG).unwrap().len().unwrap()
        };
        assert_eq!(count(&bus), 0, "consumed records were kept");
        bus.publish(Topic::ChatMessages, "k", Bytes::from_static(b"new"))
            .await
            .unwrap();
        // A group that never committed starts from the oldest record kept.
        let mut late = bus.subscribe("late", Topic::ChatMessages).await.unwrap();
        let seen = late.next_batch(10).await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].offset, 5);
        assert_eq!(count(&bus), 1);
    }

    /// A consumer behind the in-memory tail reads the file, one that keeps
    /// up reads the tail (from its middle too), and either way every
    /// record comes once, in order; after a restart (an empty tail) a
    /// consumer behind reads the file again, then, caught up, the new tail.
    #[tokio::test]
    async fn a_consumer_behind_the_tail_reads_the_file_then_the_tail_in_order() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let total = TAIL_RECORDS as u64 * 2 + 10;
        let publish_all = |bus: EmbeddedBus, from: u64, to: u64| async move {
            for i in from..to {
                bus.publish(
                    Topic::ChatMessages,
                    "k",
                    Bytes::from(i.to_be_bytes().to_vec()),
                )
                .await
                .unwrap();
            }
        };
        // Reads (and commits) as `group` until it has seen `until`.
        let read_until = |bus: EmbeddedBus, group: &'static str, until: u64| async move {
            let mut sub = bus.subscribe(group, Topic::ChatMessages).await.unwrap();
            let mut seen = Vec::new();
            while seen.last().is_none_or(|last| last + 1 < until) {
                let batch = sub.next_batch(100).await.unwrap();
                sub.commit(&batch).await.unwrap();
                seen.extend(batch.iter().map(|r| {
                    let value = u64::from_be_bytes(r.payload[..].try_into().unwrap());
                    assert_eq!(value, r.offset, "a record's payload is its offset");
                    r.offset
                }));
            }
            seen
        };
        let half = total / 2;
        let bus = EmbeddedBus::open(dir.path(), 1).unwrap();
        publish_all(bus.clone(), 0, total).await;
        let kept = bus.inner.tail.lock().unwrap()[&(Topic::ChatMessages, 0)]
            .records
            .len();
        assert_eq!(kept, TAIL_RECORDS, "the tail is bounded");
        // Behind the tail (which starts at 1,034): the file answers.
        let seen = read_until(bus.clone(), "g", half).await;
        assert_eq!(seen, (0..1100).collect::<Vec<_>>());
        assert_eq!(bus.inner.tail_reads.load(Relaxed), 0);
        // From 1,100, inside the tail.
        let seen = read_until(bus.clone(), "g", total).await;
        assert_eq!(seen, (1100..total).collect::<Vec<_>>());
        assert!(bus.inner.tail_reads.load(Relaxed) > 0, "the tail answered");
        drop(bus);

        // Behind at a restart: the file, then, caught up, the new tail.
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path(), 1).unwrap();
        publish_all(bus.clone(), 0, total).await;
        let seen = read_until(bus.clone(), "g", half).await;
        assert_eq!(seen, (0..1100).collect::<Vec<_>>());
        drop(bus);
        let bus = EmbeddedBus::open(dir.path(), 1).unwrap();
        publish_all(bus.clone(), total, total + 5).await;
        let seen = read_until(bus.clone(), "g", total + 5).await;
        assert_eq!(seen, (1100..total + 5).collect::<Vec<_>>());
        // Caught up: what comes next is read from the new tail.
        let before = bus.inner.tail_reads.load(Relaxed);
        publish_all(bus.clone(), total + 5, total + 10).await;
        let seen = read_until(bus.clone(), "g", total + 10).await;
        assert_eq!(seen, (total + 5..total + 10).collect::<Vec<_>>());
        assert!(
            bus.inner.tail_reads.load(Relaxed) > before,
            "the new tail answered"
        );
    }
}
