//! The torture test of issue 10 ("nothing acked is ever lost: restarts,
//! crashes and overload") on the embedded backends: `parley-torture` drives
//! the real `parley` binary with 12 users, 1:1 and group conversations and
//! several devices per user while it kills the server with SIGKILL or stops
//! it with SIGTERM 20 times at random moments, restarting it on the same
//! data directory each time; then it checks that every acked message is
//! stored once, in send order, with dense seqs, and reached every member
//! device once, and that every acked edit, deletion and reaction was
//! applied exactly once. Its own test binary, so it runs alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/torture.rs"]
mod common;

#[test]
fn nothing_acked_is_lost_across_twenty_kill_and_term_cycles() {
    common::passing_summary(
        &[
            "--mode",
            "embedded",
            "--cycles",
            "20",
            "--deadline-secs",
            "600",
        ],
        &[],
        &[
            " lost=0 ",
            " dup=0 ",
            " gaps=0 ",
            " reorders=0 ",
            " changes_lost=0 ",
            " changes_dup=0 ",
            " changes_unacked_applied=0 ",
            " cycles=20 ",
        ],
    );
}
