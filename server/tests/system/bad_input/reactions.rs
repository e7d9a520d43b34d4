//! A change that changes nothing is acked and goes nowhere.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn repeating_a_reaction_is_acked_and_pushed_to_nobody() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut b = app.connect(&bob).await;
    let sent = a.send_message(&bob.id, "react to me").await;
    let (conversation, message) = (
        sent["conversation_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        sent["id"].as_str().unwrap_or_default().to_owned(),
    );
    // Stored (and so a target for changes) once it is pushed.
    b.expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == sent["id"])
        .await;
    let react = |emoji: &str, on: bool| {
        json!({"type": "react", "conversation_id": conversation, "message_id": message,
               "emoji": emoji, "on": on})
    };

    let first = acked(&mut b, react("👍", true)).await;
    assert!(first["change"]["id"].is_string(), "{first}");
    let pushed = a.expect("reaction").await;
    assert_eq!(
        (pushed["emoji"].as_str(), pushed["seq"].as_u64()),
        (Some("👍"), Some(2))
    );

    // The same reaction again, and taking back one bob does not have.
    for (emoji, on) in [("👍", true), ("👍", true), ("❤️", false)] {
        let again = acked(&mut b, react(emoji, on)).await;
        assert_eq!(again["change"]["unchanged"], true, "{again}");
        assert_eq!(again["change"]["message_id"], message.as_str());
        assert!(again["change"]["id"].is_null(), "{again}");
    }

    // A marker after them: its push comes after anything they caused, and
    // its seq shows they took none.
    let marker = b.send_message(&alice.id, "marker").await;
    let got = a
        .expect_where(|v| v["type"] == "new_message" && v["message"]["id"] == marker["id"])
        .await;
    assert_eq!(got["message"]["seq"], 3, "{got}");
    let stray: Vec<_> = a
        .pending()
        .iter()
        .filter(|v| v["type"] == "reaction")
        .collect();
    assert!(stray.is_empty(), "no-op reactions were pushed: {stray:?}");

    // History shows one reaction, once.
    let page = acked(
        &mut a,
        json!({"type": "history", "conversation_id": conversation}),
    )
    .await;
    let original = &page["messages"][0];
    assert_eq!(original["id"], message.as_str());
    assert_eq!(original["reactions"], json!({"👍": [bob.id]}), "{original}");
    // The log holds the message, one reaction entry and the marker.
    let entries: Vec<(u64, &str)> = page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap_or(0),
                m["kind"].as_str().unwrap_or("message"),
            )
        })
        .collect();
    assert_eq!(entries, [(1, "message"), (2, "reaction"), (3, "message")]);
}
