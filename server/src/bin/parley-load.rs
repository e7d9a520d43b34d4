//! `parley-load`: the load generator and benchmark for a running Parley.
//!
//! - `chat`: pairs of users over real WebSockets; each sender keeps a window
//!   of unacknowledged messages in flight; the receiver measures send →
//!   `new_message` latency. Reports messages/s and p50/p99/max.
//! - `group`: one group of N members, every one online; one member sends
//!   with a window in flight; reports deliveries/s and, per message, the
//!   time from send to its last member (p50/p99/max), optionally with every
//!   member marking each message read.
//! - `idle`: opens N authenticated connections that stay idle and reports
//!   the server's resident memory per connection (from /proc, given its pid).
//!
//! Traffic goes only to the URL given (loopback in every script here); every
//! run is bounded by its counts and a deadline.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parley_server::client::{Socket, join, join_at, percentiles, register_many, rss_kib};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(
    name = "parley-load",
    about = "Load generator and benchmarks for Parley"
)]
struct Args {
    /// The edge (or nginx) to load.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// Give up after this many seconds, whatever the progress.
    #[arg(long, default_value_t = 300, global = true)]
    deadline_secs: u64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// 1:1 send → deliver throughput and latency.
    Chat {
        #[arg(long, default_value_t = 20)]
        pairs: usize,
        #[arg(long, default_value_t = 500)]
        messages: usize,
        /// Unacknowledged messages each sender keeps in flight.
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
    /// Open-loop overload: senders send on a fixed schedule whatever the
    /// answers, so the server sees the offered rate even past its capacity.
    /// Reports what was accepted, refused (by code) and delivered, send →
    /// deliver of accepted messages and the server's peak RSS.
    Flood {
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        /// Offered messages per second, over all senders.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// The server process whose RSS is sampled.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Fan-out to one large group, every member online.
    Group {
        /// Members, the sender included.
        #[arg(long, default_value_t = 500)]
        members: usize,
        #[arg(long, default_value_t = 100)]
        messages: usize,
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Every member sends `mark_read` for each message it gets.
        #[arg(long)]
        read_receipts: bool,
    },
    /// Publish latency on the configured bus (KAFKA_BROKERS), one at a time.
    Produce {
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// Store appends one message per call vs in batches (MONGODB_URL).
    Insert {
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Memory per idle authenticated connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The server process whose RSS is measured.
        #[arg(long)]
        server_pid: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = Duration::from_secs(args.deadline_secs);
    let run = async {
        match args.mode {
            Mode::Chat {
                pairs,
                messages,
                window,
            } => chat(&args.url, pairs, messages, window).await,
            Mode::Idle {
                connections,
                server_pid,
            } => idle(&args.url, connections, server_pid).await,
            Mode::Flood {
                pairs,
                rate,
                secs,
                server_pid,
            } => flood(&args.url, pairs, rate, secs, server_pid).await,
            Mode::Group {
                members,
                messages,
                window,
                read_receipts,
            } => group(&args.url, members, messages, window, read_receipts).await,
            Mode::Produce { count } => produce(count).await,
            Mode::Insert { count, batch } => insert(count, batch).await,
        }
    };
    tokio::time::timeout(deadline, run)
        .await
        .context("deadline reached")?
}

fn prefix() -> String {
    format!("load{}x", std::process::id() % 100_000)
}

async fn chat(url: &str, pairs: usize, messages: usize, window: usize) -> anyhow::Result<()> {
    let users = register_many(url, &prefix(), pairs * 2).await?;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let mut sockets = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    let mut cross_node = 0;
    for pair in users.chunks(2) {
        let (sender, receiver) = (&pair[0], &pair[1]);
        let (tx, tx_node) = join_at(url, &sender.token).await?;
        let (rx, rx_node) = join_at(url, &receiver.token).await?;
        cross_node += usize::from(tx_node != rx_node);
        nodes.extend([tx_node, rx_node]);
        sockets.push((tx, rx, receiver.id.clone(), sender.id.clone()));
    }
    let began = Instant::now();
    for (tx_ws, rx_ws, to, from) in sockets {
        let histogram = histogram.clone();
        tasks.push(tokio::spawn(async move {
            tokio::try_join!(
                receive(rx_ws, from, messages, start, histogram),
                send(tx_ws, to, messages, window, start)
            )
            .map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = began.elapsed();
    let h = histogram.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let total = pairs * messages;
    println!(
        "chat: {pairs} pairs x {messages} msgs (window {window}), {} edge(s), {cross_node} pairs across edges: {total} delivered in {:.2} s = {:.0} msgs/s; send→deliver {}",
        nodes.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        percentiles(&h),
    );
    Ok(())
}

/// Sends `messages` frames made by `frame(index, µs since start)`, keeping
/// `window` unacknowledged; answers when each was first sent (µs since
/// `start`). A frame refused with `unavailable` or `rate_limited` (its
/// `ref` ends in its index) is resent after a short pause, the same frame with
/// the same `client_msg_id`, as docs/protocol.md tells clients to; latency
/// still counts from the first attempt.
async fn send_window(
    ws: &mut Socket,
    messages: usize,
    window: usize,
    start: Instant,
    frame: impl Fn(usize, u64) -> Value,
) -> anyhow::Result<Vec<u64>> {
    let mut sent_at = Vec::with_capacity(messages);
    let mut acked = 0usize;
    let mut resent = 0usize;
    while acked < messages {
        while sent_at.len() < messages && sent_at.len() - acked < window.max(1) {
            let micros = start.elapsed().as_micros() as u64;
            let text = frame(sent_at.len(), micros).to_string();
            sent_at.push(micros);
            ws.send(Message::Text(text.into())).await?;
        }
        let Some(reply) = ws.next().await else {
            bail!("sender socket closed");
        };
        if let Message::Text(t) = reply? {
            let v: Value = serde_json::from_str(&t)?;
            match v["type"].as_str() {
                Some("ack") => acked += 1,
                Some("error")
                    if matches!(v["code"].as_str(), Some("unavailable" | "rate_limited")) =>
                {
                    let i: usize = v["ref"]
                        .as_str()
                        .unwrap_or("")
                        .trim_start_matches(|c: char| !c.is_ascii_digit())
                        .parse()
                        .context("refused frame without an index in its ref")?;
                    let first = *sent_at.get(i).context("ref of a frame never sent")?;
                    // Retry pacing, as a client backs off.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    ws.send(Message::Text(frame(i, first).to_string().into()))
                        .await?;
                    resent += 1;
                }
                Some("error") => bail!("send refused: {v}"),
                _ => {}
            }
        }
    }
    if resent > 0 {
        println!("  ({resent} sends refused as busy or rate limited and resent)");
    }
    Ok(sent_at)
}

/// 1:1 sends; the body carries the send time, read by the receiver.
async fn send(
    mut ws: Socket,
    to: String,
    messages: usize,
    window: usize,
    start: Instant,
) -> anyhow::Result<()> {
    send_window(&mut ws, messages, window, start, |i, micros| {
        json!({"type": "send_message", "ref": i.to_string(), "to": to,
            "client_msg_id": format!("c{i}"), "body": micros.to_string()})
    })
    .await
    .map(|_| ())
}

async fn receive(
    mut ws: Socket,
    from: String,
    messages: usize,
    start: Instant,
    histogram: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<()> {
    let mut seen = 0usize;
    let mut latencies = Vec::with_capacity(messages);
    while seen < messages {
        let Some(frame) = ws.next().await else {
            bail!("receiver socket closed");
        };
        if let Message::Text(t) = frame? {
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "new_message" && v["message"]["from"] == from.as_str() {
                let sent: u128 = v["message"]["body"].as_str().unwrap_or("0").parse()?;
                let now = start.elapsed().as_micros();
                latencies.push(u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX));
                seen += 1;
            }
        }
    }
    let mut h = histogram.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    for l in latencies {
        h.record(l.max(1))?;
    }
    Ok(())
}

/// When each message (by index) reached its last member. Every member
/// returns only once it has every message, so by then each has reached all.
struct Arrivals {
    last_micros: Vec<std::sync::atomic::AtomicU64>,
    /// Pushes of a message a member already had.
    repeats: std::sync::atomic::AtomicUsize,
}

async fn group(
    url: &str,
    members: usize,
    messages: usize,
    window: usize,
    read_receipts: bool,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    if members < 2 {
        bail!("a group needs at least 2 members");
    }
    if messages == 0 {
        bail!("--messages must be at least 1");
    }
    let users = register_many(url, &prefix(), members).await?;
    let mut sockets = Vec::with_capacity(members);
    let mut nodes = std::collections::BTreeSet::new();
    for u in &users {
        let (ws, node) = join_at(url, &u.token).await?;
        nodes.insert(node);
        sockets.push(ws);
    }
    let mut sockets = sockets.into_iter();
    let mut sender = sockets.next().context("no sender")?;
    let others: Vec<&str> = users[1..].iter().map(|u| u.id.as_str()).collect();
    let create =
        json!({"type": "create_group", "ref": "create", "name": "load", "members": others});
    sender
        .send(Message::Text(create.to_string().into()))
        .await?;
    let conversation = loop {
        let Some(frame) = sender.next().await else {
            bail!("closed before the group was created");
        };
        if let Message::Text(t) = frame? {
            let v: Value = serde_json::from_str(&t)?;
            match (v["type"].as_str(), v["ref"].as_str()) {
                (Some("ack"), Some("create")) => {
                    break v["conversation"]["id"]
                        .as_str()
                        .context("no group id")?
                        .to_owned();
                }
                (Some("error"), _) => bail!("create_group refused: {v}"),
                _ => {}
            }
        }
    };
    let arrivals = Arc::new(Arrivals {
        last_micros: (0..messages).map(|_| 0.into()).collect(),
        repeats: 0.into(),
    });
    let start = Instant::now();
    let receivers: Vec<_> = sockets
        .map(|ws| {
            let (arrivals, conversation) = (arrivals.clone(), conversation.clone());
            tokio::spawn(async move {
                member(ws, conversation, messages, read_receipts, start, arrivals).await
            })
        })
        .collect();
    let began = start.elapsed().as_micros() as u64;
    let sends = send_window(&mut sender, messages, window, start, |i, _| {
        json!({"type": "send_message", "ref": format!("m{i}"),
            "conversation_id": conversation, "client_msg_id": format!("g{i}"),
            "body": i.to_string()})
    })
    .await?;
    for r in receivers {
        r.await??;
    }
    let finished = arrivals
        .last_micros
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .max()
        .unwrap_or(began);
    let mut to_last = Histogram::<u64>::new(3)?;
    for (i, sent) in sends.iter().enumerate() {
        let last = arrivals.last_micros[i].load(Ordering::Relaxed);
        to_last.record(last.saturating_sub(*sent).max(1))?;
    }
    let receivers = members - 1;
    let deliveries = receivers * messages;
    let seconds = (finished.saturating_sub(began)) as f64 / 1e6;
    println!(
        "group: {members} members online, {} edge(s), {messages} msgs (window {window}){}: {deliveries} deliveries in {seconds:.2} s = {:.0} deliveries/s; send→last member {}; {} repeated pushes dropped by id",
        nodes.len(),
        if read_receipts {
            ", every member marking each read"
        } else {
            ""
        },
        deliveries as f64 / seconds,
        percentiles(&to_last),
        arrivals.repeats.load(Ordering::Relaxed),
    );
    Ok(())
}

/// One member: records when each message of the group arrives, and marks
/// it read when asked to.
async fn member(
    mut ws: Socket,
    conversation: String,
    messages: usize,
    read_receipts: bool,
    start: Instant,
    arrivals: Arc<Arrivals>,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    // Delivery is at least once: a repeat (a replayed batch) is dropped by
    // id, as clients do, and the first arrival counts.
    let mut seen = vec![false; messages];
    let mut distinct = 0usize;
    while distinct < messages {
        let Some(frame) = ws.next().await else {
            bail!("member socket closed");
        };
        let Message::Text(t) = frame? else { continue };
        let v: Value = serde_json::from_str(&t)?;
        if v["type"] != "new_message" || v["message"]["conversation_id"] != conversation.as_str() {
            continue;
        }
        let now = start.elapsed().as_micros() as u64;
        let i: usize = v["message"]["body"].as_str().unwrap_or("").parse()?;
        if i >= messages {
            continue;
        }
        if seen[i] {
            arrivals.repeats.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        seen[i] = true;
        distinct += 1;
        arrivals.last_micros[i].fetch_max(now, Ordering::Relaxed);
        if read_receipts {
            let read = json!({"type": "mark_read", "conversation_id": conversation,
                "up_to_seq": v["message"]["seq"]});
            ws.send(Message::Text(read.to_string().into())).await?;
        }
    }
    Ok(())
}

async fn idle(url: &str, connections: usize, server_pid: u32) -> anyhow::Result<()> {
    let users = register_many(url, &prefix(), 10).await?;
    // One warm-up connection per user, so per-user state is not counted.
    let mut sockets = Vec::with_capacity(connections + users.len());
    for u in &users {
        sockets.push(join(url, &u.token).await?);
    }
    let before = rss_kib(server_pid)?;
    let began = Instant::now();
    let tokens: Vec<String> = users.iter().map(|u| u.token.clone()).collect();
    let mut opened = futures::stream::iter(0..connections)
        .map(|i| {
            let token = tokens[i % tokens.len()].clone();
            async move { join(url, &token).await }
        })
        .buffer_unordered(64);
    while let Some(ws) = opened.next().await {
        sockets.push(ws?);
    }
    let after = rss_kib(server_pid)?;
    println!(
        "idle: {connections} authenticated connections opened in {:.1} s; server RSS {:.1} MiB → {:.1} MiB = {:.1} KiB per connection",
        began.elapsed().as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / connections as f64,
    );
    Ok(())
}

/// What one flood sender saw.
#[derive(Default)]
struct FloodTally {
    offered: u64,
    acked: HashSet<String>,
    refused: HashMap<String, u64>,
}

async fn flood(
    url: &str,
    pairs: usize,
    rate: u64,
    secs: u64,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    let users = register_many(url, &prefix(), pairs * 2).await?;
    let mut sockets = Vec::new();
    for pair in users.chunks(2) {
        let tx = join(url, &pair[0].token).await?;
        let rx = join(url, &pair[1].token).await?;
        sockets.push((tx, rx, pair[1].id.clone(), pair[0].id.clone()));
    }
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = server_pid.map(|pid| {
        tokio::spawn(parley_server::client::sample_peak_rss(
            Arc::new(std::sync::atomic::AtomicU64::new(u64::from(pid))),
            peak_rss.clone(),
        ))
    });
    let start = Instant::now();
    let period = Duration::from_secs_f64(pairs as f64 / rate.max(1) as f64);
    let run_for = Duration::from_secs(secs);
    // Deliveries of accepted messages may trail the last send by this much.
    let drain = Duration::from_secs(15);
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let mut tasks = Vec::new();
    for (i, (tx, rx, to, from)) in sockets.into_iter().enumerate() {
        let histogram = histogram.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut acks) = tx.split();
            let sending = async move {
                // Senders start spread over one period, not all at once.
                tokio::time::sleep(period.mul_f64(i as f64 / pairs as f64)).await;
                let mut ticks = tokio::time::interval(period);
                let mut offered = 0u64;
                while start.elapsed() < run_for {
                    ticks.tick().await;
                    let micros = start.elapsed().as_micros() as u64;
                    let frame = json!({"type": "send_message", "ref": offered.to_string(), "to": to,
                        "client_msg_id": format!("f{offered}"), "body": micros.to_string()});
                    sink.send(Message::Text(frame.to_string().into())).await?;
                    offered += 1;
                }
                anyhow::Ok((offered, sink))
            };
            let answers = async move {
                let mut tally = FloodTally::default();
                let until = start + run_for + drain;
                while let Ok(Some(frame)) = tokio::time::timeout_at(until.into(), acks.next()).await
                {
                    if let Message::Text(t) = frame? {
                        let v: Value = serde_json::from_str(&t)?;
                        match v["type"].as_str() {
                            Some("ack") => {
                                tally.acked.insert(
                                    v["message"]["client_msg_id"]
                                        .as_str()
                                        .unwrap_or("")
                                        .to_owned(),
                                );
                            }
                            Some("error") => {
                                *tally
                                    .refused
                                    .entry(v["code"].as_str().unwrap_or("?").to_owned())
                                    .or_default() += 1;
                            }
                            _ => {}
                        }
                    }
                }
                anyhow::Ok(tally)
            };
            let receiving = async move {
                let mut rx = rx;
                let mut delivered: HashSet<String> = HashSet::new();
                let mut latencies = Vec::new();
                let until = start + run_for + drain;
                while let Ok(Some(frame)) = tokio::time::timeout_at(until.into(), rx.next()).await {
                    if let Message::Text(t) = frame? {
                        let v: Value = serde_json::from_str(&t)?;
                        if v["type"] == "new_message" && v["message"]["from"] == from.as_str() {
                            let cid = v["message"]["client_msg_id"].as_str().unwrap_or("");
                            if delivered.insert(cid.to_owned()) {
                                let sent: u128 =
                                    v["message"]["body"].as_str().unwrap_or("0").parse()?;
                                let now = start.elapsed().as_micros();
                                latencies.push(
                                    u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX),
                                );
                            }
                        }
                    }
                }
                let mut h = histogram.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                for l in latencies {
                    h.record(l.max(1))?;
                }
                anyhow::Ok(delivered)
            };
            let ((offered, _sink), mut tally, delivered) =
                tokio::try_join!(sending, answers, receiving)?;
            tally.offered = offered;
            anyhow::Ok((tally, delivered))
        }));
    }
    let (mut offered, mut acked, mut lost, mut delivered_total) = (0u64, 0u64, 0u64, 0u64);
    let mut refused: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        let (tally, delivered) = t.await??;
        offered += tally.offered;
        acked += tally.acked.len() as u64;
        lost += tally.acked.difference(&delivered).count() as u64;
        delivered_total += delivered.len() as u64;
        for (code, n) in tally.refused {
            *refused.entry(code).or_default() += n;
        }
    }
    if let Some(s) = sampling {
        s.abort();
    }
    let h = histogram.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut refused: Vec<_> = refused.into_iter().collect();
    refused.sort();
    println!(
        "flood: {pairs} pairs, offered {rate} msgs/s for {secs} s: offered {offered}, acked {acked} ({:.0}/s), refused {refused:?}, delivered {delivered_total}, acked-not-delivered {lost}; send→deliver of accepted {}; server peak RSS {:.1} MiB",
        acked as f64 / secs as f64,
        percentiles(&h),
        peak_rss.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
    );
    if lost > 0 {
        bail!("{lost} acked messages were not delivered within {drain:?}");
    }
    Ok(())
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set (eval \"$(scripts/infra env)\")"))
}

/// Sequential publishes to a throw-away topic prefix: the latency of one
/// durable (acks=all, idempotent) produce as configured.
async fn produce(count: usize) -> anyhow::Result<()> {
    use parley::bus::EventBus;
    let brokers = env("KAFKA_BROKERS")?;
    let prefix = format!("bench{}.", std::process::id());
    let bus = parley::bus::kafka::KafkaBus::connect(&brokers, &prefix, 8, 1).await?;
    let mut h = Histogram::<u64>::new(3)?;
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    let began = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        bus.publish(
            parley::bus::Topic::ChatMessages,
            &format!("k{}", i % 64),
            payload.clone(),
        )
        .await?;
        h.record(
            u64::try_from(t.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
        )?;
    }
    println!(
        "produce: {count} sequential publishes (200 B, acks=all, idempotent) in {:.2} s; {}",
        began.elapsed().as_secs_f64(),
        percentiles(&h)
    );
    Ok(())
}

/// Appends `count` messages one per call, then `count` in batches, to a
/// throw-away database.
async fn insert(count: usize, batch: usize) -> anyhow::Result<()> {
    use parley::store::Store;
    let url = env("MONGODB_URL")?;
    let database = format!("bench{}", std::process::id());
    let store = parley::store::mongo::MongoStore::connect(&url, Some(&database)).await?;
    let message = |conversation: &str, i: usize| parley::proto::ChatMessage {
        id: parley::ids::MessageId::generate().into_string(),
        conversation_id: conversation.to_owned(),
        seq: 0,
        from: "bench-user".into(),
        body: "x".repeat(100),
        sent_at_ms: parley::time::now_ms(),
        client_msg_id: format!("{conversation}-{i}"),
        ..Default::default()
    };
    for (label, size) in [("single", 1), ("batched", batch.max(1))] {
        let conversation = format!("{label}-conversation");
        store
            .ensure_direct(&conversation, "bench-user", "bench-peer", 0)
            .await?;
        let began = Instant::now();
        let mut i = 0;
        while i < count {
            let chunk: Vec<_> = (i..(i + size).min(count))
                .map(|n| message(&conversation, n))
                .collect();
            i += chunk.len();
            store.append_messages(&chunk).await?;
        }
        let secs = began.elapsed().as_secs_f64();
        println!(
            "insert ({label}, {size} per append): {count} messages in {secs:.2} s = {:.0} msgs/s",
            count as f64 / secs
        );
    }
    Ok(())
}
