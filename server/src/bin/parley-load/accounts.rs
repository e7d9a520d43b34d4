//! `accounts`: a flood of registrations, then of logins, from `concurrency`
//! clients at once, each sending its next request as soon as the last is
//! answered (closed-loop, so the server's password-hash bound, not the
//! generator, sets the pace). Reports requests/s, answers by HTTP status,
//! p50/p99/max of each request and, given `--server-pid` (the auth-svc
//! process, or the all-in-one), its CPU per request and peak RSS: the
//! figures behind "auth-svc stays under 150 MB through a flood".

use crate::probe::Probe;
use crate::{Ctx, merge, quantiles_ms, usage_fields};
use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The password every account of the run gets (the server's minimum length
/// is met).
const PASSWORD: &str = "load-password-1";

/// One phase's answers: latency of every request (µs) and count by status.
struct Tally {
    latencies: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    /// Accounts registered, by name (the login phase logs into these).
    registered: Vec<String>,
}

pub async fn accounts(ctx: &Ctx, concurrency: usize, secs: u64) -> anyhow::Result<()> {
    let url = ctx.target.parley_url()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let prefix = crate::prefix();
    let phase = Duration::from_secs(secs);

    let probe = Probe::start(&ctx.server_pid)?;
    let register = run_phase(concurrency, phase, |worker, n| {
        let name = format!("{prefix}a{worker}n{n}");
        let request = http.post(format!("{url}/api/auth/register")).json(
            &json!({"username": name, "email": format!("{name}@load.test"), "password": PASSWORD}),
        );
        (name, request)
    })
    .await?;
    let register_usage = probe.finish()?;
    report(
        ctx,
        "register",
        concurrency,
        phase,
        &register,
        register_usage,
    )?;

    let accounts = register.registered.clone();
    anyhow::ensure!(!accounts.is_empty(), "no registration succeeded");
    let probe = Probe::start(&ctx.server_pid)?;
    let login = run_phase(concurrency, phase, |worker, n| {
        let name = &accounts[(worker * 7919 + n) % accounts.len()];
        let request = http
            .post(format!("{url}/api/auth/login"))
            .json(&json!({"email": format!("{name}@load.test"), "password": PASSWORD}));
        (name.clone(), request)
    })
    .await?;
    let login_usage = probe.finish()?;
    report(ctx, "login", concurrency, phase, &login, login_usage)
}

/// Runs `concurrency` closed-loop workers for `phase`; `request(worker, n)`
/// builds a worker's `n`th request and names its account.
async fn run_phase<F>(concurrency: usize, phase: Duration, request: F) -> anyhow::Result<Tally>
where
    F: Fn(usize, usize) -> (String, reqwest::RequestBuilder) + Sync,
{
    let tally = Mutex::new(Tally {
        latencies: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        statuses: BTreeMap::new(),
        registered: Vec::new(),
    });
    let end = Instant::now() + phase;
    let workers = (0..concurrency).map(|worker| {
        let tally = &tally;
        let request = &request;
        async move {
            let mut n = 0;
            while Instant::now() < end {
                let (name, builder) = request(worker, n);
                n += 1;
                let started = Instant::now();
                let status = match builder.send().await {
                    Ok(resp) => resp.status().as_u16().to_string(),
                    Err(e) if e.is_timeout() => "timeout".to_owned(),
                    Err(_) => "connection error".to_owned(),
                };
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                let mut t = tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                t.latencies.saturating_record(micros.max(1));
                if status.starts_with('2') {
                    t.registered.push(name);
                }
                *t.statuses.entry(status).or_insert(0) += 1;
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(workers).await?;
    tally.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))
}

fn report(
    ctx: &Ctx,
    what: &str,
    concurrency: usize,
    phase: Duration,
    tally: &Tally,
    usage: Option<crate::probe::Usage>,
) -> anyhow::Result<()> {
    let total: u64 = tally.statuses.values().sum();
    let h = &tally.latencies;
    let statuses: Vec<String> = tally
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    let usage_text = usage.map_or_else(String::new, |u| {
        format!(
            "; server CPU {:.2} s = {:.1} ms per request, peak RSS {:.1} MiB",
            u.cpu_secs,
            u.cpu_secs * 1000.0 / total.max(1) as f64,
            u.peak_rss_kib as f64 / 1024.0
        )
    });
    println!(
        "accounts ({}): {what}, {concurrency} clients for {} s: {total} requests ({:.0}/s), answers {{{}}}; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{usage_text}",
        ctx.target.name(),
        phase.as_secs(),
        total as f64 / phase.as_secs_f64(),
        statuses.join(", "),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
    ctx.record(merge(
        merge(
            json!({
                "mode": "accounts",
                "phase": what,
                "concurrency": concurrency,
                "secs": phase.as_secs(),
                "requests": total,
                "statuses": tally.statuses,
            }),
            quantiles_ms(h),
        ),
        usage_fields(usage, total),
    ))
    .context("record results")
}
