//! Past capacity the edge pushes back instead of queueing: a send that
//! waited too long is refused as busy (and nothing of it is kept), and a
//! client that stops reading is closed as too slow even when buffers
//! between it and the edge would hide that.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_send_that_waited_too_long_is_refused_as_busy_and_nothing_is_kept() {
    // A zero wait budget: every resendable command counts as late.
    let app = spawn_app_with(|c| c.max_frame_wait = Duration::ZERO).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let reply = ask(
        &mut a,
        json!({"type": "send_message", "to": bob.id, "client_msg_id": "late-1", "body": "hi"}),
    )
    .await;
    assert_eq!(error_code(&reply), "unavailable", "{reply}");
    assert_eq!(reply["message"], "server busy, resend");
    // Commands a client cannot simply resend are still answered.
    acked(&mut a, json!({"type": "ping"})).await;
    let synced = acked(&mut a, json!({"type": "sync"})).await;
    assert_eq!(synced["truncated"], json!([]), "{synced}");
    let (status, conversations) = app.get("/api/conversations", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        conversations["conversations"],
        json!([]),
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_too_slow() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let first = b.send_message(&alice.id, "are you there?").await;
    a.expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == first["id"])
        .await;
    // Alice stops reading (her client answers no pings from here on), Bob
    // keeps writing to her until the server notices.
    let stopped = tokio::time::Instant::now();
    let mut gone = None;
    for n in 0..30 {
        b.send_message(&alice.id, &format!("message {n}")).await;
        gone = b
            .next_where_within(Duration::from_secs(1), |v| {
                v["type"] == "user_left" && v["user_id"] == alice.id.as_str()
            })
            .await;
        if gone.is_some() {
            break;
        }
    }
    assert!(gone.is_some(), "alice was never closed as too slow");
    let waited = stopped.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "closed only after {waited:?}"
    );
    // What Alice reads now ends with the 4008 close, behind her messages.
    assert!(
        matches!(a.closed().await, Closed::Code(4008, _)),
        "not closed as too slow"
    );
}
