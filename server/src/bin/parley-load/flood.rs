//! Open-loop 1:1: every sender sends on a fixed schedule whatever the
//! answers, so the server sees the offered rate even past its capacity.
//! Each pair first exchanges one warm-up message, not counted (see
//! [`warm_up`]).

use crate::probe::Probe;
use crate::target::{Event, Target, body};
use crate::{Ctx, merge, prefix, quantiles_ms, record_latencies, usage_fields, usage_text};
use anyhow::bail;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parley_server::client::percentiles;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Deliveries of accepted messages may trail the last send by this much.
const DRAIN: Duration = Duration::from_secs(15);
/// How often a waiting reader checks whether its pair is done.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// What one sender saw.
#[derive(Default)]
struct Tally {
    offered: u64,
    accepted: HashSet<String>,
    refused: HashMap<String, u64>,
}

/// Where one pair is, so its readers stop as soon as everything answered
/// and accepted has arrived instead of waiting out the drain.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    sending_done: AtomicBool,
    answered: AtomicU64,
    accepted: AtomicU64,
    answers_done: AtomicBool,
}

/// When the schedule started (once every pair is connected).
#[derive(Clone)]
struct Go {
    at: tokio::sync::watch::Receiver<Option<Instant>>,
    run_for: Duration,
}

impl Go {
    /// Waits for the start; answers it.
    async fn wait(&mut self) -> anyhow::Result<Instant> {
        let at = *self.at.wait_for(Option::is_some).await?;
        at.ok_or_else(|| anyhow::anyhow!("no start"))
    }

    /// Whether the run and its drain are over.
    fn past(&self) -> bool {
        self.at
            .borrow()
            .is_some_and(|at| at.elapsed() > self.run_for + DRAIN)
    }
}

pub async fn flood(ctx: &Ctx, pairs: usize, rate: u64, secs: u64) -> anyhow::Result<()> {
    let target = &ctx.target;
    let users = target.users(&prefix(), pairs * 2).await?;
    // Send times are µs since `start`; the schedule starts at `go`, once
    // every pair is connected.
    let start = Instant::now();
    let (go_tx, go_rx) = tokio::sync::watch::channel(None);
    let period = Duration::from_secs_f64(pairs as f64 / rate.max(1) as f64);
    let run_for = Duration::from_secs(secs);
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    // (send time, latency) of every delivery, µs: the per-second figures.
    let samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    // Each pair is read from the moment it is connected, as clients do
    // (Parley closes a client that leaves its probe pings unanswered for
    // 10 s, and connecting hundreds can take longer).
    for (i, pair) in users.chunks(2).enumerate() {
        let mut tx = target.connect(&pair[0]).await?.0;
        let mut rx = target.connect(&pair[1]).await?.0;
        let (to, from) = (pair[1].id.clone(), pair[0].id.clone());
        warm_up(target, &mut tx, &mut rx, &from, &to, ctx.body_bytes).await?;
        let (histogram, samples, target, bytes) = (
            histogram.clone(),
            samples.clone(),
            target.clone(),
            ctx.body_bytes,
        );
        let go = Go {
            at: go_rx.clone(),
            run_for,
        };
        let progress = Arc::new(Progress::default());
        tasks.push(tokio::spawn(async move {
            let (sink, mut answers) = tx.split();
            // The reader answers Centrifugo's pings on the sender's socket.
            let sink = Arc::new(tokio::sync::Mutex::new(sink));
            let sending = {
                let (sink, progress, target) = (sink.clone(), progress.clone(), target.clone());
                let (from, to, mut go) = (from.clone(), to.clone(), go.clone());
                async move {
                    let go = go.wait().await?;
                    // Senders start spread over one period, not all at once.
                    tokio::time::sleep(period.mul_f64(i as f64 / pairs as f64)).await;
                    let mut ticks = tokio::time::interval(period);
                    let mut offered = 0usize;
                    while go.elapsed() < run_for {
                        ticks.tick().await;
                        let micros = start.elapsed().as_micros() as u64;
                        let frame = target.direct(
                            &from,
                            &to,
                            offered,
                            &format!("f{offered}"),
                            &body(micros, bytes),
                        );
                        sink.lock().await.send(Message::Text(frame.into())).await?;
                        offered += 1;
                        progress.sent.store(offered as u64, Ordering::Release);
                    }
                    progress.sending_done.store(true, Ordering::Release);
                    anyhow::Ok(offered as u64)
                }
            };
            let answering = {
                let (progress, target, go) = (progress.clone(), target.clone(), go.clone());
                async move {
                    let mut tally = Tally::default();
                    let done = || {
                        progress.sending_done.load(Ordering::Acquire)
                            && progress.answered.load(Ordering::Acquire)
                                >= progress.sent.load(Ordering::Acquire)
                    };
                    while !done() && !go.past() {
                        let t = match next_text(&mut answers).await? {
                            Next::Text(t) => t,
                            Next::Quiet => continue,
                            Next::Closed => break,
                        };
                        for event in target.parse(&t)? {
                            match event {
                                Event::Accepted { index } => {
                                    tally.accepted.insert(format!("f{index}"));
                                    progress.accepted.fetch_add(1, Ordering::AcqRel);
                                    progress.answered.fetch_add(1, Ordering::AcqRel);
                                }
                                Event::Refused { code, .. } => {
                                    *tally.refused.entry(code).or_default() += 1;
                                    progress.answered.fetch_add(1, Ordering::AcqRel);
                                }
                                Event::Ping => sink.lock().await.send(target.pong()).await?,
                                Event::Delivered(_) => {}
                            }
                        }
                    }
                    progress.answers_done.store(true, Ordering::Release);
                    anyhow::Ok(tally)
                }
            };
            let receiving = receive(target, rx, from, start, go, progress, histogram, samples);
            let (offered, mut tally, delivered) = tokio::try_join!(sending, answering, receiving)?;
            tally.offered = offered;
            anyhow::Ok((tally, delivered))
        }));
    }
    let probe = Probe::start(&ctx.server_pid)?;
    let go_at = Instant::now();
    go_tx.send(Some(go_at))?;
    let (mut offered, mut accepted, mut lost, mut delivered_total) = (0u64, 0u64, 0u64, 0u64);
    let mut refused: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        let (tally, delivered) = t.await??;
        offered += tally.offered;
        accepted += tally.accepted.len() as u64;
        lost += tally.accepted.difference(&delivered).count() as u64;
        delivered_total += delivered.len() as u64;
        for (code, n) in tally.refused {
            *refused.entry(code).or_default() += n;
        }
    }
    let usage = probe.finish()?;
    let h = histogram.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let refused_total: u64 = refused.values().sum();
    let mut refused: Vec<_> = refused.into_iter().collect();
    refused.sort();
    println!(
        "flood ({}): {pairs} pairs, offered {rate} msgs/s for {secs} s: offered {offered}, acked {accepted} ({:.0}/s), refused {refused:?}, delivered {delivered_total}, acked-not-delivered {lost}; send→deliver of accepted {}{}",
        target.name(),
        accepted as f64 / secs as f64,
        percentiles(&h),
        usage_text(usage, delivered_total),
    );
    ctx.record(merge(
        merge(
            json!({"mode": "flood", "pairs": pairs, "rate": rate, "secs": secs,
                "offered": offered, "accepted": accepted, "refused": refused_total,
                "delivered": delivered_total, "lost": lost}),
            quantiles_ms(&h),
        ),
        usage_fields(usage, delivered_total),
    ))?;
    let samples = samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!(
        "  p99 / max send → deliver by second of sending (ms): {}",
        by_second(&samples, go_at.duration_since(start).as_micros() as u64)
    );
    if lost > 0 {
        bail!("{lost} acked messages were not delivered within {DRAIN:?}");
    }
    Ok(())
}

/// Ack index of the warm-up message, apart from the schedule's (0, 1, …).
const WARM_UP_INDEX: usize = 1 << 30;
/// The most a pair's warm-up may take, refusals and retries included.
const WARM_UP_LIMIT: Duration = Duration::from_secs(30);

/// Sends one message from `from` to `to` and waits until it is accepted
/// and delivered, before the schedule and outside its figures: the first
/// message of a pair is a conversation's first (Parley creates it in the
/// store, and its sequencer then reads its head), a one-time cost that a
/// steady-state latency should not include. Refusals a retry may cure are
/// retried after a short pause (the server may still be starting).
async fn warm_up(
    target: &Target,
    tx: &mut parley_server::client::Socket,
    rx: &mut parley_server::client::Socket,
    from: &str,
    to: &str,
    bytes: usize,
) -> anyhow::Result<()> {
    let until = Instant::now() + WARM_UP_LIMIT;
    let frame = target.direct(from, to, WARM_UP_INDEX, "warm-up", &body(0, bytes));
    'send: loop {
        tx.send(Message::Text(frame.clone().into())).await?;
        loop {
            for event in next_events(target, tx, until, "the sender's").await? {
                match event {
                    Event::Accepted { index } if index == WARM_UP_INDEX => break 'send,
                    Event::Refused {
                        index: Some(WARM_UP_INDEX) | None,
                        retry: true,
                        ..
                    } => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'send;
                    }
                    Event::Refused { code, .. } => bail!("warm-up message refused: {code}"),
                    _ => {}
                }
            }
        }
    }
    loop {
        for event in next_events(target, rx, until, "the receiver's").await? {
            if let Event::Delivered(d) = event
                && d.from == from
                && d.client_msg_id == "warm-up"
            {
                return Ok(());
            }
        }
    }
}

/// The events of `socket`'s next text frame, answering Centrifugo's pings
/// on it; an error once `until` has passed or the socket (`whose`) closed.
async fn next_events(
    target: &Target,
    socket: &mut parley_server::client::Socket,
    until: Instant,
    whose: &str,
) -> anyhow::Result<Vec<Event>> {
    while Instant::now() < until {
        let t = match next_text(socket).await? {
            Next::Text(t) => t,
            Next::Quiet => continue,
            Next::Closed => bail!("{whose} socket closed during the warm-up"),
        };
        let mut events = target.parse(&t)?;
        if events.iter().any(|e| matches!(e, Event::Ping)) {
            socket.send(target.pong()).await?;
        }
        events.retain(|e| !matches!(e, Event::Ping));
        return Ok(events);
    }
    bail!("the warm-up message took over {WARM_UP_LIMIT:?}")
}

/// `p99/max` of the latencies of the messages sent in each second of the
/// schedule (`go_us` is its start), in ms: where in the run a tail came
/// from (a start-up cost, a stall, steady queueing).
fn by_second(samples: &[(u64, u64)], go_us: u64) -> String {
    let mut seconds: Vec<Vec<u64>> = Vec::new();
    for &(sent, latency) in samples {
        let second = (sent.saturating_sub(go_us) / 1_000_000) as usize;
        if seconds.len() <= second {
            seconds.resize(second + 1, Vec::new());
        }
        seconds[second].push(latency);
    }
    seconds
        .iter_mut()
        .map(|l| {
            l.sort_unstable();
            let p99 = l.get((l.len() * 99 / 100).min(l.len().saturating_sub(1)));
            match (p99, l.last()) {
                (Some(p), Some(m)) => format!("{}/{}", p / 1000, m / 1000),
                _ => "-".to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Receives from `from` until everything its sender had accepted arrived
/// (or the drain ends); answers the client ids delivered, recording send →
/// deliver of the first arrival of each.
#[allow(clippy::too_many_arguments)]
async fn receive(
    target: Target,
    mut rx: parley_server::client::Socket,
    from: String,
    start: Instant,
    go: Go,
    progress: Arc<Progress>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    samples: Arc<Mutex<Vec<(u64, u64)>>>,
) -> anyhow::Result<HashSet<String>> {
    let mut delivered: HashSet<String> = HashSet::new();
    // (send time, latency) of each first arrival, µs.
    let mut timeline = Vec::new();
    let done = |delivered: usize| {
        progress.answers_done.load(Ordering::Acquire)
            && delivered as u64 >= progress.accepted.load(Ordering::Acquire)
    };
    while !done(delivered.len()) && !go.past() {
        let t = match next_text(&mut rx).await? {
            Next::Text(t) => t,
            Next::Quiet => continue,
            Next::Closed => break,
        };
        for event in target.parse(&t)? {
            match event {
                Event::Delivered(d)
                    if d.from == from && delivered.insert(d.client_msg_id.clone()) =>
                {
                    let now = start.elapsed().as_micros() as u64;
                    let sent = d.number()?;
                    timeline.push((sent, now.saturating_sub(sent)));
                }
                Event::Ping => rx.send(target.pong()).await?,
                _ => {}
            }
        }
    }
    record_latencies(&histogram, timeline.iter().map(|&(_, l)| l).collect())?;
    samples
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .extend(timeline);
    Ok(delivered)
}

/// What a reader found within [`CHECK_EVERY`].
enum Next {
    Text(Utf8Bytes),
    /// Nothing, or a frame that is not text: time to check whether done.
    Quiet,
    Closed,
}

/// The next text frame of `stream` within [`CHECK_EVERY`]; a socket error
/// is the run's error.
async fn next_text<S>(stream: &mut S) -> anyhow::Result<Next>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    Ok(
        match tokio::time::timeout(CHECK_EVERY, stream.next()).await {
            Err(_) => Next::Quiet,
            Ok(None) => Next::Closed,
            Ok(Some(frame)) => match frame? {
                Message::Text(t) => Next::Text(t),
                _ => Next::Quiet,
            },
        },
    )
}
