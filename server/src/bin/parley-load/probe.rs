//! The server processes' cost over a run, from /proc: CPU time (user +
//! system) and peak resident memory, summed over the processes given (one
//! all-in-one, or every process of a cluster). Started when the measured
//! phase starts (after sign-up and connecting, which are not what is
//! compared), finished when it ends.

use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Clock ticks per second of /proc/PID/stat's times: USER_HZ, fixed at 100
/// by the Linux ABI whatever the kernel's HZ.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time used by process `pid` so far, in clock ticks (utime + stime).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted
    // from after its closing parenthesis, where field 3 (state) starts.
    let rest = stat.rsplit_once(')').context("no comm in stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field =
        |n: usize| -> anyhow::Result<u64> { Ok(fields.get(n - 3).context("short stat")?.parse()?) };
    Ok(field(14)? + field(15)?)
}

/// A measurement of the server under way.
pub struct Probe {
    /// Each process with its CPU ticks at the start and its peak RSS.
    processes: Vec<(u32, u64, Arc<AtomicU64>)>,
    started: Instant,
    samplers: Vec<tokio::task::JoinHandle<()>>,
}

/// What the server used over the measured phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// CPU time, user + system, in seconds, summed over the processes.
    pub cpu_secs: f64,
    /// Wall time of the phase, in seconds.
    pub wall_secs: f64,
    /// Peak resident memory sampled every 100 ms, in KiB: the sum of each
    /// process's own peak (an upper bound of their peak together).
    pub peak_rss_kib: u64,
}

impl Probe {
    /// Starts measuring processes `pids` (nothing when empty).
    pub fn start(pids: &[u32]) -> anyhow::Result<Probe> {
        let mut processes = Vec::with_capacity(pids.len());
        let mut samplers = Vec::with_capacity(pids.len());
        for &pid in pids {
            let peak = Arc::new(AtomicU64::new(0));
            processes.push((pid, cpu_ticks(pid)?, peak.clone()));
            samplers.push(tokio::spawn(parley_server::client::sample_peak_rss(
                Arc::new(AtomicU64::new(u64::from(pid))),
                peak,
            )));
        }
        Ok(Probe {
            processes,
            started: Instant::now(),
            samplers,
        })
    }

    /// Ends the measurement; `None` when no process was given.
    pub fn finish(self) -> anyhow::Result<Option<Usage>> {
        for s in &self.samplers {
            s.abort();
        }
        if self.processes.is_empty() {
            return Ok(None);
        }
        let mut usage = Usage {
            wall_secs: self.started.elapsed().as_secs_f64(),
            ..Usage::default()
        };
        for (pid, ticks_at_start, peak) in &self.processes {
            let ticks = cpu_ticks(*pid)?.saturating_sub(*ticks_at_start);
            usage.cpu_secs += ticks as f64 / TICKS_PER_SEC;
            let rss_now = parley_server::client::rss_kib(*pid).unwrap_or(0);
            usage.peak_rss_kib += peak.load(Ordering::Relaxed).max(rss_now);
        }
        Ok(Some(usage))
    }
}

impl Usage {
    /// ", server CPU …" for a report line, per `messages` delivered.
    pub fn describe(&self, messages: u64) -> String {
        format!(
            "; server CPU {:.2} s over {:.1} s = {:.3} ms per message, peak RSS {:.1} MiB",
            self.cpu_secs,
            self.wall_secs,
            self.cpu_secs * 1000.0 / messages.max(1) as f64,
            self.peak_rss_kib as f64 / 1024.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let me = std::process::id();
        let before = cpu_ticks(me).unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_ticks(me).unwrap() >= before);
    }
}
