//! Slow readers: clients that join through nginx, read for a while, then
//! stop reading, while a sender each writes to them throughout (a direct
//! message every 250 ms, 3.9 KB bodies, within the per-user send limit).
//! The senders' load is there before and after the readers stop, so the
//! healthy clients' p99 beside them compares like with like: the only
//! change is that the readers no longer read. The edge must close them as too
//! slow (4008) within 15 s although nginx sits between and buffers: when,
//! is read from the edges' `parley_edge_slow_consumers_closed_total`
//! counters; the close code from the readers' own sockets at the end.

use crate::ticker::write_every;
use futures::StreamExt;
use parley_server::client::{Socket, User, join};
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Time between two messages of one sender.
const SEND_EVERY: Duration = Duration::from_millis(250);
/// Body size of those messages, in bytes (the limit is 4,000 characters).
const BODY_BYTES: usize = 3900;
/// The close code of a client too slow to take what it is sent.
const TOO_SLOW: u16 = 4008;

/// Readers (reading until told to stop, then holding their sockets
/// unread), and their senders.
pub struct SlowReaders {
    reading: watch::Sender<bool>,
    readers: Vec<JoinHandle<Socket>>,
    stop: watch::Sender<bool>,
    senders: Vec<JoinHandle<()>>,
}

impl SlowReaders {
    /// Joins every reader, reading what it is sent until
    /// [`SlowReaders::stop_reading`], and starts a sender for each
    /// (`senders[i]` writes to `readers[i]`).
    pub async fn start(url: &str, readers: &[User], senders: &[User]) -> anyhow::Result<Self> {
        let (reading, reading_rx) = watch::channel(true);
        let mut sockets = Vec::new();
        for r in readers {
            let ws = join(url, &r.token).await?;
            sockets.push(tokio::spawn(read_until_stopped(ws, reading_rx.clone())));
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for (s, r) in senders.iter().zip(readers) {
            let ws = join(url, &s.token).await?;
            tasks.push(tokio::spawn(send(ws, r.id.clone(), stop_rx.clone())));
        }
        Ok(Self {
            reading,
            readers: sockets,
            stop,
            senders: tasks,
        })
    }

    /// From now on the readers read nothing.
    pub fn stop_reading(&self) {
        self.reading.send_replace(false);
    }

    /// Stops the senders, then reads each reader's socket to its end (at
    /// most `patience` in all) and answers how many were closed with 4008.
    pub async fn closed_as_slow(self, patience: Duration) -> usize {
        self.stop.send_replace(true);
        self.reading.send_replace(false);
        for t in self.senders {
            let _ = t.await;
        }
        let read_all = async {
            let mut slow = 0;
            for (i, reader) in self.readers.into_iter().enumerate() {
                let Ok(mut ws) = reader.await else { continue };
                let mut frames = 0usize;
                let ending = loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(Some(f)))) => {
                            if f.code == CloseCode::from(TOO_SLOW) {
                                slow += 1;
                            }
                            break format!("close {}", u16::from(f.code));
                        }
                        Some(Ok(Message::Close(None))) => break "close without a code".into(),
                        Some(Err(e)) => break format!("error: {e}"),
                        None => break "end of stream".into(),
                        Some(Ok(_)) => frames += 1,
                    }
                };
                eprintln!("slow reader {i}: {frames} frames unread, then {ending}");
            }
            slow
        };
        tokio::time::timeout(patience, read_all).await.unwrap_or(0)
    }
}

/// Reads `ws` while `reading` says so; then hands it back unread.
async fn read_until_stopped(mut ws: Socket, mut reading: watch::Receiver<bool>) -> Socket {
    while *reading.borrow_and_update() {
        tokio::select! {
            frame = ws.next() => if !matches!(frame, Some(Ok(_))) { break },
            _ = reading.changed() => {}
        }
    }
    ws
}

/// Writes to `to` every [`SEND_EVERY`] and drops whatever comes back (acks,
/// refusals, its own messages), until told to stop.
async fn send(mut ws: Socket, to: String, mut stop: watch::Receiver<bool>) {
    let body = "x".repeat(BODY_BYTES);
    let mut n = 0u64;
    write_every(&mut ws, SEND_EVERY, &mut stop, || {
        n += 1;
        json!({"type": "send_message", "to": to,
            "client_msg_id": format!("slow{n}"), "body": body})
    })
    .await;
}

/// The sum of `parley_edge_slow_consumers_closed_total` over the edges'
/// `/metrics` (an edge that does not answer counts 0).
pub async fn closed_total(http: &reqwest::Client, edges: &[String]) -> u64 {
    let mut total = 0.0;
    for edge in edges {
        let Ok(resp) = http
            .get(format!("{edge}/metrics"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = resp.text().await else {
            continue;
        };
        total += text
            .lines()
            .filter(|l| l.starts_with("parley_edge_slow_consumers_closed_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total as u64
}
