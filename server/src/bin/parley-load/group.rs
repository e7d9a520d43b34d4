//! Fan-out to one group, every member online: the time from each send to
//! its last member.

use crate::probe::Probe;
use crate::target::{Event, Target, body};
use crate::window::send_window;
use crate::{Ctx, merge, prefix, quantiles_ms, usage_fields, usage_text};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parley_server::client::{Socket, percentiles};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// When each message (by index) reached its last member. Every member
/// returns only once it has every message, so by then each has reached all.
struct Arrivals {
    last_micros: Vec<AtomicU64>,
    /// Pushes of a message a member already had.
    repeats: AtomicUsize,
}

pub async fn group(
    ctx: &Ctx,
    members: usize,
    messages: usize,
    window: usize,
    rate: Option<u64>,
    read_receipts: bool,
) -> anyhow::Result<()> {
    let target = &ctx.target;
    if members < 2 {
        bail!("a group needs at least 2 members");
    }
    if messages == 0 {
        bail!("--messages must be at least 1");
    }
    if read_receipts && !matches!(target, Target::Parley { .. }) {
        bail!("--read-receipts is Parley's: Centrifugo keeps no read state");
    }
    let users = target.users(&prefix(), members).await?;
    let (creator, others) = users.split_first().context("no members")?;
    let name = format!("{}g", prefix());
    let arrivals = Arc::new(Arrivals {
        last_micros: (0..messages).map(|_| 0.into()).collect(),
        repeats: 0.into(),
    });
    let start = Instant::now();
    // Each member reads its socket from the moment it is connected, as a
    // client does (Parley closes a client that leaves its probe pings
    // unanswered for 10 s, and connecting hundreds can take longer).
    let mut nodes = std::collections::BTreeSet::new();
    let mut receivers = Vec::with_capacity(others.len());
    for u in others {
        let (mut ws, node) = target.connect(u).await?;
        nodes.insert(node);
        target.enter_group(&mut ws, &name).await?;
        let (arrivals, target, from) = (arrivals.clone(), target.clone(), creator.id.clone());
        receivers.push(tokio::spawn(async move {
            member(&target, ws, &from, messages, read_receipts, start, arrivals).await
        }));
    }
    // The creator connects last, so that it is not left unread meanwhile.
    let (mut sender, node) = target.connect(creator).await?;
    nodes.insert(node);
    let group = target.create_group(&mut sender, others, &name).await?;
    let probe = Probe::start(&ctx.server_pid)?;
    let began = start.elapsed().as_micros() as u64;
    let (pace, window) = match rate {
        Some(r) => (
            Some(Duration::from_secs_f64(1.0 / r.max(1) as f64)),
            messages,
        ),
        None => (None, window),
    };
    let from = creator.id.clone();
    let bytes = ctx.body_bytes;
    let sends = send_window(
        target,
        &mut sender,
        messages,
        window,
        pace,
        start,
        |i, _| target.to_group(&from, &group, i, &format!("g{i}"), &body(i as u64, bytes)),
    )
    .await?;
    for r in receivers {
        r.await??;
    }
    let usage = probe.finish()?;
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
    let deliveries = ((members - 1) * messages) as u64;
    let seconds = (finished.saturating_sub(began)) as f64 / 1e6;
    let how = match rate {
        Some(r) => format!("at {r} msgs/s"),
        None => format!("(window {window})"),
    };
    println!(
        "group ({}): {members} members online, {} edge(s), {messages} msgs {how}{}: {deliveries} deliveries in {seconds:.2} s = {:.0} deliveries/s; send→last member {}; {} repeated pushes dropped by id{}",
        target.name(),
        nodes.len(),
        if read_receipts {
            ", every member marking each read"
        } else {
            ""
        },
        deliveries as f64 / seconds,
        percentiles(&to_last),
        arrivals.repeats.load(Ordering::Relaxed),
        usage_text(usage, deliveries),
    );
    ctx.record(merge(
        merge(
            json!({"mode": "group", "members": members, "messages": messages,
                "rate": rate, "window": window, "read_receipts": read_receipts,
                "deliveries": deliveries, "deliveries_per_sec": deliveries as f64 / seconds}),
            quantiles_ms(&to_last),
        ),
        usage_fields(usage, deliveries),
    ))
}

/// One member: records when each message from the group's sender `from`
/// arrives, and marks it read when asked to.
async fn member(
    target: &Target,
    mut ws: Socket,
    from: &str,
    messages: usize,
    read_receipts: bool,
    start: Instant,
    arrivals: Arc<Arrivals>,
) -> anyhow::Result<()> {
    // Delivery is at least once: a repeat (a replayed batch) is dropped by
    // id, as clients do, and the first arrival counts.
    let mut seen = vec![false; messages];
    let mut distinct = 0usize;
    while distinct < messages {
        let Some(frame) = ws.next().await else {
            bail!("member socket closed");
        };
        let Message::Text(t) = frame? else { continue };
        for event in target.parse(&t)? {
            let d = match event {
                Event::Delivered(d) if d.from == from => d,
                Event::Ping => {
                    ws.send(target.pong()).await?;
                    continue;
                }
                _ => continue,
            };
            let now = start.elapsed().as_micros() as u64;
            let Ok(i) = usize::try_from(d.number()?) else {
                continue;
            };
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
                let read = json!({"type": "mark_read", "conversation_id": d.conversation,
                    "up_to_seq": d.seq});
                ws.send(Message::Text(read.to_string().into())).await?;
            }
        }
    }
    Ok(())
}
