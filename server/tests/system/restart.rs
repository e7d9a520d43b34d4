//! The real binary, killed and restarted on the same data directory:
//! accounts and history survive, and a message acked just before a kill -9
//! is delivered after the restart.

use crate::helpers::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Node {
    child: Child,
    app: TestApp,
}

/// Starts `parley` on port 0 over `dir` and waits for its listening line.
fn start(dir: &std::path::Path, backends: &parley::config::BackendConfig) -> Node {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    command
        .env("PORT", "0")
        .env("PARLEY_DATA_DIR", dir)
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .env("PARLEY_PARTITIONS", backends.partitions.to_string())
        .env("PARLEY_TOPIC_PREFIX", &backends.topic_prefix)
        .env("PARLEY_REDIS_PREFIX", &backends.redis_prefix);
    for (name, value) in [
        ("KAFKA_BROKERS", &backends.kafka_brokers),
        ("REDIS_URL", &backends.redis_url),
        ("MONGODB_URL", &backends.mongodb_url),
        ("PARLEY_MONGODB_DATABASE", &backends.mongodb_database),
    ] {
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
    }
    let mut child = command
        .stdout(Stdio::piped())
        // Kept beside the data for a failing run to read.
        .stderr(std::fs::File::create(dir.join("parley.stderr")).map_or(Stdio::null(), Stdio::from))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("parley exited before listening")
            .unwrap();
        if let Some(url) = line.strip_prefix("Parley listening on http://") {
            break url.parse().unwrap();
        }
    };
    Node {
        child,
        app: TestApp::at(addr),
    }
}

impl Node {
    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL: no shutdown path runs
        self.child.wait().unwrap();
    }
}

#[tokio::test]
async fn accounts_and_history_survive_and_an_acked_message_outlives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backend_config(dir.path());
    let node = start(dir.path(), &backends);
    let alice = node.app.register("alice").await;
    let bob = node.app.register("bob").await;
    let mut a = node.app.connect(&alice).await;
    let first = a.send_message(&bob.id, "before the crash").await;
    a.expect("new_message").await; // stored
    // Acked, then the process dies at once: nothing waited for delivery.
    let acked = a.send_message(&bob.id, "acked just before kill -9").await;
    node.kill();

    let node = start(dir.path(), &backends);
    let (status, login) = node
        .app
        .post(
            "/api/auth/login",
            &json!({"email": "bob@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 200, "account lost: {login}");
    let bob = TestUser {
        token: login["token"].as_str().unwrap().to_owned(),
        ..bob
    };
    let mut b = node.app.connect(&bob).await;
    b.send(json!({"type": "sync", "ref": "s", "since": {}}))
        .await;
    // The restarted sequencer may store the acked message before or after
    // the sync: it arrives by sync or by push, and both count.
    let mut seen = std::collections::BTreeMap::new();
    let mut synced = false;
    while !synced || seen.len() < 2 {
        let f = b
            .expect_where(|v| v["type"] == "new_message" || v["ref"] == "s")
            .await;
        if f["type"] == "ack" {
            synced = true;
            continue;
        }
        seen.insert(
            f["message"]["seq"].as_u64().unwrap(),
            f["message"]["id"].clone(),
        );
    }
    let seen: Vec<_> = seen.into_iter().collect();
    assert_eq!(seen, [(1, first["id"].clone()), (2, acked["id"].clone())]);
    // And it is stored exactly once.
    let conversation = first["conversation_id"].as_str().unwrap();
    let (_, history) = node
        .app
        .get(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
    node.kill();
}

impl Node {
    /// SIGTERM, as Ctrl-C or a service manager stops it: the clean
    /// shutdown path runs (offsets committed, retention trims the log).
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "parley exited with {exit} on SIGTERM");
    }
}

/// The restart sequence of issue 10: one message exchanged, an ordinary
/// stop (everything consumed, so the log is trimmed), a restart, and the
/// next messages must still be sequenced, pushed and stored, every round.
#[tokio::test]
async fn messages_after_an_ordinary_restart_are_delivered_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backend_config(dir.path());
    let node = start(dir.path(), &backends);
    let alice = node.app.register("alice").await;
    let bob = node.app.register("bob").await;
    let mut node = Some(node);
    let mut expected_seq = 0;
    let mut conversation = String::new();
    for round in 0..3 {
        let app = &node.as_ref().unwrap().app;
        let mut a = app.connect(&alice).await;
        let mut b = app.connect(&bob).await;
        for i in 0..2 {
            let acked = a
                .send_message(&bob.id, &format!("round {round}, #{i}"))
                .await;
            let pushed = b.expect("new_message").await;
            expected_seq += 1;
            assert_eq!(pushed["message"]["id"], acked["id"], "round {round}");
            assert_eq!(pushed["message"]["seq"], expected_seq, "round {round}");
            conversation = acked["conversation_id"].as_str().unwrap().to_owned();
        }
        let (_, history) = app
            .get(
                &format!("/api/conversations/{conversation}/messages"),
                Some(&bob.token),
            )
            .await;
        let seqs: Vec<u64> = history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=expected_seq).collect::<Vec<_>>(),
            "round {round}"
        );
        drop((a, b));
        node.take().unwrap().terminate();
        node = Some(start(dir.path(), &backends));
    }
    node.take().unwrap().kill();
}
