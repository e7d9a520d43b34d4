//! grpcurl lists and calls every service through server reflection.

use crate::harness::Cluster;
use crate::helpers::real_engines;
use std::process::Command;

fn grpcurl(args: &[&str]) -> String {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned());
    let out = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (scripts/infra installs it)"));
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_and_calls_every_instance_through_reflection() {
    if !real_engines("this cluster test") {
        return;
    }
    let cluster = Cluster::start().await;
    let user = cluster.front().register("dora").await;
    // Online, so that presence-svc has something to tell.
    let _session = cluster.front().connect(&user).await;
    let services = cluster.services("edge-1").await;
    let expected = [
        ("auth", "parley.v1.AuthService"),
        ("chat", "parley.v1.ChatService"),
        ("presence", "parley.v1.PresenceService"),
        ("edge", "parley.v1.EdgeService"),
    ];
    for (kind, service) in expected {
        for instance in &services[kind] {
            let addr = instance["grpc_addr"].as_str().unwrap();
            let listed: Vec<String> = grpcurl(&["-plaintext", addr, "list"])
                .lines()
                .map(str::to_owned)
                .collect();
            assert!(listed.iter().any(|s| s == service), "{addr}: {listed:?}");
            assert!(listed.iter().any(|s| s == "grpc.health.v1.Health"));
            // Each lists its own services only.
            for (_, other) in expected.iter().filter(|(k, _)| *k != kind) {
                assert!(!listed.iter().any(|s| s == other), "{addr} lists {other}");
            }
            let described = grpcurl(&["-plaintext", addr, "describe", service]);
            assert!(described.contains("rpc "), "{described}");
            let health = grpcurl(&["-plaintext", addr, "grpc.health.v1.Health/Check"]);
            assert!(health.contains("SERVING"), "{addr}: {health}");
            // The container healthcheck answers the same.
            let probe = Command::new(env!("CARGO_BIN_EXE_parley"))
                .args(["probe", addr])
                .output()
                .unwrap();
            assert!(probe.status.success(), "parley probe {addr}: {probe:?}");
        }
    }

    // Nothing listening: the probe fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let probe = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(["probe", &closed_addr])
        .output()
        .unwrap();
    assert!(!probe.status.success(), "probe of a closed port succeeded");

    // A real call to each kind, with JSON built from the reflected schema.
    let auth = services["auth"][0]["grpc_addr"].as_str().unwrap();
    let verified = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"token":"{}"}}"#, user.token),
        auth,
        "parley.v1.AuthService/VerifyToken",
    ]);
    assert!(verified.contains(&user.id), "{verified}");
    let chat = services["chat"][0]["grpc_addr"].as_str().unwrap();
    let listed = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"user_id":"{}"}}"#, user.id),
        chat,
        "parley.v1.ChatService/ListConversations",
    ]);
    assert_eq!(listed.trim(), "{}", "a new user has no conversations");
    let presence = services["presence"][0]["grpc_addr"].as_str().unwrap();
    let seen = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"user_ids":["{}"]}}"#, user.id),
        presence,
        "parley.v1.PresenceService/GetPresence",
    ]);
    assert!(seen.contains(&user.id), "{seen}");
    for edge in &services["edge"] {
        let addr = edge["grpc_addr"].as_str().unwrap();
        let delivered = grpcurl(&[
            "-plaintext",
            "-d",
            r#"{"deliveries":[{"session_ids":["no-such-session"],"frame":"{}"}]}"#,
            addr,
            "parley.v1.EdgeService/Deliver",
        ]);
        assert!(delivered.contains("no-such-session"), "{delivered}");
    }
}
