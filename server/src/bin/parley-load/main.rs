//! `parley-load`: the load generator and benchmark for a running Parley, or
//! for Centrifugo configured for the same workload (`--target centrifugo`,
//! see `scripts/bench peer`), so both see the same generator and schedule.
//!
//! - `chat`: pairs of users over real WebSockets; each sender keeps a window
//!   of unacknowledged messages in flight; the receiver measures send →
//!   deliver latency. Reports messages/s and p50/p99/max.
//! - `flood`: the same pairs, open-loop: each sender sends on a fixed
//!   schedule whatever the answers.
//! - `group`: one group of N members, every one online; one member sends
//!   with a window in flight or at a fixed rate; reports deliveries/s and,
//!   per message, the time from send to its last member (p50/p99/max),
//!   optionally (Parley) with every member marking each message read.
//! - `accounts`: registrations, then logins, from many clients at once;
//!   requests/s, answers by status, latency, and the server's RSS (the
//!   password-hash bound under a flood).
//! - `idle`: opens N authenticated connections that stay idle and reports
//!   the server's resident memory per connection and its idle CPU.
//!
//! Given `--server-pid` (one, or a cluster's processes comma-separated),
//! the chat, flood, group and accounts modes also report the
//! server's CPU time per delivered message and its peak RSS over the
//! measured phase; `--results FILE` appends each run's figures there as one
//! JSON line, for scripts.
//!
//! Traffic goes only to the URL given (loopback in every script here); every
//! run is bounded by its counts and a deadline.

mod accounts;
mod centrifugo;
mod chat;
mod engines;
mod flood;
mod group;
mod idle;
mod parley_wire;
mod probe;
mod target;
mod window;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use target::Target;

#[derive(Debug, Parser)]
#[command(
    name = "parley-load",
    about = "Load generator and benchmarks for Parley (and Centrifugo, for comparison)"
)]
struct Args {
    /// The edge (or nginx, or Centrifugo) to load.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// The server's protocol.
    #[arg(long, value_enum, default_value_t = Server::Parley, global = true)]
    target: Server,
    /// Centrifugo's HMAC secret for connection tokens.
    #[arg(
        long,
        env = "CENTRIFUGO_HMAC_SECRET",
        global = true,
        hide_env_values = true
    )]
    centrifugo_secret: Option<String>,
    /// Give up after this many seconds, whatever the progress.
    #[arg(long, default_value_t = 300, global = true)]
    deadline_secs: u64,
    /// Bytes in each message body (at least the digits it carries).
    #[arg(long, default_value_t = 100, global = true)]
    body_bytes: usize,
    /// The server process (or processes, comma-separated: a cluster's),
    /// for their CPU time and RSS, summed.
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Append each run's figures to this file as one JSON line.
    #[arg(long, global = true)]
    results: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Server {
    Parley,
    Centrifugo,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// 1:1 send → deliver throughput and latency, closed-loop.
    Chat {
        #[arg(long, default_value_t = 20)]
        pairs: usize,
        #[arg(long, default_value_t = 500)]
        messages: usize,
        /// Unacknowledged messages each sender keeps in flight.
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
    /// Open-loop: senders send on a fixed schedule whatever the answers, so
    /// the server sees the offered rate even past its capacity. Reports what
    /// was accepted, refused (by code) and delivered, send → deliver of
    /// accepted messages and the server's CPU and peak RSS.
    Flood {
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        /// Offered messages per second, over all senders.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        secs: u64,
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
        /// Send at this many messages per second whatever the answers
        /// (open-loop) instead of keeping a window.
        #[arg(long)]
        rate: Option<u64>,
        /// Every member sends `mark_read` for each message it gets (Parley).
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
    /// A flood of registrations for SECS seconds, then of logins into the
    /// accounts it made, CONCURRENCY requests in flight (Parley).
    Accounts {
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Memory per idle authenticated connection, and idle CPU.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Hold the connections this long, in seconds, measuring the
        /// server's CPU.
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
    },
}

/// What every mode needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub target: Target,
    pub body_bytes: usize,
    pub server_pid: Vec<u32>,
    results: Option<PathBuf>,
}

impl Ctx {
    /// Appends `figures` (with the target's name) to the results file.
    pub fn record(&self, mut figures: Value) -> anyhow::Result<()> {
        let Some(path) = &self.results else {
            return Ok(());
        };
        figures["target"] = self.target.name().into();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(file, "{figures}")?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = Duration::from_secs(args.deadline_secs);
    let target = match args.target {
        Server::Parley => Target::Parley { url: args.url },
        Server::Centrifugo => Target::Centrifugo {
            url: args.url,
            secret: args
                .centrifugo_secret
                .context("--centrifugo-secret (or CENTRIFUGO_HMAC_SECRET) is needed")?,
        },
    };
    let ctx = Ctx {
        target,
        body_bytes: args.body_bytes,
        server_pid: args.server_pid,
        results: args.results,
    };
    let run = async {
        match args.mode {
            Mode::Chat {
                pairs,
                messages,
                window,
            } => chat::chat(&ctx, pairs, messages, window).await,
            Mode::Idle {
                connections,
                hold_secs,
            } => idle::idle(&ctx, connections, Duration::from_secs(hold_secs)).await,
            Mode::Flood { pairs, rate, secs } => flood::flood(&ctx, pairs, rate, secs).await,
            Mode::Group {
                members,
                messages,
                window,
                rate,
                read_receipts,
            } => group::group(&ctx, members, messages, window, rate, read_receipts).await,
            Mode::Accounts { concurrency, secs } => {
                accounts::accounts(&ctx, concurrency, secs).await
            }
            Mode::Produce { count } => engines::produce(count).await,
            Mode::Insert { count, batch } => engines::insert(count, batch).await,
        }
    };
    tokio::time::timeout(deadline, run)
        .await
        .context("deadline reached")?
}

/// A name prefix unique to this run, so runs against one server do not
/// collide.
pub fn prefix() -> String {
    format!("load{}x", std::process::id() % 100_000)
}

/// A histogram's p50, p99 and max, in ms, for the results file.
/// Adds one reader's send → deliver latencies (µs) to the run's histogram,
/// under its lock once; 0 counts as 1 µs, the histogram's lowest value.
pub fn record_latencies(
    histogram: &std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    latencies: Vec<u64>,
) -> anyhow::Result<()> {
    let mut h = histogram.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    for l in latencies {
        h.record(l.max(1))?;
    }
    Ok(())
}

pub fn quantiles_ms(h: &hdrhistogram::Histogram<u64>) -> Value {
    serde_json::json!({
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
    })
}

/// Adds `extra`'s fields to `base` (both objects).
pub fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// The server's usage as results fields (none when it was not measured),
/// per `messages` delivered.
pub fn usage_fields(usage: Option<probe::Usage>, messages: u64) -> Value {
    match usage {
        Some(u) => serde_json::json!({
            "cpu_secs": u.cpu_secs,
            "wall_secs": u.wall_secs,
            "cpu_ms_per_msg": u.cpu_secs * 1000.0 / messages.max(1) as f64,
            "peak_rss_mib": u.peak_rss_kib as f64 / 1024.0,
        }),
        None => serde_json::json!({}),
    }
}

/// The report suffix of a measured usage.
pub fn usage_text(usage: Option<probe::Usage>, messages: u64) -> String {
    usage.map(|u| u.describe(messages)).unwrap_or_default()
}
