//! One user cannot hold more live sessions than the cap.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_join_past_the_session_cap_is_refused_with_4003() {
    let app = spawn_app_with(|c| c.max_sessions_per_user = 2).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut one = app.connect(&alice).await;
    let mut two = app.connect(&alice).await;

    for attempt in 0..2 {
        let mut third = app.raw_ws().await;
        let reference = format!("j{attempt}");
        third
            .send(json!({"type": "join", "token": alice.token, "ref": reference}))
            .await;
        let refused = third.expect("error").await;
        assert_eq!(refused["code"], "rate_limited", "{refused}");
        assert_eq!(refused["ref"], reference.as_str());
        let message = refused["message"].as_str().unwrap_or_default();
        assert!(message.contains("too many sessions"), "{message}");
        assert_eq!(
            third.closed().await,
            Closed::Code(4003, "too many sessions".into())
        );
    }

    // The sessions within the cap are untouched: both still get messages.
    let sent = {
        let mut b = app.connect(&bob).await;
        b.send_message(&alice.id, "to both").await
    };
    for ws in [&mut one, &mut two] {
        ws.expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == sent["id"])
            .await;
    }

    // The refused joins took no place: once one session closes, a new one
    // fits. (Its close reaches presence just after the close handshake;
    // nothing tells a client when, so this retries.)
    two.close().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut next = app.raw_ws().await;
        next.send(json!({"type": "join", "token": alice.token}))
            .await;
        let first = next
            .expect_where(|v| v["type"] == "connected" || v["type"] == "error")
            .await;
        if first["type"] == "connected" {
            break;
        }
        assert_eq!(first["code"], "rate_limited", "{first}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed session still counts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_session_cap_holds_across_edges() {
    if !real_engines("the session cap across two nodes sharing Redis") {
        return;
    }
    let first = spawn_app_with(|c| c.max_sessions_per_user = 2).await;
    let shared = first.backends.clone();
    let second = spawn_app_with(move |c| {
        c.max_sessions_per_user = 2;
        c.backends = shared;
    })
    .await;
    let alice = first.register("alice").await;
    let _one = first.connect(&alice).await;
    let _two = second.connect(&alice).await;
    for node in [&first, &second] {
        let mut third = node.raw_ws().await;
        third
            .send(json!({"type": "join", "token": alice.token}))
            .await;
        assert_eq!(third.expect("error").await["code"], "rate_limited");
        assert_eq!(
            third.closed().await,
            Closed::Code(4003, "too many sessions".into())
        );
    }
}
