//! `parley-torture`: nothing acked is ever lost (issue 10).
//!
//! Clients with a ledger (`ledger`) drive a real Parley: users in 1:1 and
//! group conversations (`world`), several devices per user, each a
//! WebSocket that sends at a steady pace and behaves as docs/protocol.md
//! tells clients to (`client`). Meanwhile the fault injector (`fault`)
//! kills the server with SIGKILL and stops it with SIGTERM at random
//! moments and starts it again on the same data directory (and, on the real
//! engines, stops and starts each engine; on a cluster, single processes).
//! After the last cycle every device drains what it has outstanding and
//! syncs to the end; then the checker (`checker`) compares the stored
//! history with the ledger and with what each device received, prints the
//! figures per conversation and a greppable `TORTURE …` summary line, and
//! the exit code is non-zero on any loss, duplicate, gap or reorder.
//!
//! Modes: `embedded` (the default; the test suite runs it), `real`
//! (KAFKA_BROKERS, REDIS_URL, MONGODB_URL set), `cluster` (through nginx of
//! `scripts/cluster`), `overload` (the capacity measured
//! closed-loop first, then twice that offered open-loop for a duration:
//! offered, acked, refused by code, send → deliver p50/p99 of accepted
//! messages, the server's peak RSS against a bound). Every loop is bounded
//! in count and time.

mod checker;
mod client;
mod fault;
mod ledger;
mod overload;
mod probe;
mod run;
mod scenario;
mod slow;
mod storm;
mod ticker;
mod timeline;
mod world;

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// What to torture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// A spawned `parley` on the embedded backends, killed and restarted.
    Embedded,
    /// A spawned `parley` on Kafka, Redis and MongoDB (from the
    /// environment), killed and restarted; the engines stopped in turn.
    Real,
    /// A running `scripts/cluster`; single processes killed and stopped.
    Cluster,
    /// A spawned `parley` under an open-loop offered rate, no faults.
    Overload,
    /// The fault suite of issue 11 on a running `scripts/cluster`
    /// (`--scenario`, see `scenario`).
    Faults,
}

/// Overload's offered rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// Twice the capacity measured first against the same server.
    Auto,
    /// This many messages per second over all devices.
    Fixed(u64),
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Rate::Auto),
            n => match n.parse::<u64>() {
                Ok(r) if r > 0 => Ok(Rate::Fixed(r)),
                _ => Err(format!("{n:?}: `auto` or messages per second (> 0)")),
            },
        }
    }
}

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "parley-torture",
    about = "Restarts, crashes and overload: nothing acked is ever lost"
)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Mode::Embedded)]
    pub mode: Mode,
    /// The `parley` binary to run (default: beside this one).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// The server's data directory (default: a new one under the temp
    /// dir, removed after a clean run, kept after a failed one).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The cluster's URL (cluster mode).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Kill/stop and restart cycles.
    #[arg(long, default_value_t = 20)]
    pub cycles: u32,
    /// Shortest and longest server life between two faults, in ms.
    #[arg(long, default_value_t = 1500)]
    pub min_up_ms: u64,
    #[arg(long, default_value_t = 5000)]
    pub max_up_ms: u64,
    /// Every how many cycles an engine is stopped (real mode).
    #[arg(long, default_value_t = 3)]
    pub engine_every: u32,
    /// How long a stopped engine or cluster process stays down, in ms.
    #[arg(long, default_value_t = 3000)]
    pub outage_ms: u64,
    #[arg(long, default_value_t = 12)]
    pub users: usize,
    /// Most devices per user (user i has 1 + i % devices); default 3, and
    /// 16 in overload mode (78 WebSockets for 12 users: the edge handles a
    /// connection's frames one at a time, so only many connections, not
    /// deep pipelines on few, can offer the server more than it takes).
    #[arg(long)]
    pub devices: Option<usize>,
    #[arg(long, default_value_t = 3)]
    pub groups: usize,
    /// Time between two operations of one device, in ms.
    #[arg(long, default_value_t = 300)]
    pub pace_ms: u64,
    /// Overload: offered messages per second over all devices, or `auto`:
    /// twice the capacity measured closed-loop against the same server.
    #[arg(long, default_value = "auto")]
    pub rate: Rate,
    /// Overload: how long to offer it, in seconds.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Overload: the bound on the server's peak RSS, in MiB; passing it
    /// fails the run.
    #[arg(long)]
    pub max_rss_mib: Option<u64>,
    /// Lift the server's per-connection and per-user send limits (always
    /// in overload mode).
    #[arg(long)]
    pub no_limits: bool,
    /// Seed of the fault schedule and of the devices' choices.
    #[arg(long)]
    pub seed: Option<u64>,
    /// `scripts/infra` (real mode), `scripts/cluster` (cluster mode).
    #[arg(long, env = "PARLEY_INFRA", default_value = "scripts/infra")]
    pub infra: PathBuf,
    #[arg(long, env = "PARLEY_CLUSTER_SCRIPT", default_value = "scripts/cluster")]
    pub cluster_script: PathBuf,
    /// Faults mode: the scenarios to run, in order (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<scenario::Scenario>,
    /// Faults mode: light WebSocket clients of the reconnect storm.
    #[arg(long, default_value_t = 1000)]
    pub storm_clients: usize,
    /// Faults mode: seconds of load before each fault, the baseline of the
    /// p99 comparison (also the pause between repeated faults, at least 5).
    #[arg(long, default_value_t = 10)]
    pub baseline_secs: u64,
    /// Faults mode: the most the healthy devices' p99 beside slow readers
    /// may be over their baseline (1.2 in the goal); 0 prints the
    /// ratio without making it a goal (the short version in the test
    /// suite: a ratio of two short windows on a debug build is noise, and
    /// speed targets belong to runs that print figures).
    #[arg(long, default_value_t = 1.2)]
    pub p99_ratio_goal: f64,
    /// Faults mode: the devices' pace in the `engines` scenario, in ms. A
    /// resume time is the fault's own only from a steady state, and the
    /// real-engine cluster does not keep up with `--pace-ms` 300 today
    /// (baseline p99 of seconds, issue 12); 1000 it sustains.
    #[arg(long, default_value_t = 1000)]
    pub engines_pace_ms: u64,
    /// Faults mode: seconds of the soak.
    #[arg(long, default_value_t = 60)]
    pub soak_secs: u64,
    /// Faults mode: kill -9 of a chat-svc this many times.
    #[arg(long, default_value_t = 3)]
    pub kills: u32,
    /// Faults mode: clients that stop reading.
    #[arg(long, default_value_t = 3)]
    pub slow_readers: usize,
    /// Faults mode: the edges, read directly for their `/metrics`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:3001,http://127.0.0.1:3002"
    )]
    pub edge_url: Vec<String>,
    /// Give up after this many seconds, whatever the progress.
    #[arg(long, default_value_t = 900)]
    pub deadline_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = std::time::Duration::from_secs(args.deadline_secs);
    // Interrupted, the run is dropped, and with it the spawned server
    // (killed on drop), before the process exits.
    let clean = tokio::select! {
        outcome = tokio::time::timeout(deadline, async {
            if args.mode == Mode::Faults {
                scenario::run(args).await
            } else {
                run::run(args).await
            }
        }) => {
            outcome.map_err(|_| anyhow::anyhow!("deadline reached"))??
        }
        _ = parley::node::shutdown_signal() => anyhow::bail!("interrupted"),
    };
    if !clean {
        std::process::exit(1);
    }
    Ok(())
}
