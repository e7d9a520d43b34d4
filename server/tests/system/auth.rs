//! Registration, login and bearer-token REST.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn register_then_login_returns_a_working_token() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (status, body) = app
        .post(
            "/api/auth/login",
            &json!({"email": "ALICE@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], alice.id.as_str());
    assert_eq!(body["user"]["display_name"], "ALICE");
    let token = body["token"].as_str().unwrap();
    let (status, users) = app.get("/api/users?q=ali", Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(users["users"][0]["username"], "alice");
}

#[tokio::test]
async fn duplicate_username_or_email_is_409() {
    let app = spawn_app().await;
    app.register("bob").await;
    let (status, body) = app
        .post(
            "/api/auth/register",
            &json!({"username": "BOB", "email": "other@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let (status, _) = app
        .post(
            "/api/auth/register",
            &json!({"username": "bobby", "email": "bob@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn invalid_registrations_are_400_and_store_nothing() {
    let app = spawn_app().await;
    for body in [
        json!({"username": "carol", "email": "not-an-email", "password": "password123"}),
        json!({"username": "carol", "email": "carol@example.com", "password": "short"}),
        json!({"username": "c", "email": "carol@example.com", "password": "password123"}),
        json!({"username": {"$ne": null}, "email": "carol@example.com", "password": "password123"}),
        json!({"username": "carol", "email": {"$gt": ""}, "password": "password123"}),
        json!({"username": "$where", "email": "carol@example.com", "password": "password123"}),
        json!({"email": "carol@example.com", "password": "password123"}),
        json!("just a string"),
    ] {
        let (status, reply) = app.post("/api/auth/register", &body).await;
        assert_eq!(status, 400, "{body} → {reply}");
        assert_eq!(reply["error"]["code"], "invalid");
    }
    // Nothing was created: the name is still free.
    app.register("carol").await;
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_401() {
    let app = spawn_app().await;
    app.register("dave").await;
    let (s1, b1) = app
        .post(
            "/api/auth/login",
            &json!({"email": "dave@example.com", "password": "wrong-password"}),
        )
        .await;
    let (s2, b2) = app
        .post(
            "/api/auth/login",
            &json!({"email": "nobody@example.com", "password": "password123"}),
        )
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(b1, b2);
    assert_eq!(b1["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn rest_without_or_with_a_bad_token_is_401() {
    let app = spawn_app().await;
    let erin = app.register("erin").await;
    let forged = forge_token(&erin.id, "some-other-secret-0123456789abcdef", 3600);
    for token in [None, Some("garbage"), Some(forged.as_str())] {
        for path in ["/api/conversations", "/api/users?q=e"] {
            let (status, body) = app.get(path, token).await;
            assert_eq!(status, 401, "{path} with {token:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    let (status, _) = app.get("/api/conversations", Some(&erin.token)).await;
    assert_eq!(status, 200);
    // The scheme is case-insensitive (RFC 7235).
    let resp = app
        .http
        .get(app.url("/api/conversations"))
        .header("authorization", format!("bearer {}", erin.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// An HS256 token for `user` signed with `secret`, expiring in
/// `expires_in` seconds (negative: already expired).
pub fn forge_token(user: &str, secret: &str, expires_in: i64) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let now = parley::time::now_ms() / 1000;
    encode(
        &Header::default(),
        &json!({"sub": user, "username": "x", "iat": now, "exp": now + expires_in}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
