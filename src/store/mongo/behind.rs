//! The writes an append leaves behind it: each message's key by id
//! (`message_keys`, `id:<message id>`) and each conversation's `last_seq`
//! (`seqs`). Both are indexes over `messages`, which an append writes before
//! it answers, so the sequencer pushes a batch after two round trips to the
//! store (the client keys, then the messages) instead of after all four
//! kinds of write: on FerretDB the `seqs` upserts alone were one
//! `update_one` per conversation of the batch. Neither index is needed for
//! correctness, only for speed, so losing one costs a read and never a
//! message:
//!
//! - a missing `last_seq` (or one left behind) is found by probing
//!   `messages` past it ([`super::MongoStore::probe_last_seqs`]): seqs are
//!   dense and every append writes its messages in order, so the messages
//!   stored are always a prefix;
//! - a missing id key makes `message_by_id` wait for what is queued here,
//!   then scan and write the key back.
//!
//! One task writes them, in the order the appends queued them, so two
//! raises of the same `seqs` document never race (FerretDB applies an
//! update by rewriting the whole document); what queued up while it wrote
//! is merged into its next write, so under load a conversation's
//! `last_seq` is raised once per write, not once per append. The queue holds at most
//! [`QUEUED`] appends; past that an append waits for room, which slows the
//! sequencer and so, through send admission's backlog bound, the senders.

use futures::{StreamExt, TryStreamExt, stream};
use mongodb::Database;
use mongodb::bson::{Document, doc};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Appends whose indexes may wait to be written at once; past it the next
/// append waits for room.
pub const QUEUED: usize = 64;

/// Id keys past which the writer stops merging queued appends into one
/// write (one `insert_many` of this many documents stays well inside a
/// server's message size).
const MERGED_KEYS: usize = 2_048;

/// Attempts at one append's indexes before they are given up (logged):
/// about half a minute with the backoff below. Given up costs a probe or a
/// scan later, not data.
const ATTEMPTS: u32 = 10;

/// What one append leaves to be written.
#[derive(Debug, Default)]
pub struct Indexes {
    /// `message_keys` documents `id:<message id>` → conversation and seq.
    pub id_keys: Vec<Document>,
    /// Conversation → the highest seq the append stored in it.
    pub last_seqs: HashMap<String, u64>,
}

enum Job {
    Write(Indexes),
    /// Answered once every job queued before it is done.
    Barrier(oneshot::Sender<()>),
}

/// The queue to the writer task; clones share it. The task ends when the
/// last clone is dropped.
#[derive(Clone, Debug)]
pub struct Behind {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Write(i) => write!(f, "Write({} id keys)", i.id_keys.len()),
            Job::Barrier(_) => f.write_str("Barrier"),
        }
    }
}

impl Behind {
    /// Starts the writer task on the current Tokio runtime.
    pub fn start(db: Database) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUED);
        tokio::spawn(write_all(db, queue));
        Self { jobs }
    }

    /// Queues `indexes`, waiting while [`QUEUED`] appends are queued. If
    /// the writer is gone (its runtime shut down) they are dropped: they
    /// are only indexes.
    pub async fn queue(&self, indexes: Indexes) {
        if indexes.id_keys.is_empty() && indexes.last_seqs.is_empty() {
            return;
        }
        let _ = self.jobs.send(Job::Write(indexes)).await;
    }

    /// Waits until everything queued before the call is written (or given
    /// up).
    pub async fn drain(&self) {
        let (done, written) = oneshot::channel();
        if self.jobs.send(Job::Barrier(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// Whether anything is queued or being written.
    pub fn busy(&self) -> bool {
        self.jobs.capacity() < self.jobs.max_capacity()
    }
}

/// Writes the jobs in the order queued, merging every job waiting when
/// the writer turns to the queue into one write: when appends come faster
/// than their indexes are written, each conversation's `last_seq` is raised
/// once for all of them, not once per append.
async fn write_all(db: Database, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut merged = Indexes::default();
        let mut barriers = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Barrier(done) => barriers.push(done),
                Job::Write(indexes) => merged.absorb(indexes),
            }
            if merged.id_keys.len() < MERGED_KEYS {
                next = queue.try_recv().ok();
            }
        }
        if !merged.id_keys.is_empty() || !merged.last_seqs.is_empty() {
            write_with_retries(&db, &merged).await;
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

impl Indexes {
    /// Notes that `conversation` holds `seq` (its `last_seq` is raised to
    /// the highest noted).
    pub fn raise(&mut self, conversation: &str, seq: u64) {
        let last = self.last_seqs.entry(conversation.to_owned()).or_insert(0);
        *last = (*last).max(seq);
    }

    /// Adds a later append's indexes to these.
    fn absorb(&mut self, later: Indexes) {
        self.id_keys.extend(later.id_keys);
        for (conversation, seq) in later.last_seqs {
            self.raise(&conversation, seq);
        }
    }
}

async fn write_with_retries(db: &Database, indexes: &Indexes) {
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        match write(db, indexes).await {
            Ok(()) => return,
            Err(e) if attempt == ATTEMPTS => {
                tracing::warn!(error = %e, "message indexes given up; reads will probe and scan for them");
                metrics::counter!("parley_store_indexes_given_up_total").increment(1);
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "writing message indexes failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn write(db: &Database, indexes: &Indexes) -> Result<(), mongodb::error::Error> {
    if !indexes.id_keys.is_empty() {
        match db
            .collection::<Document>("message_keys")
            .insert_many(&indexes.id_keys)
            .ordered(false)
            .await
        {
            Ok(_) => {}
            // Written by an earlier attempt or a replay: the key names the
            // same message either way.
            Err(e) if super::only_duplicates(&e) => {}
            Err(e) => return Err(e),
        }
    }
    // Raised one `update_one` per conversation, a few in flight, and not
    // as one `update` command of many statements: FerretDB 1.x on SQLite
    // runs those one after another and slower than linearly (measured:
    // 10 upserts took 10.7 ms as one command vs 9.2 ms one by one; 100 in
    // one command got no answer for over a minute and then a closed
    // connection).
    // Owned items: borrowed ones make the futures below not `Send` for
    // every lifetime (rustc's higher-ranked closure inference), and the
    // task must be.
    let raises: Vec<(String, u64)> = indexes
        .last_seqs
        .iter()
        .map(|(c, s)| (c.clone(), *s))
        .collect();
    let seqs = db.collection::<Document>("seqs");
    stream::iter(raises)
        .map(|(conversation, seq)| {
            let seqs = seqs.clone();
            async move {
                super::upsert_in(
                    &seqs,
                    &conversation,
                    doc! {"$max": {"last_seq": super::seq_bson(seq)}},
                )
                .await
            }
        })
        .buffer_unordered(super::LOOKUPS_IN_FLIGHT)
        .try_collect::<()>()
        .await
}
