//! One device: a WebSocket of one user that behaves as docs/protocol.md
//! tells clients to. It sends at a steady pace (a window of unanswered
//! operations: 1 in the torture, many in the open-loop overload), resends
//! with the same `client_msg_id` on `unavailable`, `rate_limited`, a
//! missing ack or a dropped connection, `sync`s from its last seq per
//! conversation after every (re)connect and on a seq gap, and dedupes what
//! it receives by message id. It also edits, deletes and reacts to some
//! acked messages, and writes everything to the ledger.

use crate::ledger::{ChangeKind, ChangeRecord, Delivery, DeviceView, Key, SendRecord, Shared};
use crate::world::World;
use futures::{SinkExt, StreamExt};
use parley_server::client::{Socket, join_with};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How devices behave.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between two operations of one device.
    pub pace: Duration,
    /// Operations a device may have unanswered.
    pub window: usize,
    /// Open loop (overload): a new message every `pace` whatever is
    /// outstanding (the rest waits in the device's outbox), at most
    /// `in_flight` on the wire; a refusal holds the whole device back
    /// (backoff doubling from 50 ms to 1 s) before it resends with the same
    /// `client_msg_id`; once draining, what is not on the wire is given up.
    pub open_loop: bool,
    /// Attempts a device may have on the wire unanswered.
    pub in_flight: usize,
    /// Delivery latency is recorded for messages sent from this moment on
    /// (µs of the run's clock): not for older ones a first sync brings.
    pub latency_from_us: u64,
    /// An operation unanswered this long is sent again.
    pub ack_timeout: Duration,
    /// Edit, delete and react to some messages.
    pub changes: bool,
}

/// What the devices are to do now.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Send and change at the pace.
    Running,
    /// Issue nothing new; finish what is outstanding.
    Draining,
    /// Sync until every expected entry has arrived.
    Final(Arc<Expected>),
    /// Return the view.
    Stop,
}

/// What each user's devices must have at the end: the acked messages and
/// the acked changes of the user's conversations, each by (sender,
/// `client_msg_id`).
#[derive(Debug, Default)]
pub struct Expected {
    pub messages: HashMap<String, HashSet<Key>>,
    pub changes: HashMap<String, HashSet<Key>>,
}

/// A device's news for the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// Nothing outstanding any more (after [`Phase::Draining`]).
    Drained,
    /// Everything expected has arrived (after [`Phase::Final`]).
    Complete,
}

/// What a device is handed.
pub struct DeviceCtx {
    pub index: usize,
    pub user: usize,
    /// Which of its user's devices it is (0 reacts).
    pub local: usize,
    pub world: Arc<World>,
    pub shared: Shared,
    pub settings: Arc<Settings>,
    /// The server's current URL; `None` while it is down.
    pub url: watch::Receiver<Option<String>>,
    pub phase: watch::Receiver<Phase>,
    pub news: mpsc::UnboundedSender<(usize, Milestone)>,
    pub seed: u64,
}

enum OpKind {
    Send(Key),
    /// Index into the ledger's changes.
    Change(usize),
}

enum OpState {
    Sent(Instant),
    RetryAt(Instant),
}

struct Op {
    kind: OpKind,
    frame: Value,
    attempts: u32,
    state: OpState,
}

/// Why a session ended.
enum Ended {
    Dropped,
    Stop,
}

/// A device's state across its connections.
pub struct Device {
    ctx: DeviceCtx,
    view: DeviceView,
    ops: BTreeMap<u64, Op>,
    next_op: u64,
    next_index: u64,
    /// Changes planned on messages seen, not yet issued.
    planned: VecDeque<(String, Key, String, ChangeKind)>,
    /// Seqs received above the contiguous one, per conversation.
    above: HashMap<String, BTreeSet<u64>>,
    sync_ref: Option<String>,
    syncs: u64,
    last_sync: Instant,
    missing: Option<(HashSet<Key>, HashSet<Key>)>,
    drained_told: bool,
    complete_told: bool,
    rng: u64,
    /// Open loop: when the next message is due, and until when a refusal
    /// holds every send back (and how long the next one will).
    next_issue: Option<Instant>,
    held_until: Instant,
    busy_backoff: Duration,
}

/// The first hold after a refusal (open loop); it doubles up to
/// [`MAX_BUSY_BACKOFF`] while refusals go on and resets on an ack.
const BUSY_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BUSY_BACKOFF: Duration = Duration::from_secs(1);

impl Device {
    /// A device that has not connected yet.
    pub fn new(ctx: DeviceCtx) -> Self {
        let view = DeviceView {
            device: ctx.index,
            user: ctx.world.users[ctx.user].id.clone(),
            ..DeviceView::default()
        };
        let rng = ctx.seed ^ (ctx.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            ctx,
            view,
            ops: BTreeMap::new(),
            next_op: 0,
            next_index: 0,
            planned: VecDeque::new(),
            above: HashMap::new(),
            sync_ref: None,
            syncs: 0,
            last_sync: Instant::now(),
            missing: None,
            drained_told: false,
            complete_told: false,
            rng: rng | 1,
            next_issue: None,
            held_until: Instant::now(),
            busy_backoff: BUSY_BACKOFF,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: enough to spread devices over conversations.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Connects, runs sessions until [`Phase::Stop`], answers the view.
    pub async fn run(mut self) -> DeviceView {
        let mut first = true;
        let mut backoff = Duration::from_millis(50);
        let mut connected_at_stop = false;
        loop {
            if matches!(*self.ctx.phase.borrow(), Phase::Stop) {
                break;
            }
            let url = self.ctx.url.borrow_and_update().clone();
            let Some(url) = url else {
                // Down: wait for the restart (or the end).
                tokio::select! {
                    _ = self.ctx.url.changed() => {}
                    _ = self.ctx.phase.changed() => {}
                }
                continue;
            };
            let token = self.ctx.world.users[self.ctx.user].token.clone();
            let joined =
                tokio::time::timeout(Duration::from_secs(10), join_with(&url, &token)).await;
            let ws = match joined {
                Ok(Ok((ws, _))) => ws,
                _ => {
                    self.ctx.shared.lock().counters.connect_failures += 1;
                    tokio::select! {
                        _ = self.ctx.url.changed() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            if !first {
                self.ctx.shared.lock().counters.reconnects += 1;
            }
            first = false;
            if let Ended::Stop = self.session(ws).await {
                connected_at_stop = true;
                break;
            }
        }
        if let Some((m, c)) = &self.missing
            && (!m.is_empty() || !c.is_empty())
        {
            // What the checker will count as undelivered, with what this
            // device went through, to tell a stuck client from a server
            // that does not deliver.
            eprintln!(
                "device {} incomplete at the end: {} messages and {} changes missing, {} syncs, sync pending: {}, {} unanswered operations, connected: {connected_at_stop}",
                self.ctx.index,
                m.len(),
                c.len(),
                self.syncs,
                self.sync_ref.is_some(),
                self.ops.len()
            );
        }
        self.view
    }

    async fn session(&mut self, mut ws: Socket) -> Ended {
        self.sync_ref = None;
        // The final phase may have begun while this device was reconnecting.
        if let Phase::Final(expected) = self.phase()
            && self.missing.is_none()
        {
            self.start_final(&expected);
        }
        let mut out = vec![self.sync_frame()];
        // Everything unanswered goes again, in order, with the same ids.
        let now = Instant::now();
        for op in self.ops.values_mut() {
            op.state = OpState::RetryAt(now);
        }
        out.extend(self.due(now));
        let mut tick = tokio::time::interval(self.ctx.settings.pace);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            for frame in out.drain(..) {
                if ws
                    .send(Message::Text(frame.to_string().into()))
                    .await
                    .is_err()
                {
                    return Ended::Dropped;
                }
            }
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<Value>(&t) {
                        Ok(v) => out = self.on_frame(&v),
                        Err(e) => self.ctx.shared.unexpected(format!("undecodable frame: {e}")),
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ended::Dropped,
                    Some(Ok(_)) => {}
                },
                _ = tick.tick() => out = self.on_tick(),
                changed = self.ctx.phase.changed() => {
                    if changed.is_err() {
                        return Ended::Stop;
                    }
                    let phase = self.ctx.phase.borrow_and_update().clone();
                    match phase {
                        Phase::Stop => return Ended::Stop,
                        Phase::Final(expected) => {
                            self.start_final(&expected);
                            if self.sync_ref.is_none() {
                                out.push(self.sync_frame());
                            }
                        }
                        Phase::Running | Phase::Draining => {}
                    }
                }
            }
            self.tell();
        }
    }

    fn phase(&self) -> Phase {
        self.ctx.phase.borrow().clone()
    }

    fn tell(&mut self) {
        let phase = self.phase();
        if !matches!(phase, Phase::Running) && self.ops.is_empty() && !self.drained_told {
            self.drained_told = true;
            let _ = self.ctx.news.send((self.ctx.index, Milestone::Drained));
        }
        if let Some((m, c)) = &self.missing
            && m.is_empty()
            && c.is_empty()
            && !self.complete_told
        {
            self.complete_told = true;
            let _ = self.ctx.news.send((self.ctx.index, Milestone::Complete));
        }
    }

    fn start_final(&mut self, expected: &Expected) {
        let user = &self.view.user;
        let mut messages = expected.messages.get(user).cloned().unwrap_or_default();
        messages.retain(|k| !self.view.got.contains_key(k));
        let mut changes = expected.changes.get(user).cloned().unwrap_or_default();
        changes.retain(|c| !self.view.changes_seen.contains_key(c));
        self.missing = Some((messages, changes));
    }

    fn sync_frame(&mut self) -> Value {
        self.syncs += 1;
        self.last_sync = Instant::now();
        let reference = format!("s{}", self.syncs);
        self.sync_ref = Some(reference.clone());
        self.ctx.shared.lock().counters.syncs += 1;
        json!({"type": "sync", "ref": reference, "since": self.view.contiguous})
    }

    fn on_tick(&mut self) -> Vec<Value> {
        let now = Instant::now();
        let mut out = self.due(now);
        let timeout = self.ctx.settings.ack_timeout;
        let mut timed_out = 0;
        for op in self.ops.values_mut() {
            if let OpState::Sent(at) = op.state
                && now.duration_since(at) > timeout
            {
                op.state = OpState::RetryAt(now);
                timed_out += 1;
            }
        }
        if timed_out > 0 {
            self.ctx.shared.lock().counters.ack_timeouts += timed_out;
            out.extend(self.due(now));
        }
        match self.phase() {
            Phase::Running if self.ctx.settings.open_loop => {
                // Catch up on ticks that came late, so the offered rate
                // holds while the client itself is slowed down.
                let pace = self.ctx.settings.pace;
                let mut next = self.next_issue.unwrap_or(now);
                let mut issued = 0;
                while next <= now && issued < 64 {
                    out.extend(self.issue());
                    next += pace;
                    issued += 1;
                }
                // Too far behind (the client starved): start afresh.
                if next + pace * 64 < now {
                    next = now;
                }
                self.next_issue = Some(next);
            }
            Phase::Running => {
                if self.ops.len() < self.ctx.settings.window {
                    out.extend(self.issue());
                }
            }
            Phase::Draining if self.ctx.settings.open_loop => self.give_up_outbox(),
            Phase::Final(_) => {
                let incomplete = self
                    .missing
                    .as_ref()
                    .is_some_and(|(m, c)| !m.is_empty() || !c.is_empty());
                // Not there yet and no answer pending: the sequencer may be
                // catching up; ask again now and then.
                if incomplete
                    && self.sync_ref.is_none()
                    && self.last_sync.elapsed() > Duration::from_secs(2)
                {
                    out.push(self.sync_frame());
                }
            }
            Phase::Draining | Phase::Stop => {}
        }
        // A sync unanswered for long is asked again (its answer, should it
        // still come, is then ignored).
        if self.sync_ref.is_some() && self.last_sync.elapsed() > self.ctx.settings.ack_timeout {
            self.ctx.shared.lock().counters.ack_timeouts += 1;
            out.push(self.sync_frame());
        }
        if self.sync_ref.is_none()
            && self.above.values().any(|s| !s.is_empty())
            && self.last_sync.elapsed() > Duration::from_millis(500)
        {
            out.push(self.sync_frame());
        }
        out
    }

    /// The frames of the operations whose retry time has come (oldest
    /// first, at most `in_flight` on the wire, none while held back).
    fn due(&mut self, now: Instant) -> Vec<Value> {
        let mut out = Vec::new();
        if now < self.held_until {
            return out;
        }
        let mut on_wire = self
            .ops
            .values()
            .filter(|op| matches!(op.state, OpState::Sent(_)))
            .count();
        let sent_us = self.ctx.shared.now_us();
        let mut resent = Vec::new();
        for (no, op) in self.ops.iter_mut() {
            if on_wire >= self.ctx.settings.in_flight {
                break;
            }
            if let OpState::RetryAt(at) = op.state
                && at <= now
            {
                op.attempts += 1;
                if op.attempts > 1 {
                    resent.push(*no);
                }
                op.state = OpState::Sent(now);
                on_wire += 1;
                let mut frame = op.frame.clone();
                frame["ref"] = json!(format!("o{no}a{}", op.attempts));
                if let OpKind::Send((_, cmid)) = &op.kind {
                    // Each attempt carries its own send time: the stored
                    // body is the accepted attempt's, so a recipient
                    // measures delivery from the send the server took.
                    frame["body"] = json!(format!("{cmid} t{sent_us}"));
                }
                out.push(frame);
            }
        }
        if !resent.is_empty() {
            let mut l = self.ctx.shared.lock();
            l.counters.resends += resent.len() as u64;
            for op in resent.iter().filter_map(|no| self.ops.get(no)) {
                match &op.kind {
                    OpKind::Send(key) => {
                        if let Some(r) = l.sends.get_mut(key) {
                            r.attempts = r.attempts.max(op.attempts);
                        }
                    }
                    OpKind::Change(i) => {
                        if let Some(c) = l.changes.get_mut(*i) {
                            c.attempts = c.attempts.max(op.attempts);
                        }
                    }
                }
            }
        }
        out
    }

    /// A new operation: a planned change first, else a message.
    fn issue(&mut self) -> Vec<Value> {
        let no = self.next_op;
        self.next_op += 1;
        let now = Instant::now();
        let (kind, frame) = if let Some((conversation, target, target_id, change)) =
            self.planned.pop_front()
        {
            // Kept in the frame, so every resend carries the same key.
            let cmid = format!("d{}c{no}", self.ctx.index);
            let frame = match &change {
                ChangeKind::Edit(body) => json!({"type": "edit_message",
                    "conversation_id": conversation, "message_id": target_id, "body": body}),
                ChangeKind::Delete => json!({"type": "delete_message",
                    "conversation_id": conversation, "message_id": target_id}),
                ChangeKind::React(emoji) => json!({"type": "react",
                    "conversation_id": conversation, "message_id": target_id, "emoji": emoji}),
            };
            let mut frame = frame;
            frame["client_msg_id"] = json!(cmid);
            let mut l = self.ctx.shared.lock();
            l.changes.push(ChangeRecord {
                conversation,
                target,
                target_id,
                key: (self.view.user.clone(), cmid),
                kind: change,
                acked_ids: Vec::new(),
                attempts: 1,
            });
            (OpKind::Change(l.changes.len() - 1), frame)
        } else {
            let mine = self.ctx.world.conversations_of(self.ctx.user);
            if mine.is_empty() {
                return Vec::new();
            }
            let c = mine[(self.random() % mine.len() as u64) as usize];
            let conversation = &self.ctx.world.conversations[c];
            let index = self.next_index;
            self.next_index += 1;
            let cmid = format!("d{}n{index}", self.ctx.index);
            let now_us = self.ctx.shared.now_us();
            let body = format!("{cmid} t{now_us}");
            let mut frame = json!({"type": "send_message", "client_msg_id": cmid, "body": body});
            if conversation.direct {
                let peer = conversation
                    .members
                    .iter()
                    .find(|&&m| m != self.ctx.user)
                    .copied()
                    .unwrap_or(self.ctx.user);
                frame["to"] = json!(self.ctx.world.users[peer].id);
            } else {
                frame["conversation_id"] = json!(conversation.id);
            }
            let key = (self.view.user.clone(), cmid);
            let cycle = self.ctx.shared.cycle();
            let mut l = self.ctx.shared.lock();
            l.counters.offered += 1;
            l.sends.insert(
                key.clone(),
                SendRecord {
                    conversation: conversation.id.clone(),
                    device: self.ctx.index,
                    index,
                    first_sent_us: now_us,
                    acked_us: None,
                    acked_cycle: None,
                    sent_cycle: cycle,
                    ack_ids: BTreeSet::new(),
                    attempts: 1,
                    given_up: None,
                },
            );
            (OpKind::Send(key), frame)
        };
        self.ops.insert(
            no,
            Op {
                kind,
                frame,
                attempts: 0,
                state: OpState::RetryAt(now),
            },
        );
        self.due(now)
    }

    fn on_frame(&mut self, v: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        match v["type"].as_str().unwrap_or_default() {
            "ack" | "error" => self.on_answer(v, &mut out),
            "new_message" => self.on_message(&v["message"], &mut out),
            "message_edited" | "message_deleted" | "reaction" => {
                if let (Some(id), Some(by), Some(cmid)) = (
                    v["id"].as_str(),
                    v["by"].as_str(),
                    v["client_msg_id"].as_str(),
                ) {
                    let key = (by.to_owned(), cmid.to_owned());
                    if let Some((_, c)) = &mut self.missing {
                        c.remove(&key);
                    }
                    self.view
                        .changes_seen
                        .entry(key)
                        .or_default()
                        .insert(id.to_owned());
                }
                let conversation = v["conversation_id"].as_str().unwrap_or_default().to_owned();
                self.on_seq(&conversation, v["seq"].as_u64().unwrap_or(0), &mut out);
            }
            _ => {}
        }
        out
    }

    fn on_answer(&mut self, v: &Value, out: &mut Vec<Value>) {
        let reference = v["ref"].as_str().unwrap_or_default();
        if Some(reference) == self.sync_ref.as_deref() {
            if v["type"] == "error" {
                self.ctx.shared.refused(v["code"].as_str().unwrap_or("?"));
                self.sync_ref = None;
                return;
            }
            self.sync_ref = None;
            let truncated = v["truncated"].as_array().is_some_and(|t| !t.is_empty());
            if truncated {
                out.push(self.sync_frame());
            }
            return;
        }
        if v["type"] == "ack"
            && let Some(cmid) = v["message"]["client_msg_id"].as_str()
        {
            // Any ack of a message counts, even one of an earlier attempt.
            let key = (self.view.user.clone(), cmid.to_owned());
            self.ctx.shared.acked(&key, &v["message"]);
        }
        let Some(no) = reference
            .strip_prefix('o')
            .and_then(|r| r.split('a').next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return;
        };
        let Some(op) = self.ops.get_mut(&no) else {
            return; // an earlier attempt of an operation already answered
        };
        if v["type"] == "ack" {
            if let OpKind::Change(i) = op.kind
                && let Some(id) = v["change"]["id"].as_str()
                && let Some(c) = self.ctx.shared.lock().changes.get_mut(i)
            {
                c.acked_ids.push(id.to_owned());
            }
            self.ops.remove(&no);
            self.busy_backoff = BUSY_BACKOFF;
            return;
        }
        let code = v["code"].as_str().unwrap_or("?").to_owned();
        self.ctx.shared.refused(&code);
        if code == "internal" {
            let at = (self.ctx.shared.now_us() / 1000, self.ctx.shared.cycle());
            let mut l = self.ctx.shared.lock();
            if l.counters.internal.len() < 20 {
                l.counters.internal.push(format!(
                    "device {} at {} ms in server life {}: {v} for {}",
                    self.ctx.index, at.0, at.1, op.frame
                ));
            }
        }
        let retry = match code.as_str() {
            "unavailable" | "internal" => Some(Duration::from_millis(100)),
            "rate_limited" => Some(Duration::from_millis(1000)),
            _ => None,
        };
        let open_loop = self.ctx.settings.open_loop;
        let running = matches!(*self.ctx.phase.borrow(), Phase::Running);
        match (retry, &op.kind) {
            (Some(_), OpKind::Send(key)) if open_loop && !running => {
                // Draining: the run is over, the refused message is not
                // acked and is given up (counted, not checked).
                if let Some(r) = self.ctx.shared.lock().sends.get_mut(key) {
                    r.given_up = Some(code);
                }
                self.ops.remove(&no);
            }
            (Some(after), _) if open_loop => {
                // Server busy: hold every send back, then resend in order.
                // The other attempts already on the wire are refused too
                // and join the same hold rather than lengthening it.
                let now = Instant::now();
                op.state = OpState::RetryAt(now);
                if now >= self.held_until {
                    let hold = self.busy_backoff.max(after).min(MAX_BUSY_BACKOFF);
                    self.held_until = now + hold;
                    self.busy_backoff = (self.busy_backoff * 2).min(MAX_BUSY_BACKOFF);
                }
            }
            (Some(after), _) => op.state = OpState::RetryAt(Instant::now() + after),
            (None, _) => {
                self.ctx.shared.unexpected(format!(
                    "device {} got {v} for {}",
                    self.ctx.index, op.frame
                ));
                self.ops.remove(&no);
            }
        }
    }

    /// Open loop, draining: gives up the sends not on the wire (waiting in
    /// the outbox or to be resent); those on the wire get their answer.
    fn give_up_outbox(&mut self) {
        let waiting: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| {
                matches!(op.state, OpState::RetryAt(_)) && matches!(op.kind, OpKind::Send(_))
            })
            .map(|(&no, _)| no)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let mut l = self.ctx.shared.lock();
        for no in waiting {
            if let Some(Op {
                kind: OpKind::Send(key),
                attempts,
                ..
            }) = self.ops.remove(&no)
                && let Some(r) = l.sends.get_mut(&key)
            {
                r.given_up = Some(if attempts == 0 { "unsent" } else { "refused" }.to_owned());
            }
        }
    }

    fn on_message(&mut self, m: &Value, out: &mut Vec<Value>) {
        let (Some(id), Some(from), Some(cmid), Some(conversation)) = (
            m["id"].as_str(),
            m["from"].as_str(),
            m["client_msg_id"].as_str(),
            m["conversation_id"].as_str(),
        ) else {
            return;
        };
        let key = (from.to_owned(), cmid.to_owned());
        let ids = self.view.got.entry(key.clone()).or_default();
        let first = ids.is_empty();
        ids.insert(id.to_owned());
        if let Some((missing, _)) = &mut self.missing {
            missing.remove(&key);
        }
        let running = matches!(self.phase(), Phase::Running);
        if first && running && from != self.view.user {
            let sent_us = m["body"]
                .as_str()
                .and_then(|b| b.rsplit(" t").next())
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(sent) = sent_us
                && sent >= self.ctx.settings.latency_from_us
            {
                let now = self.ctx.shared.now_us();
                self.view.latencies_us.push(now.saturating_sub(sent));
                if let Some(&c) = self.ctx.world.by_id.get(conversation) {
                    self.view.deliveries.push(Delivery {
                        at_us: now,
                        sent_us: sent,
                        conversation: c,
                    });
                }
            }
        }
        if first && running && self.ctx.settings.changes && !m["deleted"].as_bool().unwrap_or(false)
        {
            self.plan_change(conversation, &key, id);
        }
        if let Some(seq) = m["seq"].as_u64() {
            self.view
                .seqs
                .entry(conversation.to_owned())
                .or_default()
                .entry(id.to_owned())
                .or_default()
                .insert(seq);
        }
        self.on_seq(conversation, m["seq"].as_u64().unwrap_or(0), out);
    }

    /// Plans a deletion (index ≡ 3 mod 10) or an edit (≡ 5) of this
    /// device's own messages, and a reaction (≡ 7) from the member after
    /// the sender (its first device).
    fn plan_change(&mut self, conversation: &str, key: &Key, id: &str) {
        let Some(index) = key.1.split_once('n').and_then(|(d, n)| {
            Some((
                d.strip_prefix('d')?.parse::<usize>().ok()?,
                n.parse::<u64>().ok()?,
            ))
        }) else {
            return;
        };
        let (device, n) = index;
        let world = &self.ctx.world;
        let (Some(&c), Some(sender)) = (world.by_id.get(conversation), world.user_index(&key.0))
        else {
            return;
        };
        let change = match n % 10 {
            3 if device == self.ctx.index => ChangeKind::Delete,
            5 if device == self.ctx.index => ChangeKind::Edit(format!("edited {}", key.1)),
            7 if self.ctx.local == 0 && world.reactor(c, sender) == Some(self.ctx.user) => {
                ChangeKind::React(["👍", "🎉", "ok"][(n / 10 % 3) as usize].to_owned())
            }
            _ => return,
        };
        let tag = match change {
            ChangeKind::Edit(_) => "edit",
            ChangeKind::Delete => "delete",
            ChangeKind::React(_) => "react",
        };
        if !self.ctx.shared.lock().planned.insert((key.clone(), tag)) {
            return;
        }
        self.planned
            .push_back((conversation.to_owned(), key.clone(), id.to_owned(), change));
    }

    /// Tracks the contiguous seq of a conversation; a gap asks for a sync.
    fn on_seq(&mut self, conversation: &str, seq: u64, out: &mut Vec<Value>) {
        if seq == 0 {
            return;
        }
        let last = self
            .view
            .contiguous
            .entry(conversation.to_owned())
            .or_insert(0);
        if seq <= *last {
            return;
        }
        let above = self.above.entry(conversation.to_owned()).or_default();
        if seq == *last + 1 {
            *last = seq;
            while above.remove(&(*last + 1)) {
                *last += 1;
            }
            return;
        }
        above.insert(seq);
        if self.sync_ref.is_none() {
            self.ctx.shared.lock().counters.live_gaps += 1;
            out.push(self.sync_frame());
        }
    }
}
