//! A group whose members sit on both edges, one of them with a device on
//! each: messages, changes, group updates and receipt counts reach every
//! session wherever it is, and a removed member's sessions stop at once.

use crate::harness::Cluster;
use crate::helpers::{Ws, acked, real_engines};
use serde_json::{Value, json};

async fn frame_where(ws: &mut Ws, kind: &str, field: &str, value: &Value) -> Value {
    ws.expect_where(|v| v["type"] == kind && v.pointer(field) == Some(value))
        .await
}

#[tokio::test]
async fn a_group_across_edges_reaches_every_device() {
    if !real_engines("this cluster test") {
        return;
    }
    let cluster = Cluster::start().await;
    let (one, two) = (cluster.edge("edge-1"), cluster.edge("edge-2"));
    let alice = one.register("alice").await;
    let bob = two.register("bob").await;
    let carol = one.register("carol").await;

    // Alice on both edges, Bob on edge-2, Carol on edge-1.
    let mut a1 = one.connect(&alice).await;
    let mut a2 = two.connect(&alice).await;
    let mut b2 = two.connect(&bob).await;
    let mut c1 = one.connect(&carol).await;

    let created = acked(
        &mut b2,
        json!({"type": "create_group", "name": "across", "members": [alice.id, carol.id]}),
    )
    .await;
    let group = created["conversation"]["id"].clone();
    for ws in [&mut a1, &mut a2, &mut b2, &mut c1] {
        frame_where(ws, "conversation_updated", "/conversation/id", &group).await;
    }

    let sent = acked(
        &mut a1,
        json!({"type": "send_message", "conversation_id": group, "body": "hello all"}),
    )
    .await;
    let id = sent["message"]["id"].clone();
    for ws in [&mut a1, &mut a2, &mut b2, &mut c1] {
        let m = frame_where(ws, "new_message", "/message/id", &id).await;
        assert_eq!(m["message"]["seq"], 1);
    }

    // A reaction from edge-2 and an edit from edge-1 reach every device.
    acked(
        &mut b2,
        json!({"type": "react", "conversation_id": group, "message_id": id, "emoji": "🎉"}),
    )
    .await;
    acked(
        &mut a2,
        json!({"type": "edit_message", "conversation_id": group, "message_id": id, "body": "hello everyone"}))
    .await;
    for ws in [&mut a1, &mut a2, &mut b2, &mut c1] {
        let r = frame_where(ws, "reaction", "/message_id", &id).await;
        assert_eq!(
            (r["by"].as_str(), r["seq"].as_u64()),
            (Some(bob.id.as_str()), Some(2))
        );
        let e = frame_where(ws, "message_edited", "/message_id", &id).await;
        assert_eq!(
            (e["body"].as_str(), e["seq"].as_u64()),
            (Some("hello everyone"), Some(3))
        );
    }

    // Reads from both edges come back to Alice's devices as counts.
    let read = json!({"type": "mark_read", "conversation_id": group, "up_to_seq": 1});
    acked(&mut b2, read.clone()).await;
    acked(&mut c1, read).await;
    for ws in [&mut a1, &mut a2] {
        ws.expect_where(|v| {
            v["type"] == "receipt_counts" && v["read"] == json!([{"up_to_seq": 1, "count": 2}])
        })
        .await;
    }

    // Carol is removed from edge-2; her session on edge-1 is told, and the
    // next message reaches the others but not her.
    acked(
        &mut a2,
        json!({"type": "remove_members", "conversation_id": group, "members": [carol.id]}),
    )
    .await;
    for ws in [&mut a1, &mut a2, &mut b2, &mut c1] {
        let u = frame_where(
            ws,
            "conversation_updated",
            "/change",
            &json!("members_removed"),
        )
        .await;
        assert_eq!(u["removed"], json!([carol.id]));
    }
    let after = acked(
        &mut b2,
        json!({"type": "send_message", "conversation_id": group, "body": "without carol"}),
    )
    .await;
    for ws in [&mut a1, &mut a2, &mut b2] {
        frame_where(ws, "new_message", "/message/id", &after["message"]["id"]).await;
    }
    // Carol's next frame about this group is the add that lets her back in,
    // not the message she was removed before.
    acked(
        &mut a1,
        json!({"type": "add_members", "conversation_id": group, "members": [carol.id]}),
    )
    .await;
    let next = c1
        .expect_where(|v| {
            v["message"]["conversation_id"] == group || v["conversation"]["id"] == group
        })
        .await;
    assert_eq!(next["type"], "conversation_updated", "{next}");
    assert_eq!(next["change"], "members_added");
}
