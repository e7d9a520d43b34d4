//! Edits, deletions and reactions: they reach every member's sessions, take
//! their own seq, are replayed by `sync` and shown by `history` (a deleted
//! message stays as a tombstone), and a change that is not allowed is
//! refused with nothing stored and nothing fanned out.

use crate::helpers::*;
use serde_json::{Value, json};

async fn arrived(ws: &mut Ws, id: &Value) -> Value {
    ws.expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == *id)
        .await
}

#[tokio::test]
async fn changes_reach_every_device_and_are_replayed_in_order() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut phone = app.connect(&alice).await;
    let mut laptop = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;

    let first = phone.send_message(&bob.id, "helo wrld").await;
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let second = post(&mut phone, &conversation, "oops, wrong chat").await;
    arrived(&mut b, &second["id"]).await;
    arrived(&mut laptop, &second["id"]).await;

    let reply = acked(
        &mut phone,
        json!({"type": "edit_message", "conversation_id": conversation,
               "message_id": first["id"], "body": "hello world"}),
    )
    .await;
    assert_eq!(reply["change"]["message_id"], first["id"]);
    for ws in [&mut b, &mut laptop, &mut phone] {
        let edited = ws.expect("message_edited").await;
        assert_eq!(edited["message_id"], first["id"]);
        assert_eq!(edited["body"], "hello world");
        assert_eq!(edited["by"], alice.id.as_str());
        assert_eq!(edited["seq"], 3);
    }

    acked(
        &mut b,
        json!({"type": "react", "conversation_id": conversation,
               "message_id": first["id"], "emoji": "👍", "on": true,
               "by": alice.id, "from": alice.id}),
    )
    .await;
    for ws in [&mut b, &mut laptop, &mut phone] {
        let reaction = ws.expect("reaction").await;
        assert_eq!(reaction["emoji"], "👍");
        assert_eq!(reaction["on"], true);
        assert_eq!(
            reaction["by"],
            bob.id.as_str(),
            "a spoofed `by` was believed"
        );
        assert_eq!(reaction["seq"], 4);
    }

    acked(
        &mut laptop,
        json!({"type": "delete_message", "conversation_id": conversation, "message_id": second["id"]}),
    ).await;
    for ws in [&mut b, &mut laptop, &mut phone] {
        let deleted = ws.expect("message_deleted").await;
        assert_eq!(deleted["message_id"], second["id"]);
        assert_eq!(deleted["seq"], 5);
    }

    // History: every seq, each message as it is now.
    let page = ask(
        &mut b,
        json!({"type": "history", "conversation_id": conversation}),
    )
    .await;
    let entries = page["messages"].as_array().unwrap();
    let seqs: Vec<u64> = entries.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "seq is dense");
    assert_eq!(entries[0]["body"], "hello world");
    assert!(entries[0]["edited_at"].as_i64().unwrap() > 0);
    assert_eq!(entries[0]["reactions"], json!({"👍": [bob.id]}));
    assert_eq!(entries[1]["deleted"], true);
    assert_eq!(entries[1]["body"], "");
    let kinds: Vec<&str> = entries[2..]
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["edit", "reaction", "delete"]);

    // A device that saw up to seq 2 is replayed the three changes, in order.
    let mut tablet = app.connect(&bob).await;
    acked(
        &mut tablet,
        json!({"type": "sync", "since": {conversation.as_str(): 2}}),
    )
    .await;
    let replayed: Vec<&str> = tablet
        .pending()
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .filter(|kind| !kind.starts_with("user_") && *kind != "presence")
        .collect();
    assert_eq!(replayed, ["message_edited", "reaction", "message_deleted"]);
    // From the start: the messages as they are now, then the changes.
    let mut fresh = app.connect(&bob).await;
    ask(&mut fresh, json!({"type": "sync", "since": {}})).await;
    let bodies: Vec<&Value> = fresh
        .pending()
        .iter()
        .filter(|f| f["type"] == "new_message")
        .map(|f| &f["message"]["body"])
        .collect();
    assert_eq!(bodies, [&json!("hello world"), &json!("")]);

    // Taking a reaction back.
    acked(
        &mut b,
        json!({"type": "react", "conversation_id": conversation,
               "message_id": first["id"], "emoji": "👍", "on": false}),
    )
    .await;
    let off = phone
        .expect_where(|v| v["type"] == "reaction" && v["on"] == false)
        .await;
    assert_eq!(off["seq"], 6);

    // Search sees the edit, not the old text nor the deleted message; the
    // unread count counts one message (the deleted one and changes are not).
    let (_, found) = app.get("/api/search?q=world", Some(&bob.token)).await;
    assert_eq!(found["messages"].as_array().unwrap().len(), 1);
    let (_, found) = app.get("/api/search?q=wrld", Some(&bob.token)).await;
    assert_eq!(found["messages"], json!([]));
    let (_, found) = app.get("/api/search?q=oops", Some(&bob.token)).await;
    assert_eq!(found["messages"], json!([]));
    let (_, list) = app.get("/api/conversations", Some(&bob.token)).await;
    assert_eq!(list["conversations"][0]["unread"], 1);
    assert_eq!(list["conversations"][0]["last_message"]["id"], second["id"]);
}

#[tokio::test]
async fn a_resent_change_is_answered_with_the_original_and_applied_once() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut phone = app.connect(&alice).await;
    // Alice's second device only tells the test when a change is stored.
    let mut laptop = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;

    let first = phone.send_message(&bob.id, "helo").await;
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let second = post(&mut phone, &conversation, "soon gone").await;
    arrived(&mut b, &second["id"]).await;
    arrived(&mut laptop, &second["id"]).await;

    let edit = json!({"type": "edit_message", "conversation_id": conversation,
                      "message_id": first["id"], "body": "hello", "client_msg_id": "ch-edit"});
    let react = json!({"type": "react", "conversation_id": conversation,
                       "message_id": first["id"], "emoji": "👍", "client_msg_id": "ch-react"});
    let delete = json!({"type": "delete_message", "conversation_id": conversation,
                        "message_id": second["id"], "client_msg_id": "ch-delete"});
    for (who, frame, pushed, target) in [
        ('a', &edit, "message_edited", &first),
        ('b', &react, "reaction", &first),
        ('a', &delete, "message_deleted", &second),
    ] {
        let ws = if who == 'a' { &mut phone } else { &mut b };
        let original = acked(ws, frame.clone()).await["change"].clone();
        assert_eq!(original["message_id"], target["id"]);
        assert_eq!(original["conversation_id"], conversation.as_str());
        assert_eq!(original["client_msg_id"], frame["client_msg_id"]);
        // At once (the registry's claim answers) ...
        let resent = acked(ws, frame.clone()).await["change"].clone();
        assert_eq!(resent["id"], original["id"], "{pushed}: resent at once");
        assert_eq!(resent["message_id"], target["id"]);
        // ... and once stored (the store's index answers, with the seq),
        // although the change would now be refused or change nothing.
        let stored = laptop.expect(pushed).await;
        assert_eq!(stored["id"], original["id"]);
        assert_eq!(stored["client_msg_id"], frame["client_msg_id"]);
        let resent = acked(ws, frame.clone()).await["change"].clone();
        assert_eq!(resent["id"], original["id"], "{pushed}: resent once stored");
        assert_eq!(resent["seq"], stored["seq"]);
    }
    // The same key for something else is refused, not answered as a resend.
    let mut other_kind = react.clone();
    other_kind["type"] = json!("delete_message");
    assert_eq!(error_code(&ask(&mut b, other_kind).await), "invalid");
    let mut other_message = edit.clone();
    other_message["message_id"] = second["id"].clone();
    assert_eq!(error_code(&ask(&mut phone, other_message).await), "invalid");
    let reused = json!({"type": "send_message", "conversation_id": conversation,
                        "client_msg_id": "ch-edit", "body": "a message"});
    assert_eq!(error_code(&ask(&mut phone, reused).await), "invalid");

    // Every session got each change once: everything before the marker.
    let marker = post(&mut phone, &conversation, "marker").await;
    for ws in [&mut phone, &mut b] {
        arrived(ws, &marker["id"]).await;
        let changes: Vec<&str> = ws
            .pending()
            .iter()
            .filter_map(|f| f["type"].as_str())
            .filter(|kind| ["message_edited", "reaction", "message_deleted"].contains(kind))
            .collect();
        assert_eq!(changes, ["message_edited", "reaction", "message_deleted"]);
    }
    // One log entry each, in history and in sync.
    let page = ask(
        &mut b,
        json!({"type": "history", "conversation_id": conversation}),
    )
    .await;
    let kinds: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap_or("message"))
        .collect();
    assert_eq!(
        kinds,
        [
            "message", "message", "edit", "reaction", "delete", "message"
        ]
    );
    assert_eq!(page["messages"][0]["body"], "hello");
    assert_eq!(page["messages"][0]["reactions"], json!({"👍": [bob.id]}));
    let mut tablet = app.connect(&bob).await;
    ask(&mut tablet, json!({"type": "sync", "since": {}})).await;
    let replayed: Vec<&str> = tablet
        .pending()
        .iter()
        .filter_map(|f| f["type"].as_str())
        .filter(|kind| !kind.starts_with("user_") && *kind != "presence")
        .collect();
    assert_eq!(
        replayed,
        [
            "new_message",
            "new_message",
            "message_edited",
            "reaction",
            "message_deleted",
            "new_message"
        ]
    );
}

#[tokio::test]
async fn changes_that_are_not_allowed_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let mut c = app.connect(&carol).await;

    let mine = a.send_message(&bob.id, "alice's words").await;
    let conversation = mine["conversation_id"].as_str().unwrap().to_owned();
    let gone = post(&mut a, &conversation, "soon gone").await;
    arrived(&mut b, &gone["id"]).await;
    acked(
        &mut a,
        json!({"type": "delete_message", "conversation_id": conversation, "message_id": gone["id"]}),
    ).await;
    b.expect("message_deleted").await;
    let elsewhere = b.send_message(&carol.id, "bob and carol").await;
    let foreign = elsewhere["conversation_id"].as_str().unwrap().to_owned();
    arrived(&mut c, &elsewhere["id"]).await;

    let edit = |conversation: &str, id: &Value, body: &str| json!({"type": "edit_message", "conversation_id": conversation, "message_id": id, "body": body});
    let react = |conversation: &str, id: &Value, emoji: Value| json!({"type": "react", "conversation_id": conversation, "message_id": id, "emoji": emoji, "on": true});
    let delete = |conversation: &str, id: &Value| json!({"type": "delete_message", "conversation_id": conversation, "message_id": id});
    for (who, frame, code) in [
        // Someone else's message.
        (
            'b',
            edit(&conversation, &mine["id"], "bob's words"),
            "forbidden",
        ),
        ('b', delete(&conversation, &mine["id"]), "forbidden"),
        // A conversation the caller is not in.
        (
            'c',
            react(&conversation, &mine["id"], json!("👍")),
            "not_found",
        ),
        (
            'c',
            edit(&conversation, &mine["id"], "carol's words"),
            "not_found",
        ),
        // A message of another conversation, named through one's own.
        (
            'a',
            react(&conversation, &elsewhere["id"], json!("👍")),
            "not_found",
        ),
        ('c', delete(&foreign, &mine["id"]), "not_found"),
        // Emoji that are not short strings.
        ('b', react(&conversation, &mine["id"], json!(42)), "invalid"),
        ('b', react(&conversation, &mine["id"], json!("")), "invalid"),
        (
            'b',
            react(&conversation, &mine["id"], json!("not an emoji at all")),
            "invalid",
        ),
        (
            'b',
            react(&conversation, &mine["id"], json!("👍".repeat(20))),
            "invalid",
        ),
        (
            'b',
            react(&conversation, &mine["id"], json!(["👍"])),
            "invalid",
        ),
        // Bad bodies, ids and tombstones.
        ('a', edit(&conversation, &mine["id"], "   "), "invalid"),
        (
            'a',
            edit(&conversation, &mine["id"], &"x".repeat(4001)),
            "invalid",
        ),
        ('a', edit(&conversation, &json!("no/such"), "x"), "invalid"),
        (
            'a',
            edit(&conversation, &json!("no-such-message"), "x"),
            "not_found",
        ),
        ('a', edit(&conversation, &gone["id"], "back"), "invalid"),
        (
            'b',
            react(&conversation, &gone["id"], json!("👍")),
            "invalid",
        ),
        ('a', delete(&conversation, &gone["id"]), "invalid"),
    ] {
        let ws = match who {
            'a' => &mut a,
            'b' => &mut b,
            'c' => &mut c,
            _ => unreachable!(),
        };
        assert_eq!(error_code(&ask(ws, frame.clone()).await), code, "{frame}");
    }

    // Nothing stored: the log still ends at the deletion (seq 3).
    let page = ask(
        &mut a,
        json!({"type": "history", "conversation_id": conversation}),
    )
    .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    assert_eq!(page["messages"][0]["body"], "alice's words");
    assert!(page["messages"][0].get("reactions").is_none());
    // Nothing fanned out: the next change Bob sees is the next valid one.
    acked(
        &mut b,
        json!({"type": "react", "conversation_id": conversation, "message_id": mine["id"], "emoji": "🎉"}),
    ).await;
    let next = b
        .expect_where(|v| {
            matches!(
                v["type"].as_str(),
                Some("message_edited" | "message_deleted" | "reaction")
            )
        })
        .await;
    assert_eq!(
        (next["type"].as_str(), next["emoji"].as_str()),
        (Some("reaction"), Some("🎉"))
    );
    assert_eq!(next["seq"], 4);
    assert_eq!(next["on"], true, "`on` defaults to adding");
}
