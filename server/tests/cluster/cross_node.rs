//! Users on different edges talk as if on one node; a user with sessions on
//! both edges gets everything on both.

use crate::harness::Cluster;
use crate::helpers::real_engines;
use serde_json::json;

#[tokio::test]
async fn users_on_different_edges_chat_with_receipts_typing_and_presence() {
    if !real_engines("this cluster test") {
        return;
    }
    let cluster = Cluster::start().await;
    let (one, two) = (cluster.edge("edge-1"), cluster.edge("edge-2"));
    let alice = one.register("alice").await;
    let bob = two.register("bob").await;

    // Alice on edge-1 and, a second device, on edge-2; Bob on edge-2.
    let mut a1 = one.connect(&alice).await;
    let mut a2 = two.connect(&alice).await;
    let mut b2 = two.connect(&bob).await;

    let sent = a1.send_message(&bob.id, "across the edges").await;
    let id = sent["id"].as_str().unwrap().to_owned();
    let conversation = sent["conversation_id"].as_str().unwrap().to_owned();
    for ws in [&mut b2, &mut a1, &mut a2] {
        let m = ws
            .expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == id.as_str())
            .await;
        assert_eq!(m["message"]["body"], "across the edges");
        assert_eq!(m["message"]["seq"], 1);
    }

    // Typing from edge-2 reaches both of Alice's devices.
    b2.send(json!({"type": "typing", "to": alice.id, "state": "start"}))
        .await;
    for ws in [&mut a1, &mut a2] {
        let t = ws.expect("typing").await;
        assert_eq!(
            (t["from"].as_str(), t["state"].as_str()),
            (Some(bob.id.as_str()), Some("start"))
        );
    }

    // Bob reads it: both of Alice's devices see the receipt.
    let ack = b2
        .request(
            json!({"type": "mark_read", "conversation_id": conversation, "up_to_seq": 1}),
            "read",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for ws in [&mut a1, &mut a2] {
        let r = ws.expect("message_read").await;
        assert_eq!(
            (r["by"].as_str(), r["up_to_seq"].as_u64()),
            (Some(bob.id.as_str()), Some(1))
        );
    }

    // A reply from Bob's edge-2 reaches Alice on edge-1.
    let reply = b2.send_message(&alice.id, "and back").await;
    let m = a1
        .expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == reply["id"])
        .await;
    assert_eq!(m["message"]["seq"], 2);

    // Presence across edges: Bob leaves edge-2 and comes back on edge-1.
    b2.close().await;
    for ws in [&mut a1, &mut a2] {
        let left = ws.expect("user_left").await;
        assert_eq!(left["user_id"], bob.id.as_str());
    }
    let b1 = one.connect(&bob).await;
    for ws in [&mut a1, &mut a2] {
        let joined = ws
            .expect_where(|v| v["type"] == "user_joined" && v["user_id"] == bob.id.as_str())
            .await;
        assert_eq!(joined["status"], "online");
    }

    // nginx passes /health through to an edge.
    let (status, health) = cluster.front().get("/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["service"], "edge");
    b1.close().await;
}

#[tokio::test]
async fn services_lists_every_instance_with_its_health() {
    if !real_engines("this cluster test") {
        return;
    }
    let cluster = Cluster::start().await;
    let alice = cluster.edge("edge-1").register("carol").await;
    let _ws = cluster.edge("edge-1").connect(&alice).await;
    let services = cluster.services("edge-2").await;
    let ids = |kind: &str| -> Vec<String> {
        services[kind]
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    assert_eq!(ids("auth"), ["auth-1"]);
    assert_eq!(ids("chat"), ["chat-1", "chat-2"]);
    assert_eq!(ids("presence"), ["presence-1"]);
    assert_eq!(ids("edge"), ["edge-1", "edge-2"]);
    for list in services.values() {
        for s in list {
            assert_eq!(s["health"], "serving", "{s}");
            assert!(s["started_at"].as_i64().unwrap() > 0);
        }
    }
    let edges = &services["edge"];
    let http = |id: &str| {
        edges.iter().find(|e| e["id"] == id).unwrap()["http_addr"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(http("edge-1"), cluster.edges["edge-1"].to_string());
    assert_eq!(http("edge-2"), cluster.edges["edge-2"].to_string());
}
