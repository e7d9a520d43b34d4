//! The fault suite's short version (issue 11): `scripts/cluster` started
//! here on this build's `parley`, with its own topic, key and database
//! prefixes, then `parley-torture --mode faults` with a chat-svc killed
//! once, a storm of 200 light clients after both edges are killed and
//! started together, and slow readers beside healthy clients. Every
//! scenario must meet the goals: nothing lost, stored or shown
//! twice, reordered or missing; delivery back within 3 s of the kill; all
//! clients back within 10 s and no 502 while an edge is up; slow readers
//! closed with 4008 within 15 s (the healthy devices' p99 beside them is
//! printed; `scripts/faults` runs the long version and holds it to 1.2×
//! the baseline).
//!
//! It uses the checkout's `scripts/cluster` (fixed ports 8080, 3001,
//! 3002), so it refuses to run beside a cluster already running there.

use crate::helpers::real_engines;
use std::path::PathBuf;
use std::process::{Command, Output};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join(name)
}

/// `scripts/cluster ARGS` with the test's settings.
fn cluster(args: &[&str], run: &str) -> Output {
    Command::new(script("cluster"))
        .args(args)
        .env("PARLEY_CLUSTER_BIN", env!("CARGO_BIN_EXE_parley"))
        .env("PARLEY_TOPIC_PREFIX", format!("{run}."))
        .env("PARLEY_REDIS_PREFIX", run)
        .env("PARLEY_MONGODB_DATABASE", run)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Stops the cluster however the test ends.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = cluster(&["down"], &self.0);
    }
}

#[test]
fn fault_suite_short_version_meets_the_goals() {
    if !real_engines("the fault suite") {
        return;
    }
    let status = cluster(&["status"], "");
    assert!(
        !status.status.success(),
        "a scripts/cluster is already running: scripts/cluster down first"
    );
    // `c` + 10 hex digits: scripts/test drops such topics of earlier runs.
    let run = format!("c{}", &parley::ids::new_session_id()[..10]);
    let _down = Down(run.clone());
    let up = cluster(&["up"], &run);
    assert!(
        up.status.success(),
        "scripts/cluster up failed\n{}",
        String::from_utf8_lossy(&up.stderr)
    );

    // Item 5: a long log (far past a pipe's 64 KiB) does not make a second
    // `up` take a ready process for one that is not.
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.infra/cluster/logs");
    let filler = "a line of a long log, past what a pipe buffers at once\n".repeat(8000);
    for id in ["auth-1", "presence-1", "chat-1", "chat-2"] {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(logs.join(format!("{id}.log")))
            .unwrap();
        log.write_all(filler.as_bytes()).unwrap();
    }
    let again = cluster(&["up"], &run);
    assert!(
        again.status.success(),
        "a second scripts/cluster up on a running cluster with long logs failed\n{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_parley-torture"))
        .args([
            "--mode",
            "faults",
            "--scenario",
            "chat-kill,storm-at-once,slow-readers",
            "--storm-clients",
            "200",
            "--kills",
            "1",
            "--baseline-secs",
            "5",
            // A lighter load than the long run's (12 users, up to 3
            // devices, 300 ms): the debug build of six processes on two
            // cores saturates under that (p99 of seconds), and the timing
            // goals would measure the saturation, not the fault.
            "--users",
            "6",
            "--devices",
            "2",
            "--groups",
            "1",
            "--pace-ms",
            "600",
            "--deadline-secs",
            "600",
            // The p99 beside slow readers against the baseline is printed,
            // not asserted here: two short windows on a debug build are
            // noise (scripts/faults holds it to 1.2 on the release build).
            "--p99-ratio-goal",
            "0",
        ])
        .arg("--cluster-script")
        .arg(script("cluster"))
        .arg("--infra")
        .arg(script("infra"))
        .env("PARLEY_CLUSTER_BIN", env!("CARGO_BIN_EXE_parley"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("FAULTS "))
        .collect();
    for l in &lines {
        eprintln!("{l}");
    }
    assert_eq!(
        lines.len(),
        3,
        "a scenario printed no line\n{stdout}\n{stderr}"
    );
    for l in &lines {
        assert!(l.contains(" result=PASS "), "{l}\n{stderr}");
        for clean in [
            " lost=0 ",
            " dup=0 ",
            " dup_delivered=0 ",
            " gaps=0 ",
            " reorders=0 ",
        ] {
            assert!(l.contains(clean), "{clean:?} not in {l}");
        }
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // An operator's `down` names no binary: it must still know the
    // processes `up` started from PARLEY_CLUSTER_BIN as the cluster's and
    // stop them all (it once left them running, holding the edges' ports).
    let down = Command::new(script("cluster"))
        .arg("down")
        .env_remove("PARLEY_CLUSTER_BIN")
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "scripts/cluster down failed\n{}",
        String::from_utf8_lossy(&down.stderr)
    );
    for port in [3001, 3002, 8080] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "127.0.0.1:{port} still answers after scripts/cluster down"
        );
    }
}
