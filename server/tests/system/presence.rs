//! Presence between users who share a conversation.

use crate::helpers::*;

#[tokio::test]
async fn contacts_see_each_other_join_and_a_clean_close_leaves_at_once() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    {
        // alice and bob share a conversation; carol shares none.
        let mut a = app.connect(&alice).await;
        a.send_message(&bob.id, "hi").await;
        a.expect("new_message").await;
        a.close().await;
    }
    let mut b = app.connect(&bob).await;
    let mut c = app.connect(&carol).await;
    let mut a = app.connect(&alice).await;
    // alice's first view lists bob online; bob is told alice came online.
    let snapshot = a.expect("user_joined").await;
    assert_eq!(snapshot["user_id"], bob.id.as_str());
    assert_eq!(snapshot["status"], "online");
    let joined = b
        .expect_where(|v| v["type"] == "user_joined" && v["user_id"] == alice.id.as_str())
        .await;
    assert_eq!(joined["status"], "online");

    a.close().await;
    let left = b.expect("user_left").await;
    assert_eq!(left["user_id"], alice.id.as_str());
    assert!(left["last_seen"].as_i64().unwrap() > 0);

    // carol, who shared nothing with alice, heard nothing about her. The
    // barrier: alice's events are consumed in order, and once alice writes
    // to carol, carol is entitled to the next one. Had the earlier ones
    // reached her, they would come first.
    let mut a = app.connect(&alice).await;
    // Once bob has heard alice is back, that event's fan-out is done and
    // did not include carol.
    b.expect_where(|v| v["type"] == "user_joined" && v["user_id"] == alice.id.as_str())
        .await;
    a.send_message(&carol.id, "hello carol").await;
    a.expect("new_message").await;
    c.expect("new_message").await;
    a.close().await;
    let first = c.expect_where(|v| v["user_id"] == alice.id.as_str()).await;
    assert_eq!(
        first["type"], "user_left",
        "carol heard of alice too early: {first}"
    );
}

#[tokio::test]
async fn a_second_session_keeps_the_user_online() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a1 = app.connect(&alice).await;
    a1.send_message(&bob.id, "hi").await;
    let mut b = app.connect(&bob).await;
    let snapshot = b.expect("user_joined").await;
    assert_eq!(snapshot["user_id"], alice.id.as_str());
    let a2 = app.connect(&alice).await;
    a2.close().await;
    // A barrier through the same pipeline (alice's presence events are in
    // order): if closing a2 had made alice offline, bob would see that first.
    let away = a1
        .request(
            serde_json::json!({"type": "set_status", "status": "away"}),
            "st",
        )
        .await;
    assert_eq!(away["type"], "ack", "{away}");
    // (alice's own user_joined may arrive live as well as in the snapshot:
    // with a real broker the fan-out can lag the snapshot.)
    let next = b
        .expect_where(|v| v["user_id"] == alice.id.as_str() && v["type"] != "user_joined")
        .await;
    assert_eq!(next["type"], "presence", "{next}");
    assert_eq!(next["status"], "away");
    a1.close().await;
    let left = b
        .expect_where(|v| v["user_id"] == alice.id.as_str() && v["type"] != "user_joined")
        .await;
    assert_eq!(left["type"], "user_left");
}

#[tokio::test]
async fn a_dropped_connection_goes_offline_after_the_grace_period() {
    // The test app's grace period is 300 ms.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    a.send_message(&bob.id, "hi").await;
    let mut b = app.connect(&bob).await;
    b.expect("user_joined").await;
    // No close frame: the TCP connection just goes away.
    drop(a);
    let left = b.expect("user_left").await;
    assert_eq!(left["user_id"], alice.id.as_str());
}
