//! The 1:1 message path end to end: send → ack → new_message with seq →
//! receipts, typing, idempotent resends, history and sync.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn a_message_reaches_the_recipient_with_seq_and_receipts_return() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;

    let sent = a.send_message(&bob.id, "hello bob").await;
    let conversation = sent["conversation_id"].as_str().unwrap().to_owned();
    assert!(!sent["id"].as_str().unwrap().is_empty());
    assert!(sent["sent_at"].as_i64().unwrap() > 0);

    let got = b.expect("new_message").await;
    assert_eq!(got["message"]["id"], sent["id"]);
    assert_eq!(got["message"]["seq"], 1);
    assert_eq!(got["message"]["from"], alice.id.as_str());
    assert_eq!(got["message"]["body"], "hello bob");
    // The sender's own sessions see the sequenced message too.
    let echo = a.expect("new_message").await;
    assert_eq!(echo["message"]["id"], sent["id"]);

    b.send(json!({"type": "mark_delivered", "conversation_id": conversation, "up_to_seq": 1}))
        .await;
    let delivered = a.expect("message_delivered").await;
    assert_eq!(delivered["by"], bob.id.as_str());
    assert_eq!(delivered["up_to_seq"], 1);
    assert_eq!(delivered["conversation_id"], conversation.as_str());

    b.send(json!({"type": "mark_read", "conversation_id": conversation, "up_to_seq": 1}))
        .await;
    let read = a.expect("message_read").await;
    assert_eq!(read["by"], bob.id.as_str());
    assert_eq!(read["up_to_seq"], 1);

    // Replies go into the same conversation with the next seq.
    b.send_message(&alice.id, "hi alice").await;
    let reply = a
        .expect_where(|v| v["type"] == "new_message" && v["message"]["from"] == bob.id.as_str())
        .await;
    assert_eq!(reply["message"]["seq"], 2);
    assert_eq!(reply["message"]["conversation_id"], conversation.as_str());
}

#[tokio::test]
async fn seq_is_dense_and_ordered_under_a_burst() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    for i in 0..40 {
        a.send(json!({"type": "send_message", "to": bob.id, "client_msg_id": format!("m{i}"), "body": format!("n{i}")}))
            .await;
    }
    for i in 0..40u64 {
        let m = b.expect("new_message").await;
        assert_eq!(m["message"]["seq"], i + 1);
        assert_eq!(m["message"]["body"], format!("n{i}"));
    }
}

/// Both people write first at once, from two devices each: every send is
/// acked (none refused for racing to create the conversation), all land in
/// one conversation with distinct seqs, and each device gets all of them.
#[tokio::test]
async fn first_messages_sent_at_once_from_both_sides_all_land() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut devices = Vec::new();
    for (user, peer) in [
        (&alice, &bob),
        (&alice, &bob),
        (&bob, &alice),
        (&bob, &alice),
    ] {
        devices.push((app.connect(user).await, peer.id.clone()));
    }
    let sends = devices.iter_mut().enumerate().map(|(n, (ws, peer))| {
        let peer = peer.clone();
        async move { ws.send_message(&peer, &format!("first {n}")).await }
    });
    let acked = futures::future::join_all(sends).await;
    let conversation = acked[0]["conversation_id"].clone();
    assert!(acked.iter().all(|m| m["conversation_id"] == conversation));
    for (ws, _) in &mut devices {
        let mut got = Vec::new();
        while got.len() < acked.len() {
            let m = ws.expect("new_message").await;
            got.push(m["message"]["seq"].as_u64().unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }
}

#[tokio::test]
async fn typing_reaches_the_other_member_only() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let ack = a
        .request(
            json!({"type": "typing", "to": bob.id, "state": "start"}),
            "t1",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let typing = b.expect("typing").await;
    assert_eq!(typing["from"], alice.id.as_str());
    assert_eq!(typing["state"], "start");
    // The typist is not told about their own typing.
    a.send_message(&bob.id, "marker").await;
    a.expect("new_message").await;
    assert!(a.pending().iter().all(|f| f["type"] != "typing"));
}

#[tokio::test]
async fn resending_a_client_msg_id_returns_the_same_message_and_stores_nothing() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let frame =
        json!({"type": "send_message", "to": bob.id, "client_msg_id": "once", "body": "only once"});
    let first = a.request(frame.clone(), "r1").await;
    let second = a.request(frame.clone(), "r2").await;
    assert_eq!(first["message"]["id"], second["message"]["id"]);
    b.expect("new_message").await;
    // After the duplicate has been fully processed, a resend after delivery
    // too answers the stored message.
    let third = a.request(frame, "r3").await;
    assert_eq!(third["message"]["id"], first["message"]["id"]);
    let marker = a.send_message(&bob.id, "marker").await;
    let next = b.expect("new_message").await;
    assert_eq!(
        next["message"]["id"], marker["id"],
        "duplicate was delivered"
    );
    assert_eq!(next["message"]["seq"], 2);
    let conversation = marker["conversation_id"].as_str().unwrap();
    let (_, history) = app
        .get(
            &format!("/api/conversations/{conversation}/messages"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn history_pages_backwards_over_ws_and_rest() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut conversation = String::new();
    for i in 1..=5 {
        conversation = a.send_message(&bob.id, &format!("m{i}")).await["conversation_id"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    for _ in 0..5 {
        a.expect("new_message").await;
    }
    let page = a
        .request(
            json!({"type": "history", "conversation_id": conversation, "limit": 2}),
            "h1",
        )
        .await;
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5]);
    assert_eq!(page["has_more"], true);
    let (status, older) = app
        .get(
            &format!("/api/conversations/{conversation}/messages?before_seq=4&limit=10"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, 200);
    let bodies: Vec<&str> = older["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m1", "m2", "m3"]);
    assert_eq!(older["has_more"], false);
}

#[tokio::test]
async fn sync_replays_what_an_offline_user_missed_in_order() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    for i in 1..=3 {
        a.send_message(&bob.id, &format!("while away {i}")).await;
    }
    for _ in 0..3 {
        a.expect("new_message").await; // sequenced and stored
    }
    let mut b = app.connect(&bob).await;
    b.send(json!({"type": "sync", "ref": "s1", "since": {}}))
        .await;
    let mut seqs = Vec::new();
    loop {
        let f = b
            .expect_where(|v| v["type"] == "new_message" || v["ref"] == "s1")
            .await;
        if f["type"] == "ack" {
            break;
        }
        seqs.push(f["message"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3]);
    let conversation = a.send_message(&bob.id, "now").await["conversation_id"].clone();
    b.expect("new_message").await;
    let ack = b
        .request(
            json!({"type": "sync", "since": {conversation.as_str().unwrap(): 3}}),
            "s2",
        )
        .await;
    assert_eq!(ack["type"], "ack");
    let synced: Vec<_> = b
        .pending()
        .iter()
        .filter(|f| f["type"] == "new_message")
        .collect();
    assert_eq!(synced.len(), 1, "only seq 4 is missing after 3");
    assert_eq!(synced[0]["message"]["seq"], 4);
}

#[tokio::test]
async fn conversations_list_unread_counts_and_the_last_message() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    a.send_message(&bob.id, "one").await;
    let last = a.send_message(&bob.id, "two").await;
    b.expect("new_message").await;
    b.expect("new_message").await;
    let (status, list) = app.get("/api/conversations", Some(&bob.token)).await;
    assert_eq!(status, 200);
    let c = &list["conversations"][0];
    assert_eq!(c["unread"], 2);
    assert_eq!(c["last_message"]["id"], last["id"]);
    assert_eq!(c["kind"], "direct");
    let names: Vec<&str> = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["username"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"alice") && names.contains(&"bob"));

    b.send(
        json!({"type": "mark_read", "conversation_id": last["conversation_id"], "up_to_seq": 2}),
    )
    .await;
    a.expect("message_read").await;
    let (_, list) = app.get("/api/conversations", Some(&bob.token)).await;
    assert_eq!(list["conversations"][0]["unread"], 0);
}
