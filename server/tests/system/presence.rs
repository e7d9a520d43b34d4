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

    // carol, who shares nothing with alice, heard nothing about her.
    let ping = c.request(serde_json::json!({"type": "ping"}), "p").await;
    assert_eq!(ping["type"], "ack");
    assert!(
        c.pending()
            .iter()
            .all(|f| f["user_id"] != alice.id.as_str())
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
    // Closing one of two sessions is no news; closing the last one is.
    a1.close().await;
    let first = b
        .expect_where(|v| v["type"] == "user_left" || v["type"] == "user_joined")
        .await;
    assert_eq!(first["type"], "user_left");
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
