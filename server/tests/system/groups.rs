//! Groups: creation and changes reach every member's every session, removal
//! takes effect at once, receipts are counted per group, and every bad
//! request is refused with nothing stored and nothing fanned out.

use crate::helpers::*;
use serde_json::{Value, json};

async fn create_group(ws: &mut Ws, name: &str, members: &[&TestUser]) -> Value {
    let ids: Vec<&str> = members.iter().map(|u| u.id.as_str()).collect();
    let reply = acked(
        ws,
        json!({"type": "create_group", "name": name, "members": ids}),
    )
    .await;
    reply["conversation"].clone()
}

async fn got(ws: &mut Ws, body: &str) -> Value {
    ws.expect_where(|v| v["type"] == "new_message" && v["message"]["body"] == body)
        .await
}

async fn updated(ws: &mut Ws, change: &str) -> Value {
    ws.expect_where(|v| v["type"] == "conversation_updated" && v["change"] == change)
        .await
}

fn member_ids(conversation: &Value) -> Vec<String> {
    let mut ids: Vec<String> = conversation["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_group_reaches_every_member_and_every_device() {
    let app = spawn_app().await;
    let (alice, bob, carol) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
    );
    let mut phone = app.connect(&alice).await;
    let mut laptop = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let mut c = app.connect(&carol).await;

    let group = create_group(&mut phone, "  Hikers ", &[&bob, &carol, &bob]).await;
    let id = group["id"].as_str().unwrap().to_owned();
    assert_eq!(group["name"], "Hikers");
    assert_eq!(group["kind"], "group");
    let mut everyone = vec![alice.id.clone(), bob.id.clone(), carol.id.clone()];
    everyone.sort();
    assert_eq!(member_ids(&group), everyone);
    for ws in [&mut phone, &mut laptop, &mut b, &mut c] {
        let frame = updated(ws, "created").await;
        assert_eq!(frame["conversation"]["id"], id.as_str());
        assert_eq!(frame["by"], alice.id.as_str());
    }

    let sent = post(&mut b, &id, "who is in for Saturday?").await;
    for ws in [&mut phone, &mut laptop, &mut b, &mut c] {
        let frame = got(ws, "who is in for Saturday?").await;
        assert_eq!(frame["message"]["id"], sent["id"]);
        assert_eq!(frame["message"]["seq"], 1);
        assert_eq!(frame["message"]["from"], bob.id.as_str());
    }
    // The sender's own other device gets what it sent from the first.
    post(&mut phone, &id, "me!").await;
    got(&mut laptop, "me!").await;

    acked(
        &mut c,
        json!({"type": "rename_group", "conversation_id": id, "name": "Hikers 2026"}),
    )
    .await;
    for ws in [&mut phone, &mut laptop, &mut b, &mut c] {
        let frame = updated(ws, "renamed").await;
        assert_eq!(frame["conversation"]["name"], "Hikers 2026");
        assert_eq!(frame["by"], carol.id.as_str());
    }

    let (_, list) = app.get("/api/conversations", Some(&carol.token)).await;
    let listed = &list["conversations"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["name"], "Hikers 2026");
    assert_eq!(listed["unread"], 2);
    assert_eq!(listed["last_message"]["body"], "me!");
}

#[tokio::test]
async fn removed_members_stop_receiving_and_cannot_read_on() {
    let app = spawn_app().await;
    let (alice, bob, carol) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
    );
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let mut c = app.connect(&carol).await;
    let group = create_group(&mut a, "team", &[&bob, &carol]).await;
    let id = group["id"].as_str().unwrap().to_owned();
    post(&mut a, &id, "before").await;
    got(&mut c, "before").await;

    acked(
        &mut a,
        json!({"type": "remove_members", "conversation_id": id, "members": [carol.id]}),
    )
    .await;
    // Carol hears of her removal once: the group without her.
    let told = updated(&mut c, "members_removed").await;
    assert_eq!(told["removed"], json!([carol.id]));
    assert!(!member_ids(&told["conversation"]).contains(&carol.id));
    updated(&mut b, "members_removed").await;

    post(&mut a, &id, "after").await;
    got(&mut b, "after").await;
    for frame in [
        json!({"type": "history", "conversation_id": id}),
        json!({"type": "send_message", "conversation_id": id, "body": "let me back"}),
        json!({"type": "mark_read", "conversation_id": id, "up_to_seq": 2}),
        json!({"type": "add_members", "conversation_id": id, "members": [carol.id]}),
        json!({"type": "rename_group", "conversation_id": id, "name": "mine"}),
    ] {
        assert_eq!(
            error_code(&ask(&mut c, frame.clone()).await),
            "not_found",
            "{frame}"
        );
    }
    let (status, _) = app
        .get(
            &format!("/api/conversations/{id}/messages"),
            Some(&carol.token),
        )
        .await;
    assert_eq!(status, 404);
    acked(&mut c, json!({"type": "sync", "since": {}})).await;
    assert!(
        c.pending().iter().all(|f| f["message"]["body"] != "after"),
        "sync handed a removed member a later message"
    );
    let (_, list) = app.get("/api/conversations", Some(&carol.token)).await;
    assert_eq!(list["conversations"], json!([]));

    // Back in: the first message of the group Carol gets is the one sent
    // after she was added again; "after" never reached her.
    acked(
        &mut b,
        json!({"type": "add_members", "conversation_id": id, "members": [carol.id]}),
    )
    .await;
    updated(&mut c, "members_added").await;
    assert!(
        c.pending().iter().all(|f| f["change"] != "members_removed"),
        "told of the removal twice"
    );
    post(&mut a, &id, "welcome back").await;
    let first = c
        .expect_where(|v| {
            v["type"] == "new_message" && v["message"]["conversation_id"] == id.as_str()
        })
        .await;
    assert_eq!(first["message"]["body"], "welcome back");

    // Leaving: Bob is told, then no longer a member.
    acked(&mut b, json!({"type": "leave", "conversation_id": id})).await;
    let left = updated(&mut a, "left").await;
    assert_eq!(left["removed"], json!([bob.id]));
    assert_eq!(member_ids(&left["conversation"]).len(), 2);
    let again = ask(&mut b, json!({"type": "leave", "conversation_id": id})).await;
    assert_eq!(error_code(&again), "not_found");
}

#[tokio::test]
async fn group_requests_out_of_bounds_are_refused_and_change_nothing() {
    let app = spawn_app_with(|c| c.group_max_members = 3).await;
    let (alice, bob, carol, dave) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
        app.register("dave").await,
    );
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let mut d = app.connect(&dave).await;

    let too_many = json!({"type": "create_group", "name": "big",
        "members": [bob.id, carol.id, dave.id]});
    assert_eq!(error_code(&ask(&mut a, too_many).await), "too_large");
    for (frame, code) in [
        (
            json!({"type": "create_group", "name": "", "members": [bob.id]}),
            "invalid",
        ),
        (
            json!({"type": "create_group", "name": "x".repeat(101), "members": [bob.id]}),
            "invalid",
        ),
        (
            json!({"type": "create_group", "name": "ok", "members": ["no-such-user"]}),
            "not_found",
        ),
        (
            json!({"type": "create_group", "name": "ok", "members": "bob"}),
            "invalid",
        ),
        (
            json!({"type": "create_group", "name": "ok", "members": [{"$ne": null}]}),
            "invalid",
        ),
        (
            json!({"type": "create_group", "name": "ok", "members": ["bad id!"]}),
            "invalid",
        ),
    ] {
        assert_eq!(
            error_code(&ask(&mut a, frame.clone()).await),
            code,
            "{frame}"
        );
    }
    let (_, list) = app.get("/api/conversations", Some(&alice.token)).await;
    assert_eq!(
        list["conversations"],
        json!([]),
        "a refused group was stored"
    );

    let group = create_group(&mut a, "three", &[&bob, &carol]).await;
    let id = group["id"].as_str().unwrap().to_owned();
    updated(&mut b, "created").await;
    let direct = a.send_message(&bob.id, "psst").await;
    let direct_id = direct["conversation_id"].as_str().unwrap().to_owned();

    for (who, frame, code) in [
        (
            'a',
            json!({"type": "add_members", "conversation_id": id, "members": [dave.id]}),
            "too_large",
        ),
        (
            'a',
            json!({"type": "add_members", "conversation_id": id, "members": []}),
            "invalid",
        ),
        (
            'a',
            json!({"type": "rename_group", "conversation_id": id, "name": "y".repeat(101)}),
            "invalid",
        ),
        (
            'a',
            json!({"type": "rename_group", "conversation_id": id, "name": " \t "}),
            "invalid",
        ),
        (
            'a',
            json!({"type": "add_members", "conversation_id": direct_id, "members": [dave.id]}),
            "invalid",
        ),
        (
            'a',
            json!({"type": "leave", "conversation_id": direct_id}),
            "invalid",
        ),
        (
            'a',
            json!({"type": "leave", "conversation_id": "../etc"}),
            "invalid",
        ),
        // A stranger is told the group does not exist, whatever they try.
        (
            'd',
            json!({"type": "add_members", "conversation_id": id, "members": [dave.id]}),
            "not_found",
        ),
        (
            'd',
            json!({"type": "remove_members", "conversation_id": id, "members": [bob.id]}),
            "not_found",
        ),
        (
            'd',
            json!({"type": "rename_group", "conversation_id": id, "name": "mine"}),
            "not_found",
        ),
        (
            'd',
            json!({"type": "leave", "conversation_id": id}),
            "not_found",
        ),
        (
            'd',
            json!({"type": "send_message", "conversation_id": id, "body": "hi"}),
            "not_found",
        ),
        (
            'd',
            json!({"type": "history", "conversation_id": id}),
            "not_found",
        ),
        (
            'd',
            json!({"type": "mark_read", "conversation_id": id, "up_to_seq": 1}),
            "not_found",
        ),
        (
            'd',
            json!({"type": "typing", "conversation_id": id, "state": "start"}),
            "not_found",
        ),
    ] {
        let ws = match who {
            'a' => &mut a,
            'd' => &mut d,
            _ => unreachable!(),
        };
        assert_eq!(error_code(&ask(ws, frame.clone()).await), code, "{frame}");
    }

    // Nothing was fanned out: the next update Bob sees is the next valid one.
    acked(
        &mut a,
        json!({"type": "rename_group", "conversation_id": id, "name": "still three"}),
    )
    .await;
    let next = b
        .expect_where(|v| v["type"] == "conversation_updated")
        .await;
    assert_eq!(next["change"], "renamed");
    assert_eq!(next["conversation"]["name"], "still three");
    assert_eq!(member_ids(&next["conversation"]).len(), 3);
    assert_eq!(next["conversation"]["last_seq"], 0);
}

#[tokio::test]
async fn concurrent_additions_never_pass_the_limit() {
    let app = spawn_app_with(|c| c.group_max_members = 4).await;
    let alice = app.register("alice").await;
    let mut a = app.connect(&alice).await;
    let group = create_group(&mut a, "small", &[]).await;
    let id = group["id"].as_str().unwrap().to_owned();
    let mut candidates = Vec::new();
    for i in 0..6 {
        candidates.push(app.register(&format!("user{i}")).await);
    }
    // One socket per request, so the edge handles them at the same time.
    let mut sockets = Vec::new();
    for _ in &candidates {
        sockets.push(app.connect(&alice).await);
    }
    let replies =
        futures::future::join_all(sockets.iter_mut().zip(&candidates).map(|(ws, user)| {
            ask(
                ws,
                json!({"type": "add_members", "conversation_id": id, "members": [user.id]}),
            )
        }))
        .await;
    let acked = replies.iter().filter(|r| r["type"] == "ack").count();
    let full = replies.iter().filter(|r| r["code"] == "too_large").count();
    assert_eq!((acked, full), (3, 3), "{replies:?}");
    let (_, list) = app.get("/api/conversations", Some(&alice.token)).await;
    assert_eq!(
        list["conversations"][0]["members"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn group_receipts_are_counted_not_sent_per_member() {
    let app = spawn_app().await;
    let (alice, bob, carol) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
    );
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let mut b2 = app.connect(&bob).await;
    let mut c = app.connect(&carol).await;
    let group = create_group(&mut a, "readers", &[&bob, &carol]).await;
    let id = group["id"].as_str().unwrap().to_owned();
    post(&mut a, &id, "one").await;
    post(&mut a, &id, "two").await;
    got(&mut b, "two").await;
    got(&mut c, "two").await;

    b.send(json!({"type": "mark_delivered", "conversation_id": id, "up_to_seq": 2}))
        .await;
    b.send(json!({"type": "mark_read", "conversation_id": id, "up_to_seq": 2}))
        .await;
    c.send(json!({"type": "mark_read", "conversation_id": id, "up_to_seq": 1}))
        .await;
    // Alice learns "read by 2 of 3 up to seq 1, 1 of 3 up to seq 2".
    let counts = a
        .expect_where(|v| {
            v["type"] == "receipt_counts"
                && v["read"] == json!([{"up_to_seq": 2, "count": 1}, {"up_to_seq": 1, "count": 2}])
        })
        .await;
    assert_eq!(counts["conversation_id"], id.as_str());
    assert_eq!(counts["members"], 3);
    assert_eq!(
        counts["delivered"],
        json!([{"up_to_seq": 2, "count": 1}, {"up_to_seq": 1, "count": 2}])
    );
    // The receipts were pushed in earlier batches than a message Bob sends
    // now, and a session gets its frames in push order: any per-member
    // receipt for Alice would have arrived before it.
    post(&mut b, &id, "three").await;
    got(&mut a, "three").await;
    assert!(
        a.pending()
            .iter()
            .all(|f| f["type"] != "message_read" && f["type"] != "message_delivered"),
        "per-member receipts in a group: {:?}",
        a.pending()
    );
    // Bob's other device sees his own read, and his unread count is 0.
    let own = b2
        .expect_where(|v| v["type"] == "message_read" && v["conversation_id"] == id.as_str())
        .await;
    assert_eq!(own["by"], bob.id.as_str());
    assert_eq!(own["up_to_seq"], 2);
    let (_, list) = app.get("/api/conversations", Some(&bob.token)).await;
    assert_eq!(list["conversations"][0]["unread"], 0);
    // Carol read "one": "two" and Bob's "three" are unread; Bob's own
    // message is not unread for him.
    let (_, list) = app.get("/api/conversations", Some(&carol.token)).await;
    assert_eq!(list["conversations"][0]["unread"], 2);
}
