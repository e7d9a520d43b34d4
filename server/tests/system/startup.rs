//! A configured real backend that cannot be reached stops the start with a
//! message naming the backend and its address, and a non-zero exit.

use std::process::Stdio;
use std::time::Duration;

/// Starts `parley` with `var=value`; answers its stderr after checking it
/// failed and named what it should.
async fn start_fails_with(var: &str, value: &str, expected: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley"));
    command
        .env("PORT", "0")
        .env("PARLEY_DATA_DIR", dir.path())
        .env("RUST_LOG", "error")
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("MONGODB_URL")
        .env(var, value)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("parley kept running with an unreachable backend")
        .unwrap();
    assert!(
        !output.status.success(),
        "{var}: exit status {}",
        output.status
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in expected {
        assert!(stderr.contains(needle), "{var}: {needle:?} not in {stderr}");
    }
    stderr.into_owned()
}

#[tokio::test]
async fn unreachable_kafka_is_named_and_fails_the_start() {
    start_fails_with("KAFKA_BROKERS", "127.0.0.1:1", &["Kafka", "127.0.0.1:1"]).await;
}

#[tokio::test]
async fn unreachable_redis_is_named_and_fails_the_start() {
    start_fails_with(
        "REDIS_URL",
        "redis://127.0.0.1:1",
        &["Redis", "redis://127.0.0.1:1"],
    )
    .await;
}

#[tokio::test]
async fn unreachable_mongodb_is_named_and_fails_the_start() {
    let stderr = start_fails_with(
        "MONGODB_URL",
        "mongodb://user:secret@127.0.0.1:1/parley",
        &["MongoDB", "127.0.0.1:1"],
    )
    .await;
    assert!(
        !stderr.contains("secret"),
        "the password was printed: {stderr}"
    );
}
