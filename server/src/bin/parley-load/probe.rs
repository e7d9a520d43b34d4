//! The server process's cost over a run, from /proc: CPU time (user +
//! system) and peak resident memory. Started when the measured phase starts
//! (after sign-up and connecting, which are not what is compared), finished
//! when it ends.

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
    pid: Option<u32>,
    ticks_at_start: u64,
    started: Instant,
    peak_rss_kib: Arc<AtomicU64>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

/// What the server used over the measured phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// CPU time, user + system, in seconds.
    pub cpu_secs: f64,
    /// Wall time of the phase, in seconds.
    pub wall_secs: f64,
    /// Peak resident memory sampled every 100 ms, in KiB.
    pub peak_rss_kib: u64,
}

impl Probe {
    /// Starts measuring process `pid` (nothing when `None`).
    pub fn start(pid: Option<u32>) -> anyhow::Result<Probe> {
        let peak_rss_kib = Arc::new(AtomicU64::new(0));
        let (ticks_at_start, sampler) = match pid {
            Some(pid) => (
                cpu_ticks(pid)?,
                Some(tokio::spawn(parley_server::client::sample_peak_rss(
                    Arc::new(AtomicU64::new(u64::from(pid))),
                    peak_rss_kib.clone(),
                ))),
            ),
            None => (0, None),
        };
        Ok(Probe {
            pid,
            ticks_at_start,
            started: Instant::now(),
            peak_rss_kib,
            sampler,
        })
    }

    /// Ends the measurement; `None` when no process was given.
    pub fn finish(self) -> anyhow::Result<Option<Usage>> {
        if let Some(s) = &self.sampler {
            s.abort();
        }
        let Some(pid) = self.pid else {
            return Ok(None);
        };
        let ticks = cpu_ticks(pid)?.saturating_sub(self.ticks_at_start);
        let rss_now = parley_server::client::rss_kib(pid).unwrap_or(0);
        Ok(Some(Usage {
            cpu_secs: ticks as f64 / TICKS_PER_SEC,
            wall_secs: self.started.elapsed().as_secs_f64(),
            peak_rss_kib: self.peak_rss_kib.load(Ordering::Relaxed).max(rss_now),
        }))
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
