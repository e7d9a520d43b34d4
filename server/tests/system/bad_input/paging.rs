//! Page sizes past any integer type are clamped, as the protocol says;
//! only what is not a non-negative integer is `invalid`.

use crate::helpers::*;
use serde_json::Value;

/// 2^32 + 1, 2^64 − 1 and 10^30, as written on the wire.
const HUGE: [&str; 3] = [
    "4294967297",
    "18446744073709551615",
    "1000000000000000000000000000000",
];

/// Sends a `history` frame with `limit` written as is; answers the reply.
async fn history(ws: &mut Ws, conversation: &str, limit: &str) -> Value {
    let reference = format!("h-{}", parley::ids::new_session_id());
    ws.send_text(format!(
        r#"{{"type":"history","ref":"{reference}","conversation_id":"{conversation}","limit":{limit}}}"#
    ))
    .await;
    ws.expect_where(|v| v["ref"] == reference.as_str()).await
}

fn count(list: &Value) -> usize {
    list.as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn huge_limits_are_clamped_and_non_integers_refused() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.connect(&alice).await;
    let mut conversation = String::new();
    for i in 0..3 {
        let sent = a.send_message(&bob.id, &format!("page {i}")).await;
        conversation = sent["conversation_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    // The search reads the store: wait until the last one is there.
    a.expect_where(|v| v["type"] == "new_message" && v["message"]["body"] == "page 2")
        .await;

    for limit in HUGE.iter().copied().chain(["1e30"]) {
        let reply = history(&mut a, &conversation, limit).await;
        assert_eq!(reply["type"], "ack", "{limit}: {reply}");
        assert_eq!(count(&reply["messages"]), 3, "{limit}: {reply}");
        assert_eq!(reply["has_more"], false);
    }
    for limit in HUGE {
        let path = format!("/api/conversations/{conversation}/messages?limit={limit}");
        let (status, body) = app.get(&path, Some(&alice.token)).await;
        assert_eq!(status, 200, "{limit}: {body}");
        assert_eq!(count(&body["messages"]), 3, "{limit}: {body}");
        let (status, body) = app
            .get(
                &format!("/api/search?q=page&limit={limit}"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(status, 200, "{limit}: {body}");
        assert_eq!(count(&body["messages"]), 3, "{limit}: {body}");
    }

    for limit in ["-1", "1.5", "\"10\"", "true"] {
        let reply = history(&mut a, &conversation, limit).await;
        assert_eq!(error_code(&reply), "invalid", "{limit}: {reply}");
    }
    for limit in ["-1", "1.5", "ten", ""] {
        for path in [
            format!("/api/conversations/{conversation}/messages?limit={limit}"),
            format!("/api/search?q=page&limit={limit}"),
        ] {
            let (status, body) = app.get(&path, Some(&alice.token)).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert_eq!(body["error"]["code"], "invalid", "{path}: {body}");
        }
    }
}
