//! Idle connections: the server's memory per connection, and the CPU it
//! spends holding them (keep-alive pings and timers).

use crate::Ctx;
use crate::probe::Probe;
use crate::target::hold;
use anyhow::Context;
use futures::StreamExt;
use parley_server::client::rss_kib;
use serde_json::json;
use std::time::{Duration, Instant};

/// Users the connections are spread over (each opens many).
const USERS: usize = 10;
/// Connections being opened at once.
const OPENING: usize = 64;

pub async fn idle(ctx: &Ctx, connections: usize, hold_for: Duration) -> anyhow::Result<()> {
    let target = &ctx.target;
    let [pid] = ctx.server_pid[..] else {
        anyhow::bail!("idle needs one --server-pid");
    };
    let users = target.users(&crate::prefix(), USERS).await?;
    // Every connection is read (and answers pings) as soon as it is open,
    // as an idle client does; the tasks end when the run does.
    let mut held = Vec::with_capacity(connections + users.len());
    // One warm-up connection per user, so per-user state is not counted.
    for u in &users {
        held.push(tokio::spawn(hold(
            target.clone(),
            target.connect(u).await?.0,
        )));
    }
    let before = rss_kib(pid)?;
    let began = Instant::now();
    let mut opened = futures::stream::iter(0..connections)
        .map(|i| {
            let user = &users[i % users.len()];
            async move { target.connect(user).await }
        })
        .buffer_unordered(OPENING);
    while let Some(ws) = opened.next().await {
        held.push(tokio::spawn(hold(target.clone(), ws?.0)));
    }
    let opening = began.elapsed();
    let after = rss_kib(pid)?;
    // Let the opening's work (handshakes, buffers) settle first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probe = Probe::start(&[pid])?;
    tokio::time::sleep(hold_for).await;
    let usage = probe.finish()?.context("no usage")?;
    let closed = held.iter().filter(|h| h.is_finished()).count();
    for h in held {
        h.abort();
    }
    let per_conn_kib = after.saturating_sub(before) as f64 / connections.max(1) as f64;
    let cpu_percent = 100.0 * usage.cpu_secs / usage.wall_secs;
    println!(
        "idle ({}): {connections} authenticated connections opened in {:.1} s; server RSS {:.1} MiB → {:.1} MiB = {per_conn_kib:.1} KiB per connection; held {:.0} s: server CPU {cpu_percent:.1} % of a core; {closed} closed meanwhile",
        target.name(),
        opening.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        usage.wall_secs,
    );
    ctx.record(json!({"mode": "idle", "connections": connections,
        "rss_before_mib": before as f64 / 1024.0, "rss_after_mib": after as f64 / 1024.0,
        "kib_per_connection": per_conn_kib, "idle_cpu_percent": cpu_percent,
        "held_secs": usage.wall_secs, "closed": closed}))
}
