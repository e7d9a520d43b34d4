//! Parley's side of the load generator: its WebSocket frames (see
//! docs/protocol.md) for sends and groups, and their answers as [`Event`]s.
//! A send's `ref` is its index, so an ack or a refusal names the send.

use crate::target::{Delivery, Event};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use parley_server::client::Socket;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A 1:1 send.
pub fn direct(to: &str, index: usize, client_msg_id: &str, body: &str) -> String {
    json!({"type": "send_message", "ref": index.to_string(), "to": to,
        "client_msg_id": client_msg_id, "body": body})
    .to_string()
}

/// A send to a group conversation.
pub fn to_group(conversation: &str, index: usize, client_msg_id: &str, body: &str) -> String {
    json!({"type": "send_message", "ref": index.to_string(), "conversation_id": conversation,
        "client_msg_id": client_msg_id, "body": body})
    .to_string()
}

/// Creates a group of the sender and `others`; answers its conversation id.
pub async fn create_group(
    sender: &mut Socket,
    name: &str,
    others: &[&str],
) -> anyhow::Result<String> {
    let create = json!({"type": "create_group", "ref": "create", "name": name, "members": others});
    sender
        .send(Message::Text(create.to_string().into()))
        .await?;
    while let Some(frame) = sender.next().await {
        if let Message::Text(t) = frame? {
            let v: Value = serde_json::from_str(&t)?;
            match (v["type"].as_str(), v["ref"].as_str()) {
                (Some("ack"), Some("create")) => {
                    return Ok(v["conversation"]["id"]
                        .as_str()
                        .context("no group id")?
                        .to_owned());
                }
                (Some("error"), _) => bail!("create_group refused: {v}"),
                _ => {}
            }
        }
    }
    bail!("closed before the group was created")
}

/// The index a `ref` names, when it is one of ours.
fn index(v: &Value) -> Option<usize> {
    v["ref"].as_str()?.parse().ok()
}

/// What one frame means; frames the generator does not use mean nothing.
pub fn parse(text: &str) -> anyhow::Result<Vec<Event>> {
    let v: Value = serde_json::from_str(text)?;
    Ok(match v["type"].as_str() {
        Some("ack") => index(&v)
            .map(|index| Event::Accepted { index })
            .into_iter()
            .collect(),
        Some("error") => {
            let code = v["code"].as_str().unwrap_or("?").to_owned();
            let retry = matches!(code.as_str(), "unavailable" | "rate_limited");
            vec![Event::Refused {
                index: index(&v),
                code,
                retry,
            }]
        }
        Some("new_message") => {
            let m = &v["message"];
            let text = |k: &str| m[k].as_str().unwrap_or("").to_owned();
            vec![Event::Delivered(Delivery {
                from: text("from"),
                client_msg_id: text("client_msg_id"),
                body: text("body"),
                conversation: text("conversation_id"),
                seq: m["seq"].as_u64(),
            })]
        }
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_refusals_and_messages() {
        assert_eq!(
            parse(r#"{"type":"ack","ref":"7","message":{}}"#).unwrap(),
            vec![Event::Accepted { index: 7 }]
        );
        assert_eq!(
            parse(r#"{"type":"error","ref":"3","code":"unavailable"}"#).unwrap(),
            vec![Event::Refused {
                index: Some(3),
                code: "unavailable".into(),
                retry: true
            }]
        );
        let d = parse(
            r#"{"type":"new_message","message":{"from":"u1","client_msg_id":"f2","body":"12 xx","conversation_id":"c","seq":4}}"#,
        )
        .unwrap();
        let [Event::Delivered(d)] = &d[..] else {
            panic!("{d:?}")
        };
        assert_eq!((d.number().unwrap(), d.seq), (12, Some(4)));
    }
}
