//! The checker: reads every conversation's history over REST and compares
//! it with the ledger and with what each device received.
//!
//! Messages and changes are matched by (sender, `client_msg_id`), the key
//! the store dedupes on: a resend after a restart may be acked with a fresh
//! id while the store keeps the first copy, so an ack id that is not the
//! stored id is counted apart (`id_mismatch`, `changes_id_mismatch`), not
//! as a loss. Every acked change must be stored and applied exactly once,
//! and no change may be stored that was never acked (clients resend each
//! until it is answered).

use crate::ledger::{ChangeKind, Counters, DeviceView, Key, Ledger};
use crate::world::World;
use anyhow::{Context, bail};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

/// Every entry of a conversation's log, oldest first.
pub async fn history(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    conversation: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut pages: Vec<Vec<Value>> = Vec::new();
    let mut before = 0u64;
    for _ in 0..10_000 {
        let mut request = format!("{url}/api/conversations/{conversation}/messages?limit=200");
        if before > 0 {
            write!(request, "&before_seq={before}")?;
        }
        // 503 (a backend still coming back after a fault) and 502 (no edge
        // up yet) say "retry", as they do to any client: for up to 30 s.
        let mut patience = 150;
        let resp = loop {
            let resp = http.get(&request).bearer_auth(token).send().await?;
            let retry = matches!(resp.status().as_u16(), 502 | 503);
            if !retry || patience == 0 {
                break resp;
            }
            patience -= 1;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        if !resp.status().is_success() {
            bail!("history of {conversation}: {}", resp.status());
        }
        let body: Value = resp.json().await?;
        let page = body["messages"].as_array().context("no messages")?.clone();
        let has_more = body["has_more"].as_bool().unwrap_or(false);
        before = page.first().and_then(|m| m["seq"].as_u64()).unwrap_or(0);
        let empty = page.is_empty();
        pages.push(page);
        if !has_more || empty || before <= 1 {
            break;
        }
    }
    Ok(pages.into_iter().rev().flatten().collect())
}

/// The figures of one conversation or of the whole run.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub acked: u64,
    pub stored: u64,
    pub lost: u64,
    pub dup: u64,
    pub gaps: u64,
    pub reorders: u64,
    pub id_mismatch: u64,
    pub stored_unacked: u64,
    pub undelivered: u64,
    pub dup_delivered: u64,
    /// Messages a device was shown under a seq other than the stored one
    /// (a replay after a crash must assign the seqs it assigned before).
    pub seq_changed: u64,
    pub changes_acked: u64,
    pub changes_lost: u64,
    pub changes_dup: u64,
    pub changes_wrong: u64,
    pub changes_unacked_applied: u64,
    pub changes_id_mismatch: u64,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.acked += o.acked;
        self.stored += o.stored;
        self.lost += o.lost;
        self.dup += o.dup;
        self.gaps += o.gaps;
        self.reorders += o.reorders;
        self.id_mismatch += o.id_mismatch;
        self.stored_unacked += o.stored_unacked;
        self.undelivered += o.undelivered;
        self.dup_delivered += o.dup_delivered;
        self.seq_changed += o.seq_changed;
        self.changes_acked += o.changes_acked;
        self.changes_lost += o.changes_lost;
        self.changes_dup += o.changes_dup;
        self.changes_wrong += o.changes_wrong;
        self.changes_unacked_applied += o.changes_unacked_applied;
        self.changes_id_mismatch += o.changes_id_mismatch;
    }

    /// Whether nothing acked was lost, duplicated, left out or reordered.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.dup == 0
            && self.gaps == 0
            && self.reorders == 0
            && self.undelivered == 0
            && self.dup_delivered == 0
            && self.seq_changed == 0
            && self.changes_lost == 0
            && self.changes_dup == 0
            && self.changes_wrong == 0
            && self.changes_unacked_applied == 0
    }

    /// `key=value` pairs for the summary line.
    pub fn pairs(&self) -> String {
        format!(
            "acked={} stored={} lost={} dup={} gaps={} reorders={} undelivered={} dup_delivered={} seq_changed={} id_mismatch={} stored_unacked={} changes_acked={} changes_lost={} changes_dup={} changes_wrong={} changes_unacked_applied={} changes_id_mismatch={}",
            self.acked,
            self.stored,
            self.lost,
            self.dup,
            self.gaps,
            self.reorders,
            self.undelivered,
            self.dup_delivered,
            self.seq_changed,
            self.id_mismatch,
            self.stored_unacked,
            self.changes_acked,
            self.changes_lost,
            self.changes_dup,
            self.changes_wrong,
            self.changes_unacked_applied,
            self.changes_id_mismatch,
        )
    }
}

/// The checker's result: per conversation, in total, and the first
/// findings in words.
#[derive(Debug, Default)]
pub struct Report {
    pub per_conversation: Vec<(String, Figures)>,
    pub total: Figures,
    pub findings: Vec<String>,
    pub counters: Counters,
}

impl Report {
    fn finding(&mut self, what: String) {
        if self.findings.len() < 40 {
            self.findings.push(what);
        }
    }
}

/// Compares the stored logs with the ledger and the devices' views.
pub fn check(
    world: &World,
    ledger: &Ledger,
    views: &[DeviceView],
    logs: &[(String, Vec<Value>)],
) -> Report {
    let mut report = Report {
        counters: ledger.counters.clone(),
        ..Report::default()
    };
    for (conversation, log) in logs {
        let figures = check_conversation(world, ledger, views, conversation, log, &mut report);
        report.total.add(&figures);
        report
            .per_conversation
            .push((conversation.clone(), figures));
    }
    report
}

fn check_conversation(
    world: &World,
    ledger: &Ledger,
    views: &[DeviceView],
    conversation: &str,
    log: &[Value],
    report: &mut Report,
) -> Figures {
    let mut f = Figures::default();
    // Seqs dense from 1, each once.
    let seqs: Vec<u64> = log.iter().filter_map(|e| e["seq"].as_u64()).collect();
    for (i, &s) in seqs.iter().enumerate() {
        let want = i as u64 + 1;
        if s != want {
            f.gaps += 1;
            report.finding(format!("{conversation}: seq {s} at position {want}"));
            break;
        }
    }
    // Messages and changes by key.
    let mut stored: HashMap<Key, Vec<&Value>> = HashMap::new();
    let mut changes: HashMap<Key, Vec<&Value>> = HashMap::new();
    for e in log {
        let key = (
            e["from"].as_str().unwrap_or("").to_owned(),
            e["client_msg_id"].as_str().unwrap_or("").to_owned(),
        );
        let into = if e["kind"].is_string() {
            &mut changes
        } else {
            &mut stored
        };
        into.entry(key).or_default().push(e);
    }
    f.stored = stored.len() as u64;
    for (key, copies) in &stored {
        if copies.len() > 1 {
            f.dup += copies.len() as u64 - 1;
            report.finding(format!(
                "{conversation}: {key:?} stored {} times",
                copies.len()
            ));
        }
        let acked = ledger.sends.get(key).is_some_and(|r| r.acked_us.is_some());
        f.stored_unacked += u64::from(!acked);
    }
    // Every acked message stored, in its device's send order.
    let mut by_device: BTreeMap<usize, Vec<(u64, u64, u64, u64)>> = BTreeMap::new();
    for (key, r) in ledger
        .sends
        .iter()
        .filter(|(_, r)| r.conversation == conversation)
    {
        let Some(acked_us) = r.acked_us else { continue };
        f.acked += 1;
        let Some(copy) = stored.get(key).and_then(|c| c.first()) else {
            f.lost += 1;
            report.finding(format!(
                "LOST {conversation}: {key:?} (device {}, #{}, first sent at {} ms in server life {}, acked at {} ms in life {:?} after {} attempt(s), ack ids {:?})",
                r.device,
                r.index,
                r.first_sent_us / 1000,
                r.sent_cycle,
                acked_us / 1000,
                r.acked_cycle,
                r.attempts,
                r.ack_ids
            ));
            continue;
        };
        let id = copy["id"].as_str().unwrap_or("");
        if !r.ack_ids.contains(id) {
            f.id_mismatch += 1;
        }
        let seq = copy["seq"].as_u64().unwrap_or(0);
        by_device
            .entry(r.device)
            .or_default()
            .push((seq, r.index, r.first_sent_us, acked_us));
    }
    for (device, mut sent) in by_device {
        // A message first sent after another was acked must be stored
        // after it: walking down from the highest seq, the earliest ack
        // seen so far must come after this one's first send.
        sent.sort_unstable();
        let mut earliest_ack_above = u64::MAX;
        for &(seq, index, first_sent, acked) in sent.iter().rev() {
            if earliest_ack_above <= first_sent {
                f.reorders += 1;
                report.finding(format!(
                    "{conversation}: device {device} message #{index} (seq {seq}) stored before one acked before it was sent"
                ));
            }
            earliest_ack_above = earliest_ack_above.min(acked);
        }
    }
    check_changes(ledger, conversation, &stored, &changes, &mut f, report);
    check_deliveries(
        world,
        ledger,
        views,
        conversation,
        &stored,
        &changes,
        &mut f,
        report,
    );
    f
}

fn check_changes(
    ledger: &Ledger,
    conversation: &str,
    stored: &HashMap<Key, Vec<&Value>>,
    entries: &HashMap<Key, Vec<&Value>>,
    f: &mut Figures,
    report: &mut Report,
) {
    let mut acked = HashSet::new();
    for c in ledger
        .changes
        .iter()
        .filter(|c| c.conversation == conversation && !c.acked_ids.is_empty())
    {
        f.changes_acked += 1;
        acked.insert(&c.key);
        match entries.get(&c.key).map(Vec::as_slice).unwrap_or_default() {
            [] => {
                f.changes_lost += 1;
                report.finding(format!(
                    "LOST change {:?} ({:?} of {:?}, {} attempt(s), ack ids {:?})",
                    c.key, c.kind, c.target, c.attempts, c.acked_ids
                ));
            }
            [entry] => {
                let id = entry["id"].as_str().unwrap_or("");
                if c.acked_ids.iter().any(|a| a != id) {
                    f.changes_id_mismatch += 1;
                }
            }
            copies => {
                f.changes_dup += 1;
                report.finding(format!(
                    "change {:?} ({:?}) stored {} times",
                    c.key,
                    c.kind,
                    copies.len()
                ));
            }
        }
        let Some(m) = stored.get(&c.target).and_then(|m| m.first()) else {
            continue; // counted as lost above
        };
        let right = match &c.kind {
            ChangeKind::Delete => m["deleted"] == true && m["body"] == "",
            ChangeKind::Edit(body) => m["body"] == body.as_str() && m["edited_at"].is_u64(),
            ChangeKind::React(emoji) => m["reactions"][emoji]
                .as_array()
                .is_some_and(|users| users.iter().filter(|u| *u == c.key.0.as_str()).count() == 1),
        };
        if !right {
            f.changes_wrong += 1;
            report.finding(format!(
                "{conversation}: {:?} of {} by {} not shown once in {m}",
                c.kind, c.target_id, c.key.0
            ));
        }
    }
    for key in entries.keys().filter(|k| !acked.contains(k)) {
        f.changes_unacked_applied += 1;
        report.finding(format!(
            "{conversation}: change {key:?} stored, never acked"
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn check_deliveries(
    world: &World,
    ledger: &Ledger,
    views: &[DeviceView],
    conversation: &str,
    stored: &HashMap<Key, Vec<&Value>>,
    stored_changes: &HashMap<Key, Vec<&Value>>,
    f: &mut Figures,
    report: &mut Report,
) {
    let Some(&c) = world.by_id.get(conversation) else {
        return;
    };
    let members: HashSet<&str> = world.conversations[c]
        .members
        .iter()
        .map(|&m| world.users[m].id.as_str())
        .collect();
    let stored_seqs: HashMap<&str, u64> = stored
        .values()
        .flatten()
        .filter_map(|m| Some((m["id"].as_str()?, m["seq"].as_u64()?)))
        .collect();
    for view in views.iter().filter(|v| members.contains(v.user.as_str())) {
        for (id, seqs) in view.seqs.get(conversation).into_iter().flatten() {
            let Some(&stored_seq) = stored_seqs.get(id.as_str()) else {
                continue;
            };
            if seqs.iter().any(|s| *s != stored_seq) {
                f.seq_changed += 1;
                report.finding(format!(
                    "{conversation}: message {id} reached device {} as seq {seqs:?}, stored as {stored_seq}",
                    view.device
                ));
            }
        }
        for (key, _) in ledger
            .sends
            .iter()
            .filter(|(_, r)| r.conversation == conversation && r.acked_us.is_some())
        {
            match view.got.get(key).map(|ids| ids.len()).unwrap_or(0) {
                0 => {
                    f.undelivered += 1;
                    report.finding(format!(
                        "{conversation}: {key:?} never reached device {} (stored: {})",
                        view.device,
                        stored.contains_key(key)
                    ));
                }
                1 => {}
                n => {
                    f.dup_delivered += 1;
                    report.finding(format!(
                        "{conversation}: {key:?} reached device {} under {n} ids",
                        view.device
                    ));
                }
            }
        }
        for c in ledger
            .changes
            .iter()
            .filter(|c| c.conversation == conversation && !c.acked_ids.is_empty())
        {
            match view
                .changes_seen
                .get(&c.key)
                .map(BTreeSet::len)
                .unwrap_or(0)
            {
                0 if stored_changes.contains_key(&c.key) => {
                    f.undelivered += 1;
                    report.finding(format!(
                        "{conversation}: change {:?} ({:?}) never reached device {}",
                        c.key, c.kind, view.device
                    ));
                }
                0 | 1 => {}
                n => {
                    f.dup_delivered += 1;
                    report.finding(format!(
                        "{conversation}: change {:?} reached device {} under {n} ids",
                        c.key, view.device
                    ));
                }
            }
        }
        let last = view.contiguous.get(conversation).copied().unwrap_or(0);
        let stored_last = stored
            .values()
            .filter_map(|c| c.first()?["seq"].as_u64())
            .max()
            .unwrap_or(0);
        if last < stored_last {
            f.undelivered += 1;
            report.finding(format!(
                "{conversation}: device {} has every seq only up to {last} of at least {stored_last}",
                view.device
            ));
        }
    }
}
