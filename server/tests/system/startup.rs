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

/// The edge keeps nothing but sessions, so it opens only the registry: with
/// Kafka and the store configured at addresses where nothing listens, it
/// starts, answers HTTP and reports SERVING over gRPC health.
#[tokio::test]
async fn an_edge_starts_and_serves_with_only_a_registry() {
    use tokio::io::AsyncBufReadExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let grpc_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley"));
    command
        .arg("edge")
        .env("PORT", "0")
        .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("PARLEY_DATA_DIR", dir.path())
        .env("RUST_LOG", "error")
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("MONGODB_URL", "mongodb://127.0.0.1:1/parley")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut edge = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(edge.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("Parley edge listening on ") {
                return url.to_owned();
            }
        }
        panic!("the edge exited without listening");
    })
    .await
    .expect("the edge did not start within 30 s");

    let health: serde_json::Value = reqwest::get(format!("{url}/health"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["service"], "edge", "{health}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    assert!(edge.try_wait().unwrap().is_none(), "the edge exited");
}

/// A setting outside its range stops the start with a message naming the
/// setting and the range, instead of being clamped without a word.
#[tokio::test]
async fn settings_out_of_range_are_refused_at_start() {
    for (var, option) in [
        ("PARLEY_PARTITIONS", "--partitions"),
        ("PARLEY_REPLICATION", "--replication"),
        ("PARLEY_USER_SEND_LIMIT", "--user-send-limit"),
        ("PARLEY_USER_SEND_WINDOW_SECS", "--user-send-window-secs"),
        ("PARLEY_WS_FRAMES_PER_SEC", "--ws-frames-per-sec"),
        ("PARLEY_MAX_BACKLOG", "--max-backlog"),
        ("PARLEY_MAX_SESSIONS_PER_USER", "--max-sessions-per-user"),
    ] {
        let stderr = start_fails_with(var, "0", &[option, "0"]).await;
        assert!(stderr.contains("not in"), "{var}: no range in {stderr}");
    }
}
