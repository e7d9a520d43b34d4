//! One run: start the target, build the world, start the devices, inject
//! the faults, quiesce, check and report.

use crate::checker::{self, Report};
use crate::client::{Device, DeviceCtx, Expected, Milestone, Phase, Settings};
use crate::fault::{self, CLUSTER_FAULTS, ENGINES, Server, ServerSpec, Stop};
use crate::ledger::{DeviceView, Shared};
use crate::overload::{self, Capacity};
use crate::world::World;
use crate::{Args, Mode, Rate};
use anyhow::{Context, bail};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What the fault injector did.
#[derive(Debug, Default)]
struct Faults {
    cycles: u32,
    kills: u32,
    terms: u32,
    engine_faults: u32,
    cluster_faults: u32,
    failures: Vec<String>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo) + 1)
    }
}

/// Runs the whole torture; answers whether it was clean.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    let began = Instant::now();
    let seed = args
        .seed
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        .max(1);
    let mut rng = Rng(seed);
    let spawned = !matches!(args.mode, Mode::Cluster | Mode::Faults);
    let run_id = format!("tt{}x{}", std::process::id() % 100_000, seed % 10_000);
    let own_dir = args.data_dir.is_none();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("parley-torture-{run_id}")));
    let spec = server_spec(&args, &data_dir, &run_id)?;

    let (url_tx, url_rx) = watch::channel(None::<String>);
    let peak_rss = Arc::new(AtomicU64::new(0));
    let server_pid = Arc::new(AtomicU64::new(0));
    let mut server = None;
    let url = if spawned {
        std::fs::create_dir_all(&data_dir)?;
        let s = fault::start(&spec).await?;
        server_pid.store(u64::from(s.pid), Ordering::Relaxed);
        let url = s.url.clone();
        server = Some(s);
        url
    } else {
        args.url.clone()
    };
    url_tx.send_replace(Some(url.clone()));
    let sampler = tokio::spawn(parley_server::client::sample_peak_rss(
        server_pid.clone(),
        peak_rss.clone(),
    ));

    let max_devices = args.devices.unwrap_or(if args.mode == Mode::Overload {
        overload::DEVICES
    } else {
        3
    });
    let world = Arc::new(World::build(&url, &run_id, args.users, max_devices, args.groups).await?);
    let shared = Shared::new();
    let overload = args.mode == Mode::Overload;
    let devices = world.device_count();
    let mut capacity = None::<Capacity>;
    let rate = match (overload, args.rate) {
        (false, _) => 0,
        (true, Rate::Fixed(r)) => r,
        (true, Rate::Auto) => {
            let c = overload::calibrate(&world, &shared, &url_rx, seed).await?;
            eprintln!(
                "torture: capacity {:.0} msgs/s ({} acked in the measured stretch, {} of them delivered; {} unacked sends per device)",
                c.per_s,
                c.acked,
                c.delivered,
                overload::CALIBRATION_WINDOW
            );
            capacity = Some(c);
            (c.per_s * overload::FACTOR).round().max(1.0) as u64
        }
    };
    let settings = Arc::new(Settings {
        pace: if overload {
            Duration::from_secs_f64(devices as f64 / rate as f64).max(Duration::from_micros(200))
        } else {
            Duration::from_millis(args.pace_ms.max(1))
        },
        window: if overload { usize::MAX } else { 1 },
        open_loop: overload,
        in_flight: if overload {
            overload::IN_FLIGHT
        } else {
            usize::MAX
        },
        ack_timeout: Duration::from_secs(if overload { 30 } else { 5 }),
        changes: !overload,
        latency_from_us: shared.now_us(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (news_tx, mut news_rx) = mpsc::unbounded_channel();
    let tasks = spawn_devices(
        0, &world, &shared, &settings, &url_rx, &phase_rx, &news_tx, seed,
    );
    if overload {
        eprintln!(
            "torture: offering {rate} msgs/s open-loop for {} s",
            args.duration_secs
        );
    }
    eprintln!(
        "torture: mode {:?}, seed {seed}, {} users, {devices} devices, {} conversations, data dir {}",
        args.mode,
        world.users.len(),
        world.conversations.len(),
        data_dir.display()
    );

    let mut faults = Faults::default();
    let offered_for = Instant::now();
    let offered_from_us = shared.now_us();
    let offered_before = shared.lock().counters.offered;
    match args.mode {
        Mode::Embedded | Mode::Real => {
            inject(
                &args,
                &spec,
                &mut server,
                &url_tx,
                &shared,
                &server_pid,
                &mut rng,
                &mut faults,
            )
            .await?;
        }
        Mode::Cluster | Mode::Faults => inject_cluster(&args, &shared, &mut rng, &mut faults).await,
        Mode::Overload => tokio::time::sleep(Duration::from_secs(args.duration_secs)).await,
    }
    let offered_secs = offered_for.elapsed().as_secs_f64();
    let offered_to_us = shared.now_us();
    let (offered, acked_in_stretch) = {
        let l = shared.lock();
        let acked = l
            .sends
            .values()
            .filter(|r| {
                r.acked_us
                    .is_some_and(|t| t >= offered_from_us && t < offered_to_us)
            })
            .count() as u64;
        (l.counters.offered - offered_before, acked)
    };

    let current = url_rx.borrow().clone().context("no server at the end")?;
    let Outcome {
        report,
        views,
        unacked,
        given_up,
        drained,
        complete,
    } = finish(&world, &shared, tasks, &phase_tx, &mut news_rx, &current).await?;
    sampler.abort();

    if let Some(s) = server.take()
        && let Err(e) = s.stop(Stop::Term).await
    {
        faults.failures.push(format!("final stop: {e:#}"));
    }
    let mut clean = report.total.clean()
        && report.counters.unexpected.is_empty()
        && faults.failures.is_empty()
        && unacked == 0
        && drained == devices
        && complete == devices;
    if args.mode != Mode::Overload && faults.cycles < args.cycles {
        clean = false;
    }
    let mut overload_figures = String::new();
    if overload {
        let rss_ok;
        (overload_figures, rss_ok) = overload::figures(&overload::Figures {
            capacity,
            offered,
            acked: acked_in_stretch,
            secs: offered_secs,
            views: &views,
            peak_rss_kib: peak_rss.load(Ordering::Relaxed),
            max_rss_mib: args.max_rss_mib,
        })?;
        if !rss_ok {
            clean = false;
            println!("finding: the server's peak RSS passed --max-rss-mib");
        }
    }
    print_report(&report, &faults, &world);
    let mut line = format!(
        "TORTURE mode={} result={} seed={seed} cycles={} kills={} terms={} engine_faults={} cluster_faults={} users={} devices={devices} conversations={} offered={} {} unacked={unacked} given_up={given_up} resends={} refused={} reconnects={} connect_failures={} live_gaps={} ack_timeouts={} unexpected={} drained={drained}/{devices} synced={complete}/{devices} elapsed_s={:.0}",
        format!("{:?}", args.mode).to_lowercase(),
        if clean { "PASS" } else { "FAIL" },
        faults.cycles,
        faults.kills,
        faults.terms,
        faults.engine_faults,
        faults.cluster_faults,
        world.users.len(),
        world.conversations.len(),
        report.counters.offered,
        report.total.pairs(),
        report.counters.resends,
        refusals(&report),
        report.counters.reconnects,
        report.counters.connect_failures,
        report.counters.live_gaps,
        report.counters.ack_timeouts,
        report.counters.unexpected.len(),
        began.elapsed().as_secs_f64(),
    );
    line.push_str(&overload_figures);
    println!("{line}");
    if clean && own_dir && spawned {
        let _ = std::fs::remove_dir_all(&data_dir);
    } else if spawned {
        eprintln!("data dir kept: {}", data_dir.display());
    }
    Ok(clean)
}

fn server_spec(
    args: &Args,
    data_dir: &std::path::Path,
    run_id: &str,
) -> anyhow::Result<ServerSpec> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of this binary")?
            .join("parley"),
    };
    let secret = format!(
        "{}{}",
        parley::ids::new_session_id(),
        parley::ids::new_session_id()
    );
    let mut env = vec![
        ("JWT_SECRET".to_owned(), secret),
        (
            "RUST_LOG".to_owned(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
    ];
    let urls = ["KAFKA_BROKERS", "REDIS_URL", "MONGODB_URL"];
    let mut unset = Vec::new();
    match args.mode {
        Mode::Real => {
            for name in urls {
                if std::env::var_os(name).is_none() {
                    bail!("real mode needs {name} (eval \"$(scripts/infra env)\")");
                }
            }
            env.extend([
                ("PARLEY_PARTITIONS".to_owned(), "4".to_owned()),
                ("PARLEY_TOPIC_PREFIX".to_owned(), format!("{run_id}.")),
                ("PARLEY_REDIS_PREFIX".to_owned(), run_id.to_owned()),
                ("PARLEY_MONGODB_DATABASE".to_owned(), run_id.to_owned()),
            ]);
        }
        _ => unset.extend(urls.map(String::from)),
    }
    if args.no_limits || args.mode == Mode::Overload {
        env.push(("PARLEY_WS_FRAMES_PER_SEC".into(), "1000000".into()));
        env.push(("PARLEY_USER_SEND_LIMIT".into(), "100000000".into()));
    }
    Ok(ServerSpec {
        bin,
        data_dir: data_dir.to_owned(),
        env,
        unset,
    })
}

/// Kills or stops the spawned server `args.cycles` times at random
/// moments and starts it again on the same data dir; in real mode, stops
/// and restarts an engine every `engine_every` cycles mid-life.
#[allow(clippy::too_many_arguments)]
async fn inject(
    args: &Args,
    spec: &ServerSpec,
    server: &mut Option<Server>,
    url: &watch::Sender<Option<String>>,
    shared: &Shared,
    pid: &AtomicU64,
    rng: &mut Rng,
    faults: &mut Faults,
) -> anyhow::Result<()> {
    for cycle in 1..=args.cycles {
        let up = Duration::from_millis(rng.between(args.min_up_ms, args.max_up_ms));
        if args.mode == Mode::Real && cycle % args.engine_every.max(1) == 0 {
            tokio::time::sleep(up / 2).await;
            let engine = ENGINES[(faults.engine_faults as usize) % ENGINES.len()];
            eprintln!("torture: cycle {cycle}: stopping {engine}");
            fault::engine_down(&args.infra, engine).await?;
            tokio::time::sleep(Duration::from_millis(args.outage_ms)).await;
            fault::script(&args.infra, &["up", engine]).await?;
            faults.engine_faults += 1;
            tokio::time::sleep(up / 2).await;
        } else {
            tokio::time::sleep(up).await;
        }
        let how = if rng.next().is_multiple_of(3) {
            Stop::Term
        } else {
            Stop::Kill
        };
        url.send_replace(None);
        if let Some(s) = server.take()
            && let Err(e) = s.stop(how).await
        {
            faults.failures.push(format!("cycle {cycle}: {e:#}"));
        }
        match how {
            Stop::Kill => faults.kills += 1,
            Stop::Term => faults.terms += 1,
        }
        let s = fault::start(spec)
            .await
            .with_context(|| format!("restart of cycle {cycle}"))?;
        pid.store(u64::from(s.pid), Ordering::Relaxed);
        shared.next_cycle();
        url.send_replace(Some(s.url.clone()));
        *server = Some(s);
        faults.cycles = cycle;
        eprintln!(
            "torture: cycle {cycle}: {how:?} after {} ms",
            up.as_millis()
        );
    }
    // A last life long enough for everything outstanding to go through.
    tokio::time::sleep(Duration::from_millis(args.max_up_ms)).await;
    Ok(())
}

/// Kills or stops one cluster process per cycle and starts it again.
async fn inject_cluster(args: &Args, shared: &Shared, rng: &mut Rng, faults: &mut Faults) {
    for cycle in 1..=args.cycles {
        tokio::time::sleep(Duration::from_millis(
            rng.between(args.min_up_ms, args.max_up_ms),
        ))
        .await;
        let (action, id) = CLUSTER_FAULTS[(cycle as usize - 1) % CLUSTER_FAULTS.len()];
        eprintln!("torture: cycle {cycle}: {action} {id}");
        if let Err(e) = fault::script(&args.cluster_script, &[action, id]).await {
            faults.failures.push(format!("cycle {cycle}: {e:#}"));
        }
        tokio::time::sleep(Duration::from_millis(args.outage_ms)).await;
        if let Err(e) = fault::script(&args.cluster_script, &["start", id]).await {
            faults
                .failures
                .push(format!("cycle {cycle}: start {id}: {e:#}"));
        }
        shared.next_cycle();
        faults.cluster_faults += 1;
        faults.cycles = cycle;
    }
    tokio::time::sleep(Duration::from_millis(args.max_up_ms)).await;
}

/// What the end of a run found.
pub struct Outcome {
    pub report: Report,
    pub views: Vec<DeviceView>,
    /// Sends never answered, and sends given up (open loop only).
    pub unacked: usize,
    pub given_up: usize,
    /// Devices that finished what they had outstanding, and that received
    /// everything expected, out of all devices.
    pub drained: usize,
    pub complete: usize,
}

/// Quiesces the devices (nothing new, finish what is outstanding, at most
/// 120 s), has them sync until every acked message and change has arrived
/// (at most 60 s), stops them and checks the stored history at `url`
/// against the ledger and their views.
pub async fn finish(
    world: &World,
    shared: &Shared,
    tasks: Vec<tokio::task::JoinHandle<DeviceView>>,
    phase_tx: &watch::Sender<Phase>,
    news_rx: &mut mpsc::UnboundedReceiver<(usize, Milestone)>,
    url: &str,
) -> anyhow::Result<Outcome> {
    let devices = tasks.len();
    phase_tx.send_replace(Phase::Draining);
    let drained = await_news(
        news_rx,
        devices,
        Milestone::Drained,
        Duration::from_secs(120),
    )
    .await;
    let expected = expected(world, shared);
    phase_tx.send_replace(Phase::Final(Arc::new(expected)));
    let complete = await_news(
        news_rx,
        devices,
        Milestone::Complete,
        Duration::from_secs(60),
    )
    .await;
    phase_tx.send_replace(Phase::Stop);
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.context("a device panicked")?);
    }
    let http = reqwest::Client::new();
    let mut logs = Vec::new();
    for c in &world.conversations {
        let token = &world.users[c.members[0]].token;
        logs.push((
            c.id.clone(),
            checker::history(&http, url, token, &c.id).await?,
        ));
    }
    let ledger = shared.lock();
    let report = checker::check(world, &ledger, &views, &logs);
    let unacked = ledger
        .sends
        .values()
        .filter(|r| r.acked_us.is_none() && r.given_up.is_none())
        .count();
    let given_up = ledger
        .sends
        .values()
        .filter(|r| r.given_up.is_some())
        .count();
    drop(ledger);
    Ok(Outcome {
        report,
        views,
        unacked,
        given_up,
        drained,
        complete,
    })
}

/// Starts a device for each device of each user of `world`, numbered from
/// `first`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_devices(
    first: usize,
    world: &Arc<World>,
    shared: &Shared,
    settings: &Arc<Settings>,
    url: &watch::Receiver<Option<String>>,
    phase: &watch::Receiver<Phase>,
    news: &mpsc::UnboundedSender<(usize, Milestone)>,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<DeviceView>> {
    let mut tasks = Vec::new();
    let mut index = first;
    for (user, &count) in world.devices.iter().enumerate() {
        for local in 0..count {
            let device = Device::new(DeviceCtx {
                index,
                user,
                local,
                world: world.clone(),
                shared: shared.clone(),
                settings: settings.clone(),
                url: url.clone(),
                phase: phase.clone(),
                news: news.clone(),
                seed: seed.wrapping_add(index as u64),
            });
            tasks.push(tokio::spawn(device.run()));
            index += 1;
        }
    }
    tasks
}

/// Waits until `count` devices reported `what`, at most `patience`.
pub async fn await_news(
    news: &mut mpsc::UnboundedReceiver<(usize, Milestone)>,
    count: usize,
    what: Milestone,
    patience: Duration,
) -> usize {
    let mut told = HashSet::new();
    let deadline = tokio::time::Instant::now() + patience;
    while told.len() < count {
        match tokio::time::timeout_at(deadline, news.recv()).await {
            Ok(Some((device, m))) if m == what => {
                told.insert(device);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    told.len()
}

/// What each user's devices must end up with: every acked message and
/// acked change of the user's conversations.
fn expected(world: &World, shared: &Shared) -> Expected {
    let ledger = shared.lock();
    let mut e = Expected::default();
    let members = |conversation: &str| {
        world
            .by_id
            .get(conversation)
            .map(|&c| world.conversations[c].members.clone())
            .unwrap_or_default()
    };
    for (key, r) in ledger.sends.iter().filter(|(_, r)| r.acked_us.is_some()) {
        for m in members(&r.conversation) {
            let user = world.users[m].id.clone();
            e.messages.entry(user).or_default().insert(key.clone());
        }
    }
    // Resends are deduped by key, so every acked change must arrive.
    for c in ledger.changes.iter().filter(|c| !c.acked_ids.is_empty()) {
        for m in members(&c.conversation) {
            let user = world.users[m].id.clone();
            e.changes.entry(user).or_default().insert(c.key.clone());
        }
    }
    e
}

fn refusals(report: &Report) -> String {
    let parts: Vec<String> = report
        .counters
        .refusals
        .iter()
        .map(|(code, n)| format!("{code}:{n}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(",")
    }
}

fn print_report(report: &Report, faults: &Faults, world: &World) {
    for (id, f) in &report.per_conversation {
        let kind = world
            .by_id
            .get(id)
            .map(|&c| {
                if world.conversations[c].direct {
                    "direct"
                } else {
                    "group"
                }
            })
            .unwrap_or("?");
        println!("conversation {id} ({kind}): {}", f.pairs());
    }
    for f in &report.findings {
        println!("finding: {f}");
    }
    for u in &report.counters.unexpected {
        println!("unexpected: {u}");
    }
    for i in &report.counters.internal {
        println!("internal error: {i}");
    }
    for f in &faults.failures {
        println!("fault failure: {f}");
    }
}
