//! The client's ledger: every message it sent (by sender and
//! `client_msg_id`), what each ack answered, every change it asked for,
//! and the counters the report prints. Devices write it as they go; the
//! checker compares it with the server's history and the devices' views.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A message's identity from the client's side: (sender, `client_msg_id`).
pub type Key = (String, String);

/// One message as the ledger knows it.
#[derive(Debug, Clone)]
pub struct SendRecord {
    pub conversation: String,
    /// Global index of the device that sent it.
    pub device: usize,
    /// Its place in that device's sends (0, 1, 2, …).
    pub index: u64,
    /// Microseconds since the run began.
    pub first_sent_us: u64,
    /// When the first ack arrived, and in which server life (cycle).
    pub acked_us: Option<u64>,
    pub acked_cycle: Option<u64>,
    pub sent_cycle: u64,
    /// Every id an ack answered (a resend after a restart may be acked with
    /// a fresh id while the store keeps the first copy).
    pub ack_ids: BTreeSet<String>,
    pub attempts: u32,
    /// The refusal it was given up on (open-loop overload only).
    pub given_up: Option<String>,
}

/// What a change asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    Edit(String),
    Delete,
    React(String),
}

/// One edit, deletion or reaction asked for, sent with a `client_msg_id`
/// kept across its resends.
#[derive(Debug, Clone)]
pub struct ChangeRecord {
    pub conversation: String,
    /// The message changed, and its id as delivered.
    pub target: Key,
    pub target_id: String,
    /// Who asked and under which `client_msg_id`: the change's identity,
    /// as a message's.
    pub key: Key,
    pub kind: ChangeKind,
    /// The ids acks answered (each attempt that was acked is an entry).
    pub acked_ids: Vec<String>,
    pub attempts: u32,
}

/// Counters of what the clients went through.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub offered: u64,
    pub resends: u64,
    pub refusals: BTreeMap<String, u64>,
    pub unexpected: Vec<String>,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub live_gaps: u64,
    pub syncs: u64,
    pub ack_timeouts: u64,
    /// `internal` answers (a server error, not a refusal the protocol
    /// names for the situation), with what was sent and when.
    pub internal: Vec<String>,
}

/// The shared ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    pub sends: HashMap<Key, SendRecord>,
    pub changes: Vec<ChangeRecord>,
    /// Messages a change was already planned for, by kind tag.
    pub planned: HashSet<(Key, &'static str)>,
    pub counters: Counters,
}

/// The ledger behind a lock (held only for a few map operations), the run's
/// clock and the number of the server's current life.
#[derive(Debug, Clone)]
pub struct Shared {
    ledger: Arc<Mutex<Ledger>>,
    began: Instant,
    cycle: Arc<AtomicU64>,
}

impl Shared {
    /// A new ledger; the clock starts now.
    pub fn new() -> Self {
        Self {
            ledger: Arc::default(),
            began: Instant::now(),
            cycle: Arc::default(),
        }
    }

    /// The ledger; a poisoned lock (a device panicked) is still read.
    pub fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Microseconds since the run began.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.began.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The current server life (0 until the first restart).
    pub fn cycle(&self) -> u64 {
        self.cycle.load(Ordering::Relaxed)
    }

    /// Marks the start of a new server life.
    pub fn next_cycle(&self) -> u64 {
        self.cycle.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records a refusal by its code.
    pub fn refused(&self, code: &str) {
        *self
            .lock()
            .counters
            .refusals
            .entry(code.to_owned())
            .or_default() += 1;
    }

    /// Records an answer the protocol does not allow for what was sent.
    pub fn unexpected(&self, what: String) {
        let mut l = self.lock();
        if l.counters.unexpected.len() < 50 {
            l.counters.unexpected.push(what);
        }
    }

    /// Records the ack of a message: its id joins the ids acked for it.
    pub fn acked(&self, key: &Key, ack: &Value) {
        let (now, cycle) = (self.now_us(), self.cycle());
        let mut l = self.lock();
        if let Some(r) = l.sends.get_mut(key) {
            if let Some(id) = ack["id"].as_str() {
                r.ack_ids.insert(id.to_owned());
            }
            if r.acked_us.is_none() {
                r.acked_us = Some(now);
                r.acked_cycle = Some(cycle);
            }
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// What one device received, deduplicated by id.
#[derive(Debug, Default, Clone)]
pub struct DeviceView {
    pub device: usize,
    pub user: String,
    /// Message ids received per (sender, client_msg_id).
    pub got: HashMap<Key, BTreeSet<String>>,
    /// Change ids received per (sender, client_msg_id).
    pub changes_seen: HashMap<Key, BTreeSet<String>>,
    /// The seqs each message id was received with, per conversation.
    pub seqs: HashMap<String, HashMap<String, BTreeSet<u64>>>,
    /// The last seq received with none missing before it, per conversation.
    pub contiguous: HashMap<String, u64>,
    /// Send → first delivery here of other members' messages, in µs.
    pub latencies_us: Vec<u64>,
    /// The same deliveries with their times, for the fault suite's stall,
    /// resume and per-window percentile figures.
    pub deliveries: Vec<Delivery>,
}

/// One first delivery of another member's message to a device, while the
/// run was still sending.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// When it arrived, µs of the run's clock.
    pub at_us: u64,
    /// When the accepted attempt was sent, µs of the run's clock.
    pub sent_us: u64,
    /// Index into [`crate::world::World::conversations`].
    pub conversation: usize,
}
