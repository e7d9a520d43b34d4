//! Light WebSocket clients for the reconnect storm: each joins through
//! nginx, waits for `connected`, then only reads (answering pings) until
//! its connection drops, and reconnects after a backoff with jitter (first
//! attempt within 250 ms, then doubling up to 2 s, each drawn from half to
//! one and a half times the step), as docs/protocol.md asks of clients. The
//! number connected is a watch the orchestrator awaits; every handshake
//! nginx answers with 502 is recorded with its time.

use crate::ledger::Shared;
use futures::{SinkExt, StreamExt};
use parley_server::client::User;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message};

/// Longest a handshake plus `join` may take before the attempt counts as
/// failed and is retried.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry within this; the step doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The storm's clients.
pub struct Storm {
    pub clients: usize,
    connected: watch::Receiver<usize>,
    /// Times (µs of the run's clock) of handshakes answered 502.
    http502: Arc<Mutex<Vec<u64>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Storm {
    /// Starts `clients` clients of `url` spread evenly over `users` (each
    /// user holds at most `clients / users` rounded up sessions: keep it
    /// well under the per-user session limit, 20, since the sessions of a
    /// killed edge stay counted until they expire).
    pub fn start(url: &str, users: &[User], clients: usize, clock: &Shared) -> Self {
        let (count_tx, connected) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let (stop, stop_rx) = watch::channel(false);
        let http502 = Arc::new(Mutex::new(Vec::new()));
        let ws_url = format!("{}/ws", url.replacen("http", "ws", 1));
        let tasks = (0..clients)
            .map(|i| {
                let c = Client {
                    ws_url: ws_url.clone(),
                    token: users[i % users.len().max(1)].token.clone(),
                    clock: clock.clone(),
                    count: count_tx.clone(),
                    http502: http502.clone(),
                    stop: stop_rx.clone(),
                    rng: (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                };
                tokio::spawn(c.run())
            })
            .collect();
        Self {
            clients,
            connected,
            http502,
            stop,
            tasks,
        }
    }

    /// How many are connected (joined) now.
    pub fn connected(&self) -> usize {
        *self.connected.borrow()
    }

    /// Waits until at least `n` are connected, at most `patience`; answers
    /// whether they were.
    pub async fn reached(&mut self, n: usize, patience: Duration) -> bool {
        tokio::time::timeout(patience, self.connected.wait_for(|&c| c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until fewer than `n` are connected (the fault reached them),
    /// at most `patience`.
    pub async fn fell_below(&mut self, n: usize, patience: Duration) -> bool {
        tokio::time::timeout(patience, self.connected.wait_for(|&c| c < n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Handshakes answered 502 outside the given intervals (µs), and in all.
    pub fn http502(&self, excused: &[(u64, u64)]) -> (usize, usize) {
        let times = self.http502.lock().unwrap_or_else(|e| e.into_inner());
        let outside = times
            .iter()
            .filter(|&&t| !excused.iter().any(|&(a, b)| t >= a && t <= b))
            .count();
        (outside, times.len())
    }

    /// Closes every client.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Client {
    ws_url: String,
    token: String,
    clock: Shared,
    count: Arc<watch::Sender<usize>>,
    http502: Arc<Mutex<Vec<u64>>>,
    stop: watch::Receiver<bool>,
    rng: u64,
}

impl Client {
    fn jitter(&mut self, step: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // Half to one and a half times the step.
        step / 2 + step.mul_f64((self.rng % 1000) as f64 / 1000.0)
    }

    async fn run(mut self) {
        let mut step = FIRST_BACKOFF;
        let mut first = true;
        while !*self.stop.borrow() {
            if !first {
                let pause = self.jitter(step);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.stop.changed() => break,
                }
            }
            first = false;
            let Some(mut ws) = self.join().await else {
                step = (step * 2).min(MAX_BACKOFF);
                continue;
            };
            step = FIRST_BACKOFF;
            self.count.send_modify(|n| *n += 1);
            // Read until the connection drops (pings are answered while
            // reading) or the storm ends.
            let stopped = loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break false,
                        Some(Ok(_)) => {}
                    },
                    _ = self.stop.changed() => break true,
                }
            };
            self.count.send_modify(|n| *n = n.saturating_sub(1));
            if stopped {
                let _ = ws.close(None).await;
                break;
            }
        }
    }

    /// One attempt: handshake and `join`; a 502 is recorded.
    async fn join(&mut self) -> Option<parley_server::client::Socket> {
        let attempt =
            async {
                let (mut ws, _) =
                    match tokio_tungstenite::connect_async_with_config(&self.ws_url, None, true)
                        .await
                    {
                        Ok(ok) => ok,
                        Err(tungstenite::Error::Http(resp)) => {
                            if resp.status().as_u16() == 502 {
                                let now = self.clock.now_us();
                                self.http502
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(now);
                            }
                            return None;
                        }
                        Err(_) => return None,
                    };
                let join = json!({"type": "join", "token": self.token}).to_string();
                ws.send(Message::Text(join.into())).await.ok()?;
                while let Some(frame) = ws.next().await {
                    if let Message::Text(t) = frame.ok()? {
                        let v: Value = serde_json::from_str(&t).ok()?;
                        match v["type"].as_str() {
                            Some("connected") => return Some(ws),
                            Some("error") => return None,
                            _ => {}
                        }
                    }
                }
                None
            };
        tokio::time::timeout(JOIN_TIMEOUT, attempt)
            .await
            .ok()
            .flatten()
    }
}
