//! Offline members get a notification through the webhook, retried with
//! backoff while the receiver fails, without holding up delivery.

use crate::helpers::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A webhook receiver on a free loopback port that fails the first
/// `failures` attempts of every event (by its idempotency key) with 503.
struct Receiver {
    url: String,
    delivered: mpsc::UnboundedReceiver<(String, Value, u32)>,
}

#[derive(Clone)]
struct Hook {
    failures: u32,
    attempts: Arc<Mutex<HashMap<String, u32>>>,
    delivered: mpsc::UnboundedSender<(String, Value, u32)>,
}

async fn hook(State(hook): State<Hook>, headers: HeaderMap, body: String) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let attempt = {
        let mut attempts = hook.attempts.lock().unwrap();
        let n = attempts.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    if attempt <= hook.failures {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let body: Value = serde_json::from_str(&body).unwrap();
    let _ = hook.delivered.send((key, body, attempt));
    StatusCode::NO_CONTENT
}

async fn receiver(failures: u32) -> Receiver {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Hook {
        failures,
        attempts: Arc::default(),
        delivered: tx,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, delivered: rx }
}

#[tokio::test]
async fn an_offline_member_is_notified_through_the_webhook_with_retries() {
    let mut receiver = receiver(2).await;
    let url = receiver.url.clone();
    let app = spawn_app_with(|c| {
        c.notify = Some(parley_chat::notifier::Webhook {
            first_backoff: Duration::from_millis(20),
            ..parley_chat::notifier::Webhook::new(url)
        });
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;

    // Bob has never connected: he gets a notification, once the receiver
    // stops failing (third attempt), carrying the message.
    let sent = a.send_message(&bob.id, "are you there?").await;
    let (key, body, attempt) = tokio::time::timeout(PATIENCE, receiver.delivered.recv())
        .await
        .expect("no notification in time")
        .unwrap();
    assert_eq!(
        attempt, 3,
        "delivered at the first attempt the receiver accepted"
    );
    assert_eq!(key, format!("{}:{}", sent["id"].as_str().unwrap(), bob.id));
    assert_eq!(body["type"], "new_message");
    assert_eq!(body["user_id"], bob.id.as_str());
    assert_eq!(body["message"]["body"], "are you there?");
    assert_eq!(body["message"]["from"], alice.id.as_str());
    assert_eq!(body["message"]["seq"], 1);

    // Delivery never waited for the webhook: Alice's own session had the
    // message pushed whatever the receiver answered.
    a.expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == sent["id"])
        .await;
}
