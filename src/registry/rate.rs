//! Rate limits shared by every process: GCRA (the generic cell rate
//! algorithm, a token bucket kept as one timestamp per key).
//!
//! A limit reads "at most `limit` events in any `period`", for every
//! window of that length, not only windows aligned to the clock (a fixed
//! window lets `2 × limit` through around each boundary). A token bucket
//! holding `limit` tokens and refilling `limit` per period cannot keep that
//! promise either: right after a full burst it refills, so one period can
//! see nearly `2 × limit`. The burst and the refill therefore share the
//! limit: bursts of up to `⌈limit / 2⌉` events, refilled at
//! `⌊limit / 2⌋ + 1` per period. Then `limit + 1` admitted events always
//! span at least a period (proof on [`Gcra::new`]), and an emptied bucket
//! is full again about one period later.
//!
//! GCRA stores the theoretical arrival time (TAT) of the next event: an
//! event at `now` is admitted when `now ≥ TAT − tolerance`, and then moves
//! the TAT one interval on (from `now` if it was in the past). A key whose
//! TAT has passed holds nothing worth keeping, so stored TATs expire then.
//! The registries run [`Gcra::check`] in process (memory) or its twin in a
//! Lua script (Redis).

use std::time::Duration;

/// What a rate limit says about one more event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Counted: go ahead.
    Allowed,
    /// Not counted: the same event would be admitted after `retry_after`.
    Limited {
        /// How long until the limit admits one more event.
        retry_after: Duration,
    },
}

impl Decision {
    /// Whether the event was admitted.
    pub fn allowed(self) -> bool {
        self == Self::Allowed
    }
}

/// GCRA parameters for "at most `limit` events in any `period`", in
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one event costs: the TAT moves on by this much per event.
    pub interval_ms: u64,
    /// How far ahead of `now` the TAT may run: the burst is
    /// `tolerance / interval + 1` events.
    pub tolerance_ms: u64,
}

impl Gcra {
    /// The parameters for "at most `limit` in any `period`" (a `limit` of 0
    /// counts as 1; a period under 1 ms as 1 ms).
    ///
    /// With a burst `B = ⌈N/2⌉` (tolerance `(B − 1)·T`) and an interval
    /// `T = ⌈P / M⌉` for `M = N − B + 1`: each admitted event moves the TAT
    /// on by `T` and is admitted only at or after `TAT − tolerance`, so
    /// events `i` and `i + N` are at least `N·T − (B − 1)·T = M·T ≥ P`
    /// apart: no half-open window `[t, t + P)` holds more than `N`.
    pub fn new(limit: u64, period: Duration) -> Self {
        let limit = limit.max(1);
        let burst = limit.div_ceil(2);
        let refill = limit - burst + 1;
        let period_ms = u64::try_from(period.as_millis())
            .unwrap_or(u64::MAX / 4)
            .clamp(1, u64::MAX / 4);
        let interval_ms = period_ms.div_ceil(refill);
        Self {
            interval_ms,
            tolerance_ms: interval_ms.saturating_mul(burst - 1),
        }
    }

    /// Decides on one event at `now_ms` given the stored TAT (`None` when
    /// there is none); answers the decision and the TAT to store (unchanged
    /// when limited). Times are milliseconds on one clock.
    pub fn check(&self, now_ms: u64, tat_ms: Option<u64>) -> (Decision, u64) {
        let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
        let allowed_at = tat.saturating_sub(self.tolerance_ms);
        if now_ms < allowed_at {
            let retry_after = Duration::from_millis(allowed_at - now_ms);
            return (Decision::Limited { retry_after }, tat);
        }
        (Decision::Allowed, tat.saturating_add(self.interval_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tries an event every `step` ms for `span` ms; answers when each
    /// admitted one happened.
    fn admitted(limit: u64, period_ms: u64, step: u64, span: u64) -> Vec<u64> {
        let gcra = Gcra::new(limit, Duration::from_millis(period_ms));
        let mut tat = None;
        let mut out = Vec::new();
        let mut now = 1_000_000;
        while now < 1_000_000 + span {
            // A burst of attempts at each instant, as several sockets send.
            for _ in 0..3 {
                let (decision, next) = gcra.check(now, tat);
                tat = Some(next);
                if decision.allowed() {
                    out.push(now);
                }
            }
            now += step;
        }
        out
    }

    #[test]
    fn no_window_of_the_period_admits_more_than_the_limit() {
        for limit in [1, 2, 3, 4, 5, 10, 99, 100] {
            for period_ms in [7, 100, 1_000, 10_000] {
                for step in [1, 3, 50] {
                    let times = admitted(limit, period_ms, step, period_ms * 4);
                    let n = usize::try_from(limit).unwrap_or(usize::MAX);
                    for pair in times.windows(n + 1) {
                        assert!(
                            pair[n] - pair[0] >= period_ms,
                            "limit {limit}/{period_ms} ms, step {step}: {} events in {} ms",
                            n + 1,
                            pair[n] - pair[0]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bursts_half_the_limit_and_refills_within_about_a_period() {
        let gcra = Gcra::new(100, Duration::from_secs(10));
        let mut tat = None;
        let mut burst = 0;
        loop {
            let (decision, next) = gcra.check(0, tat);
            tat = Some(next);
            if let Decision::Limited { retry_after } = decision {
                assert!(retry_after > Duration::ZERO);
                assert!(retry_after <= Duration::from_secs(10));
                break;
            }
            burst += 1;
        }
        assert_eq!(burst, 50);
        // A period later the whole burst is back.
        let mut again = 0;
        loop {
            let (decision, next) = gcra.check(10_000, tat);
            tat = Some(next);
            if !decision.allowed() {
                break;
            }
            again += 1;
        }
        assert_eq!(again, 50);
        // The sustained rate uses the rest of the limit.
        let times = admitted(100, 10_000, 1, 100_000);
        assert!((500..=1000).contains(&times.len()), "{}", times.len());
    }

    #[test]
    fn a_limited_event_does_not_count() {
        let gcra = Gcra::new(1, Duration::from_millis(100));
        let (first, tat) = gcra.check(0, None);
        assert!(first.allowed());
        let (second, same) = gcra.check(50, Some(tat));
        assert_eq!(
            second,
            Decision::Limited {
                retry_after: Duration::from_millis(50)
            }
        );
        assert_eq!(same, tat);
        assert!(gcra.check(100, Some(same)).0.allowed());
    }
}
