//! The frames one connection has read and not yet handled.
//!
//! The connection's task reads frames as they arrive instead of leaving
//! them in the socket while a command runs, so it knows when each arrived
//! and can refuse at once what it will not take:
//! - past the connection's frame rate (`frames_per_second`, bursts of
//!   twice that): `rate_limited`, the client slows down;
//! - past [`MAX_QUEUED`] frames or [`MAX_QUEUED_BYTES`]: `unavailable`;
//! - a resendable command (send, edit, delete, react) that waited longer
//!   than `max_frame_wait` here: `unavailable`, and so is every resendable
//!   command queued behind it, so an accepted command never overtakes a
//!   refused one from the same connection (the client resends the refused
//!   ones in order, with their `client_msg_id`s).
//!
//! Under overload the wait here is what grows: refusing late commands keeps
//! what is accepted prompt, and the refusal tells the client to back off.

use axum::extract::ws::Utf8Bytes;
use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parley::protocol::{decode, server};
use parley::{ApiError, ErrorCode};
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;

/// Frames read and not yet handled, per connection. At least the default
/// burst of the frame rate (2 × 30), so a client within its rate is never
/// refused for the queue alone.
pub const MAX_QUEUED: usize = 64;
/// Bytes of frames read and not yet handled, per connection; one frame of
/// any size the transport accepts is always taken into an empty queue.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024;

pub type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// The refusal of a frame the edge will not take or try: nothing was
/// accepted, resend with the same `client_msg_id` after a pause.
pub fn busy() -> ApiError {
    ApiError::unavailable("server busy, resend")
}

/// A GCRA limiter of `per_second` with bursts of `burst` (governor).
pub fn limiter(per_second: u32, burst: u32) -> Limiter {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

/// A frame taken off the queue to be handled.
pub struct Next {
    pub text: Utf8Bytes,
    /// Refuse it as busy if it is resendable: it waited too long, or one
    /// queued before it was refused so.
    pub late: bool,
}

pub struct Intake {
    queue: VecDeque<(Instant, Utf8Bytes)>,
    bytes: usize,
    rate: Limiter,
    max_wait: Duration,
    /// A resendable frame was refused as late and others were queued
    /// behind it: they are refused too, until the queue has drained.
    shedding: bool,
}

impl Intake {
    pub fn new(frames_per_second: u32, max_wait: Duration) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            rate: limiter(frames_per_second, frames_per_second.saturating_mul(2)),
            max_wait,
            shedding: false,
        }
    }

    /// Takes a frame just read; answers the `error` frame to write at once
    /// when it is refused instead.
    pub fn offer(&mut self, text: Utf8Bytes) -> Result<(), Utf8Bytes> {
        metrics::counter!("parley_edge_frames_received_total").increment(1);
        let refusal = if self.rate.check().is_err() {
            ApiError::new(ErrorCode::RateLimited, "too many frames, slow down")
        } else if self.queue.len() >= MAX_QUEUED
            || (!self.queue.is_empty() && self.bytes + text.len() > MAX_QUEUED_BYTES)
        {
            metrics::counter!("parley_edge_frames_shed_total").increment(1);
            busy()
        } else {
            self.bytes += text.len();
            self.queue.push_back((Instant::now(), text));
            return Ok(());
        };
        let reference = match decode(text.as_str()) {
            Ok(envelope) => envelope.reference,
            Err(bad) => bad.reference,
        };
        Err(server::error(reference.as_deref(), &refusal).into())
    }

    /// The oldest frame not handled yet.
    pub fn pop(&mut self) -> Option<Next> {
        let (received, text) = self.queue.pop_front()?;
        self.bytes -= text.len();
        Some(Next {
            late: self.shedding || received.elapsed() > self.max_wait,
            text,
        })
    }

    /// Reports that the frame from [`Intake::pop`] was handled, and
    /// whether it was refused as late.
    pub fn handled(&mut self, shed: bool) {
        self.shedding = (self.shedding || shed) && !self.queue.is_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Utf8Bytes {
        format!(r#"{{"type":"ping","ref":"f{n}"}}"#).into()
    }

    #[test]
    fn a_burst_past_the_rate_is_refused_with_its_ref() {
        let mut intake = Intake::new(1, Duration::from_secs(1));
        assert!(intake.offer(frame(0)).is_ok());
        assert!(intake.offer(frame(1)).is_ok());
        let refused = intake.offer(frame(2)).unwrap_err();
        let v: serde_json::Value = serde_json::from_str(refused.as_str()).unwrap();
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["ref"], "f2");
    }

    #[test]
    fn a_full_queue_refuses_as_busy() {
        let mut intake = Intake::new(1_000_000, Duration::from_secs(1));
        for n in 0..MAX_QUEUED {
            assert!(intake.offer(frame(n)).is_ok());
        }
        let refused = intake.offer(frame(MAX_QUEUED)).unwrap_err();
        let v: serde_json::Value = serde_json::from_str(refused.as_str()).unwrap();
        assert_eq!(v["code"], "unavailable");
        assert!(intake.pop().is_some());
        assert!(intake.offer(frame(MAX_QUEUED + 1)).is_ok(), "room again");
    }

    #[test]
    fn bytes_are_bounded_but_one_large_frame_fits_an_empty_queue() {
        let mut intake = Intake::new(1_000_000, Duration::from_secs(1));
        let big: Utf8Bytes = "x".repeat(MAX_QUEUED_BYTES).into();
        assert!(intake.offer(big.clone()).is_ok());
        assert!(intake.offer(frame(1)).is_err());
        intake.pop();
        assert!(intake.offer(frame(2)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn everything_behind_a_late_frame_is_late_until_the_queue_drains() {
        let mut intake = Intake::new(1_000_000, Duration::from_millis(100));
        intake.offer(frame(0)).unwrap();
        tokio::time::advance(Duration::from_millis(150)).await;
        intake.offer(frame(1)).unwrap();
        let first = intake.pop().unwrap();
        assert!(first.late, "waited 150 ms of a 100 ms budget");
        intake.handled(true);
        let second = intake.pop().unwrap();
        assert!(second.late, "queued behind a refused frame");
        intake.handled(false);
        intake.offer(frame(2)).unwrap();
        assert!(!intake.pop().unwrap().late, "the queue had drained");
    }
}
