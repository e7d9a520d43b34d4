//! Overload (issue 10: "the same ledger at twice the measured capacity for
//! 30 s: nothing acked is lost, refusals are explicit, server RSS stays
//! under a stated bound").
//!
//! First [`calibrate`] measures the capacity against the same server with
//! the same ledger clients, closed-loop: every device keeps at most
//! [`CALIBRATION_WINDOW`] sends unacked, and after a warm-up the messages
//! acked within the measured stretch that also reached a member device are
//! counted. Those devices then drain and stop; their messages stay in the
//! ledger and are checked at the end with the rest. Then the run offers
//! [`FACTOR`] times that open-loop (`client::Settings::open_loop`) and
//! [`figures`] reports what came of it.

use crate::client::{Milestone, Phase, Settings};
use crate::ledger::{DeviceView, Shared};
use crate::run::{await_news, spawn_devices};
use crate::world::World;
use anyhow::Context;
use hdrhistogram::Histogram;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The offered rate over the measured capacity.
pub const FACTOR: f64 = 2.0;
/// Most devices per user in overload mode (see `--devices`).
pub const DEVICES: usize = 16;
/// Unacked sends per device while the capacity is measured. The edge
/// handles one connection's frames one at a time, so more would only wait
/// in the socket; 4 keeps each connection busy.
pub const CALIBRATION_WINDOW: usize = 4;
/// Attempts per device on the wire at once under overload; the rest waits
/// in the device's outbox. It bounds how many attempts one refusal episode
/// costs the server, not how much is offered.
pub const IN_FLIGHT: usize = 8;
/// Device numbers of the measuring devices start here (their
/// `client_msg_id`s are `d1000n…`, apart from the overload devices').
const CALIBRATION_INDEX: usize = 1000;
const WARM_UP: Duration = Duration::from_secs(2);
const MEASURED: Duration = Duration::from_secs(5);

/// What the closed-loop measurement found.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Messages acked and delivered per second.
    pub per_s: f64,
    /// Messages acked within the measured stretch, and of those delivered.
    pub acked: u64,
    pub delivered: u64,
}

/// Measures the capacity of the server at `url` with closed-loop devices
/// of every user of `world`, writing to `shared`.
pub async fn calibrate(
    world: &Arc<World>,
    shared: &Shared,
    url: &watch::Receiver<Option<String>>,
    seed: u64,
) -> anyhow::Result<Capacity> {
    let settings = Arc::new(Settings {
        pace: Duration::from_millis(2),
        window: CALIBRATION_WINDOW,
        open_loop: false,
        in_flight: usize::MAX,
        ack_timeout: Duration::from_secs(5),
        changes: false,
        latency_from_us: u64::MAX,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (news_tx, mut news_rx) = mpsc::unbounded_channel();
    let tasks = spawn_devices(
        CALIBRATION_INDEX,
        world,
        shared,
        &settings,
        url,
        &phase_rx,
        &news_tx,
        seed,
    );
    let devices = tasks.len();
    tokio::time::sleep(WARM_UP).await;
    let from = shared.now_us();
    tokio::time::sleep(MEASURED).await;
    let to = shared.now_us();
    phase_tx.send_replace(Phase::Draining);
    let drained = await_news(
        &mut news_rx,
        devices,
        Milestone::Drained,
        Duration::from_secs(30),
    )
    .await;
    phase_tx.send_replace(Phase::Stop);
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.context("a measuring device panicked")?);
    }
    if drained < devices {
        eprintln!("torture: only {drained}/{devices} measuring devices drained");
    }
    let delivered: HashSet<_> = views
        .iter()
        .flat_map(|v| v.got.keys().filter(|k| k.0 != v.user))
        .collect();
    let (acked, both) = {
        let ledger = shared.lock();
        let in_stretch: Vec<_> = ledger
            .sends
            .iter()
            .filter(|(_, r)| r.acked_us.is_some_and(|t| t >= from && t < to))
            .map(|(k, _)| k)
            .collect();
        let both = in_stretch
            .iter()
            .filter(|&&k| delivered.contains(k))
            .count();
        (in_stretch.len() as u64, both as u64)
    };
    let secs = (to - from) as f64 / 1e6;
    Ok(Capacity {
        per_s: both as f64 / secs,
        acked,
        delivered: both,
    })
}

/// The overload part of the summary line, and whether the peak RSS stayed
/// within `max_rss_mib`.
pub struct Figures<'a> {
    pub capacity: Option<Capacity>,
    /// Offered (new messages) during the offered stretch, and acked in it.
    pub offered: u64,
    pub acked: u64,
    pub secs: f64,
    pub views: &'a [DeviceView],
    pub peak_rss_kib: u64,
    pub max_rss_mib: Option<u64>,
}

/// Formats [`Figures`]; answers the text and whether the RSS bound held.
/// Delivery latency runs from the send of the attempt the server accepted
/// (the stored body carries its send time), not from the first attempt:
/// it is what an accepted message waits, not how long a refused client
/// kept trying.
pub fn figures(f: &Figures<'_>) -> anyhow::Result<(String, bool)> {
    let mut h = Histogram::<u64>::new(3)?;
    for v in f.views {
        for &l in &v.latencies_us {
            h.record(l.max(1))?;
        }
    }
    let peak_mib = f.peak_rss_kib as f64 / 1024.0;
    let rss_ok = f.max_rss_mib.is_none_or(|m| peak_mib <= m as f64);
    let bound = f
        .max_rss_mib
        .map_or_else(|| "none".to_owned(), |m| m.to_string());
    Ok((
        format!(
            " capacity_per_s={} offered_per_s={:.0} acked_per_s={:.0} deliver_from=accepted_attempt deliver_p50_ms={:.1} deliver_p99_ms={:.1} deliveries={} peak_rss_mib={peak_mib:.1} max_rss_mib={bound} rss={}",
            f.capacity
                .map_or_else(|| "given".to_owned(), |c| format!("{:.0}", c.per_s)),
            f.offered as f64 / f.secs,
            f.acked as f64 / f.secs,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.len(),
            if rss_ok { "ok" } else { "over" },
        ),
        rss_ok,
    ))
}
