//! Every kind of bad input gets a clear error, and loses or leaks nothing.
//! Abuse has its own rooms: names that hide what they are, page sizes
//! past any range, too many sessions, foreign origins, no-op changes.

mod names;
mod origins;
mod paging;
mod reactions;
mod sessions;

use crate::auth::forge_token;
use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn a_frame_before_join_closes_with_4001() {
    let app = spawn_app().await;
    let mut ws = app.raw_ws().await;
    ws.send(json!({"type": "send_message", "to": "x", "body": "sneaky"}))
        .await;
    assert!(matches!(ws.closed().await, Closed::Code(4001, _)));

    let mut ws = app.raw_ws().await;
    ws.send_text("not json".into()).await;
    assert!(matches!(ws.closed().await, Closed::Code(4001, _)));
}

#[tokio::test]
async fn no_join_in_time_closes_with_4001() {
    // The test app's join deadline is 500 ms; the client just waits.
    let app = spawn_app().await;
    let mut ws = app.raw_ws().await;
    assert_eq!(ws.closed().await, Closed::Code(4001, "join timeout".into()));
}

#[tokio::test]
async fn forged_none_and_expired_tokens_are_unauthorized() {
    let app = spawn_app().await;
    let mallory = app.register("mallory").await;
    let none_alg = {
        use base64_url as b64;
        let header = b64(r#"{"alg":"none","typ":"JWT"}"#);
        let now = parley::time::now_ms() / 1000;
        let claims = b64(&format!(
            r#"{{"sub":"{}","exp":{}}}"#,
            mallory.id,
            now + 3600
        ));
        format!("{header}.{claims}.")
    };
    for token in [
        forge_token(&mallory.id, "not-the-server-secret-0123456789abcdef", 3600),
        none_alg,
        forge_token(&mallory.id, SECRET, -3600),
        String::new(),
    ] {
        let mut ws = app.raw_ws().await;
        ws.send(json!({"type": "join", "token": token, "ref": "j"}))
            .await;
        let err = ws.expect("error").await;
        assert_eq!(err["code"], "unauthorized", "{token}");
        assert_eq!(err["ref"], "j");
        assert!(matches!(ws.closed().await, Closed::Code(4001, _)));
    }
    // The genuine token still works.
    app.connect(&mallory).await;
}

/// Minimal unpadded base64url, enough to hand-craft an `alg: none` token.
fn base64_url(input: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = input.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn malformed_frames_get_invalid_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut a = app.connect(&alice).await;
    a.send_text("{not json".into()).await;
    let err = a.expect("error").await;
    assert_eq!(err["code"], "invalid");
    for (frame, reference) in [
        (json!({"type": "fly_to_the_moon", "ref": "u1"}), "u1"),
        (
            json!({"type": "mark_read", "conversation_id": "c", "up_to_seq": "7", "ref": "u2"}),
            "u2",
        ),
        (
            json!({"type": "send_message", "to": ["x"], "body": 5, "ref": "u3"}),
            "u3",
        ),
        (
            json!({"type": "send_message", "to": {"$ne": null}, "body": "x", "ref": "u4"}),
            "u4",
        ),
        (
            json!({"type": "typing", "to": "x", "state": "dancing", "ref": "u5"}),
            "u5",
        ),
        (json!({"no_type": true, "ref": "u6"}), "u6"),
    ] {
        a.send(frame.clone()).await;
        let err = a.expect_where(|v| v["ref"] == reference).await;
        assert_eq!(err["type"], "error", "{frame}");
        assert_eq!(err["code"], "invalid", "{frame}");
    }
    let pong = a.request(json!({"type": "ping"}), "p").await;
    assert_eq!(pong["type"], "ack");
}

#[tokio::test]
async fn bodies_must_be_non_empty_and_at_most_4000_characters() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    for (i, body) in ["".to_owned(), "   ".to_owned(), "é".repeat(4001)]
        .into_iter()
        .enumerate()
    {
        let reply = a
            .request(json!({"type": "send_message", "to": bob.id, "client_msg_id": format!("b{i}"), "body": body}), &format!("b{i}"))
            .await;
        assert_eq!(reply["code"], "invalid", "{reply}");
    }
    let ok = a.send_message(&bob.id, &"é".repeat(4000)).await;
    let got = b.expect("new_message").await;
    assert_eq!(got["message"]["id"], ok["id"]);
    assert_eq!(got["message"]["seq"], 1, "a refused message took a seq");
}

#[tokio::test]
async fn oversized_frames_are_refused_and_nothing_is_stored_or_delivered() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;

    // Over 64 KiB: too_large, and the connection stays.
    let big = json!({"type": "send_message", "to": bob.id, "client_msg_id": "big", "body": "x".repeat(70 * 1024)});
    a.send(big).await;
    let err = a.expect("error").await;
    assert_eq!(err["code"], "too_large");
    let marker = a.send_message(&bob.id, "marker").await;
    let next = b.expect("new_message").await;
    assert_eq!(next["message"]["id"], marker["id"]);
    assert_eq!(next["message"]["seq"], 1);

    // Far over: the transport refuses it and closes with 1009.
    let huge = json!({"type": "send_message", "to": bob.id, "client_msg_id": "huge", "body": "x".repeat(400 * 1024)});
    a.send(huge).await;
    assert_eq!(
        a.closed().await,
        Closed::Code(1009, "frame too large".into())
    );

    let conversation = marker["conversation_id"].as_str().unwrap();
    let (_, history) = app
        .get(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn non_members_get_the_same_not_found_and_members_see_nothing() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let mut c = app.connect(&carol).await;
    let first = a.send_message(&bob.id, "private").await;
    b.expect("new_message").await;
    let theirs = first["conversation_id"].as_str().unwrap().to_owned();
    let nowhere = "0193b1c2-aaaa-7bbb-8ccc-123456789abc";

    for conversation in [theirs.as_str(), nowhere] {
        for (i, frame) in [
            json!({"type": "send_message", "conversation_id": conversation, "client_msg_id": "intrude", "body": "hi"}),
            json!({"type": "history", "conversation_id": conversation}),
            json!({"type": "mark_read", "conversation_id": conversation, "up_to_seq": 1}),
            json!({"type": "mark_delivered", "conversation_id": conversation, "up_to_seq": 1}),
            json!({"type": "typing", "conversation_id": conversation, "state": "start"}),
        ]
        .into_iter()
        .enumerate()
        {
            let reference = format!("{conversation}-{i}");
            let reply = c.request(frame.clone(), &reference).await;
            assert_eq!(reply["type"], "error", "{frame}");
            assert_eq!(reply["code"], "not_found", "{frame}");
            assert_eq!(reply["message"], "no such conversation");
        }
        let (status, body) = app
            .get(
                &format!("/api/conversations/{conversation}/messages"),
                Some(&carol.token),
            )
            .await;
        assert_eq!(status, 404, "{body}");
    }
    // Neither member saw anything from carol: the next frames are alice's.
    let marker = a.send_message(&bob.id, "marker").await;
    let next = b.expect("new_message").await;
    assert_eq!(next["message"]["id"], marker["id"]);
    assert_eq!(next["message"]["seq"], 2);
    assert!(
        b.pending()
            .iter()
            .all(|f| f["type"] != "typing" && f["type"] != "message_read")
    );
    assert!(
        a.pending()
            .iter()
            .all(|f| f["type"] != "message_read" && f["type"] != "message_delivered")
    );
}

#[tokio::test]
async fn client_supplied_from_seq_and_id_are_ignored() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let reply = a
        .request(
            json!({"type": "send_message", "to": bob.id, "client_msg_id": "spoof", "body": "hi",
                   "from": bob.id, "seq": 99, "id": "chosen-id"}),
            "s",
        )
        .await;
    assert_ne!(reply["message"]["id"], "chosen-id");
    let got = b.expect("new_message").await;
    assert_eq!(got["message"]["from"], alice.id.as_str());
    assert_eq!(got["message"]["seq"], 1);
    assert_eq!(got["message"]["id"], reply["message"]["id"]);
}

#[tokio::test]
async fn messages_to_unknown_users_or_oneself_are_refused() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut a = app.connect(&alice).await;
    let unknown = a
        .request(json!({"type": "send_message", "to": "0193b1c2-aaaa-7bbb-8ccc-123456789abc", "client_msg_id": "u", "body": "hi"}), "u")
        .await;
    assert_eq!(unknown["code"], "not_found");
    let me = a
        .request(
            json!({"type": "send_message", "to": alice.id, "client_msg_id": "m", "body": "hi"}),
            "m",
        )
        .await;
    assert_eq!(me["code"], "invalid");
    let both = a
        .request(
            json!({"type": "send_message", "to": alice.id, "conversation_id": "c", "body": "hi"}),
            "b",
        )
        .await;
    assert_eq!(both["code"], "invalid");
}

#[tokio::test]
async fn a_flood_is_rate_limited_and_the_connection_survives() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut a = app.connect(&alice).await;
    // One write: the server sees the whole burst at once.
    let frames: Vec<String> = (0..150)
        .map(|i| json!({"type": "ping", "ref": format!("f{i}")}).to_string())
        .collect();
    a.send_batch(frames).await;
    let mut limited = 0;
    let mut answered = 0;
    for i in 0..150 {
        let reference = format!("f{i}");
        let reply = a.expect_where(|v| v["ref"] == reference.as_str()).await;
        answered += 1;
        if reply["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert_eq!(answered, 150, "every frame gets an answer");
    assert!(limited > 0, "a burst of 150 frames was not limited");
    assert!(limited < 150, "the burst allowance was not honoured");
}

#[tokio::test]
async fn a_socket_is_closed_when_its_token_expires() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let short_lived = TestUser {
        token: forge_token(&alice.id, SECRET, 2),
        ..alice
    };
    let mut ws = app.connect(&short_lived).await;
    let err = ws.expect("error").await;
    assert_eq!(err["code"], "unauthorized");
    assert_eq!(
        ws.closed().await,
        Closed::Code(4001, "token expired".into())
    );
}

#[tokio::test]
async fn oversized_or_malformed_rest_bodies_get_json_errors() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(app.url("/api/auth/register"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"username":"{}"}}"#, "x".repeat(64 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large");

    let resp = app
        .http
        .post(app.url("/api/auth/login"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid");
}

#[tokio::test]
async fn a_users_sends_are_limited_across_all_their_sessions() {
    // 8 per hour: bursts of 4, then one every 12 minutes.
    let app = spawn_app_with(|c| {
        c.send_limit = parley_chat::chat::SendLimit {
            count: 8,
            window: std::time::Duration::from_secs(3600),
        }
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut one = app.connect(&alice).await;
    let mut two = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    for i in 0..4 {
        let ws = if i % 2 == 0 { &mut one } else { &mut two };
        ws.send_message(&bob.id, &format!("m{i}")).await;
    }
    // The fifth, from either session, is over the user's limit.
    let reply = two
        .request(
            json!({"type": "send_message", "to": bob.id, "client_msg_id": "fifth", "body": "m4"}),
            "fifth",
        )
        .await;
    assert_eq!(reply["code"], "rate_limited", "{reply}");
    // Nothing refused was stored: bob's reply takes seq 5.
    let marker = b.send_message(&alice.id, "marker").await;
    let stored = b
        .expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == marker["id"])
        .await;
    assert_eq!(stored["message"]["seq"], 5);
}
