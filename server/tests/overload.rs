//! The overload case of issue 10 ("the same ledger at twice the measured
//! capacity for 30 s: nothing acked is lost, refusals are explicit, server
//! RSS stays under a stated bound") on the embedded backends and the debug
//! build: `parley-torture --mode overload --rate auto` measures the
//! server's capacity closed-loop with its ledger clients, then offers twice
//! that open-loop for 30 s; devices resend refused sends with the same
//! `client_msg_id` after a backoff. The server runs with its default
//! bounds. The run must pass with nothing acked
//! lost, duplicated, gapped or reordered, with refusals counted (some
//! `unavailable`: the overload was real) and the server's peak RSS under
//! the stated bound, [`MAX_RSS_MIB`]. Its own test binary, so it runs
//! alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/torture.rs"]
mod common;

/// The stated bound on the server's RSS under overload, in MiB.
const MAX_RSS_MIB: u64 = 512;

#[test]
fn twice_the_measured_capacity_for_thirty_seconds_loses_nothing_acked() {
    let bound = MAX_RSS_MIB.to_string();
    let summary = common::passing_summary(
        &[
            "--mode",
            "overload",
            "--rate",
            "auto",
            "--duration-secs",
            "30",
            "--max-rss-mib",
            &bound,
            "--deadline-secs",
            "300",
        ],
        // The server's own bounds: on the debug build the send path (edge →
        // chat-svc → bus append) saturates before the sequencers fall
        // behind, and the edge refuses sends that waited past
        // PARLEY_MAX_FRAME_WAIT_MS; the release build refuses on both.
        &[],
        &[
            " lost=0 ",
            " dup=0 ",
            " gaps=0 ",
            " reorders=0 ",
            " unacked=0 ",
            " rss=ok",
        ],
    );
    let field = |name: &str| -> f64 {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {name} in {summary}"))
            .parse()
            .unwrap_or_else(|e| panic!("{name} in {summary}: {e}"))
    };
    // Refusals are explicit: the server said `unavailable`, and the
    // clients counted it.
    let refused = summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("refused="))
        .unwrap();
    let unavailable: u64 = refused
        .split(',')
        .find_map(|c| c.strip_prefix("unavailable:"))
        .unwrap_or_else(|| panic!("no unavailable refusal in {summary}"))
        .parse()
        .unwrap();
    assert!(unavailable > 0, "{summary}");
    // The overload was offered: about twice the capacity.
    let capacity = field("capacity_per_s");
    assert!(capacity > 0.0, "{summary}");
    assert!(field("offered_per_s") > 1.5 * capacity, "{summary}");
    assert!(field("acked_per_s") > 0.0, "{summary}");
    assert!(field("peak_rss_mib") <= MAX_RSS_MIB as f64, "{summary}");
}
