//! Message search over REST, within the caller's own conversations.

use crate::helpers::*;

#[tokio::test]
async fn search_finds_only_the_callers_own_messages() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let mut c = app.connect(&carol).await;

    let mine = a.send_message(&bob.id, "Lunch at noon?").await;
    a.send_message(&bob.id, "or later").await;
    let theirs = b.send_message(&carol.id, "lunch is overrated").await;
    // Searchable once stored; the push comes after the store.
    a.expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == mine["id"])
        .await;
    a.expect_where(|v| v["type"] == "new_message" && v["message"]["body"] == "or later")
        .await;
    c.expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == theirs["id"])
        .await;

    let (status, found) = app.get("/api/search?q=LUNCH", Some(&alice.token)).await;
    assert_eq!(status, 200, "{found}");
    let bodies: Vec<&str> = found["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["Lunch at noon?"], "not Bob and Carol's message");

    let (_, found) = app.get("/api/search?q=lunch", Some(&bob.token)).await;
    assert_eq!(found["messages"].as_array().unwrap().len(), 2);

    let (_, found) = app
        .get("/api/search?q=nothing%20like%20it", Some(&carol.token))
        .await;
    assert_eq!(found["messages"], serde_json::json!([]));
}

#[tokio::test]
async fn search_refuses_bad_queries_and_strangers() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    for path in ["/api/search?q=", "/api/search?q=%20%20", "/api/search"] {
        let (status, body) = app.get(path, Some(&alice.token)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid")),
            "{path}"
        );
    }
    let long = "x".repeat(201);
    let (status, body) = app
        .get(&format!("/api/search?q={long}"), Some(&alice.token))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid"))
    );
    let (status, body) = app
        .get("/api/search?q=x&limit=lots", Some(&alice.token))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid"))
    );
    let (status, _) = app.get("/api/search?q=x", None).await;
    assert_eq!(status, 401);
}
