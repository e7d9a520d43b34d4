//! Probe pairs: the server's own resume time after a fault, apart from the
//! devices' pace. A device takes its conversations in turn, so the next
//! message of one of them may be seconds after a fault however soon the
//! server is back; a probe sender writes to its reader every
//! [`SEND_EVERY`], so the first of its messages sent after a moment that
//! reaches the reader says when live delivery works again, within that
//! interval.
//!
//! Probes are not ledger clients: they do not resend or sync. A message
//! refused or left undelivered during the fault is simply not the first
//! one delivered after it; the devices' ledger says whether anything
//! acked was lost.

use crate::ledger::Shared;
use crate::ticker::{Ended, write_every};
use futures::StreamExt;
use parley_server::client::{User, join};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Time between two messages of one probe sender: within the per-user send
/// limit (100 per 10 s, one every 197 ms once its burst is spent).
pub const SEND_EVERY: Duration = Duration::from_millis(250);
/// [`Probes::steady`]: the latest delivery of each pair is this recent...
const STEADY_WITHIN: Duration = Duration::from_millis(1500);
/// ... and took less than this from send to delivery.
const STEADY_LATENCY: Duration = Duration::from_millis(1000);
/// Wait before joining again after a socket closed or could not be opened.
const REJOIN_AFTER: Duration = Duration::from_millis(100);
/// What a probe message's body starts with; the rest is its send time (µs
/// of the run's clock).
const PREFIX: &str = "probe ";

/// (sent, delivered) of every probe message the readers got, in µs of the
/// run's clock, per pair.
type Deliveries = Arc<Mutex<Vec<Vec<(u64, u64)>>>>;

/// The deliveries, whoever panicked while holding them (a reader's push
/// is complete or absent).
fn lock(deliveries: &Deliveries) -> std::sync::MutexGuard<'_, Vec<Vec<(u64, u64)>>> {
    deliveries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Running probe pairs.
pub struct Probes {
    deliveries: Deliveries,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Probes {
    /// Starts a sender and a reader for each pair (`senders[i]` writes to
    /// `readers[i]`), both through `url`, rejoining whenever their socket
    /// closes.
    pub fn start(url: &str, senders: &[User], readers: &[User], shared: &Shared) -> Self {
        let deliveries: Deliveries = Arc::new(Mutex::new(vec![Vec::new(); readers.len()]));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for (i, (s, r)) in senders.iter().zip(readers).enumerate() {
            tasks.push(tokio::spawn(send(
                url.to_owned(),
                s.token.clone(),
                r.id.clone(),
                shared.clone(),
                stop_rx.clone(),
            )));
            tasks.push(tokio::spawn(read(
                url.to_owned(),
                r.token.clone(),
                i,
                Arc::clone(&deliveries),
                shared.clone(),
                stop_rx.clone(),
            )));
        }
        Self {
            deliveries,
            stop,
            tasks,
        }
    }

    /// How long after `at` (µs) every pair had a message sent at or after
    /// `at` delivered, in ms; `None` if some pair had none.
    pub fn resume_ms(&self, at: u64) -> Option<u64> {
        let mut longest = 0;
        for pair in lock(&self.deliveries).iter() {
            let first = pair
                .iter()
                .filter(|(sent, _)| *sent >= at)
                .map(|(_, delivered)| *delivered)
                .min()?;
            longest = longest.max(first.saturating_sub(at));
        }
        Some(longest / 1000)
    }

    /// Waits (at most `patience`) until every pair's latest delivery was
    /// sent in the last [`STEADY_WITHIN`] and took less than
    /// [`STEADY_LATENCY`]: delivery is live again after a fault, with no
    /// backlog left in front of it. Answers whether it got there.
    pub async fn steady(&self, patience: Duration, shared: &Shared) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let now = shared.now_us();
            let steady = lock(&self.deliveries).iter().all(|pair| {
                pair.last().is_some_and(|(sent, delivered)| {
                    now.saturating_sub(*sent) < STEADY_WITHIN.as_micros() as u64
                        && delivered.saturating_sub(*sent) < STEADY_LATENCY.as_micros() as u64
                })
            });
            if steady {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(SEND_EVERY).await;
        }
    }

    /// Stops every sender and reader.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn send(
    url: String,
    token: String,
    to: String,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    while !*stop.borrow() {
        let Ok(mut ws) = join(&url, &token).await else {
            tokio::time::sleep(REJOIN_AFTER).await;
            continue;
        };
        let ended = write_every(&mut ws, SEND_EVERY, &mut stop, || {
            n += 1;
            json!({"type": "send_message", "to": to,
                "client_msg_id": format!("probe{n}"),
                "body": format!("{PREFIX}{}", shared.now_us())})
        })
        .await;
        if ended == Ended::Stopped {
            return;
        }
        tokio::time::sleep(REJOIN_AFTER).await;
    }
}

async fn read(
    url: String,
    token: String,
    pair: usize,
    deliveries: Deliveries,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let Ok(mut ws) = join(&url, &token).await else {
            tokio::time::sleep(REJOIN_AFTER).await;
            continue;
        };
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(sent) = probe_sent(&text) {
                            let now = shared.now_us();
                            if let Some(list) = lock(&deliveries).get_mut(pair) {
                                list.push((sent, now));
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
        tokio::time::sleep(REJOIN_AFTER).await;
    }
}

/// The send time carried by a `new_message` push of a probe.
fn probe_sent(text: &str) -> Option<u64> {
    let frame: Value = serde_json::from_str(text).ok()?;
    if frame["type"] != "new_message" {
        return None;
    }
    frame["message"]["body"]
        .as_str()?
        .strip_prefix(PREFIX)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_probe_messages_carry_a_send_time() {
        let push = json!({"type": "new_message", "message": {"body": "probe 1234"}});
        assert_eq!(probe_sent(&push.to_string()), Some(1234));
        let other = json!({"type": "new_message", "message": {"body": "hello"}});
        assert_eq!(probe_sent(&other.to_string()), None);
        let ack = json!({"type": "ack", "message": {"body": "probe 1"}});
        assert_eq!(probe_sent(&ack.to_string()), None);
    }
}
