//! Centrifugo's side of the load generator: its JSON client protocol over
//! WebSocket (`/connection/websocket`), configured as `scripts/bench peer`
//! writes it: HMAC (HS256) connection tokens, user-limited personal channels
//! `personal:#<user>` that only their user may subscribe to and any
//! authenticated client may publish into, and a `group` namespace every
//! member subscribes to.
//!
//! A publish's command id is its index plus [`FIRST_PUBLISH_ID`], so its
//! reply names the send; the data published carries the same fields as a
//! Parley message (`from`, `client_msg_id`, `body`).

use crate::target::{Delivery, Event};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use parley_server::client::Socket;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

/// Command ids below this are the setup's (connect, subscribe).
pub const FIRST_PUBLISH_ID: usize = 16;
/// The command id of the subscription to a group channel.
pub const GROUP_SUB_ID: usize = 3;
/// Centrifugo's application-level ping and the client's pong are both an
/// empty object.
pub const PONG: &str = "{}";
/// How long a connection token is valid, in seconds: longer than any run.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// A connection token for user `id`, signed with the HMAC `secret`.
pub fn token(secret: &str, id: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({"sub": id, "exp": now + TOKEN_LIFETIME_SECS});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// The personal channel of `user`: only that user may subscribe to it.
pub fn personal(user: &str) -> String {
    format!("personal:#{user}")
}

/// The channel of group `name`.
pub fn group_channel(name: &str) -> String {
    format!("group:{name}")
}

/// Connects with `token` and subscribes to `user`'s personal channel.
pub async fn connect(url: &str, token: &str, user: &str) -> anyhow::Result<Socket> {
    let ws_url = format!("{}/connection/websocket", url.replacen("http", "ws", 1));
    let (mut ws, _) = connect_async_with_config(ws_url, None, true).await?;
    let connect = json!({"id": 1, "connect": {"token": token, "name": "parley-load"}});
    command(&mut ws, connect, 1).await.context("connect")?;
    subscribe(&mut ws, &personal(user), 2).await?;
    Ok(ws)
}

/// Subscribes `ws` to `channel` with command `id`; returns on its reply.
pub async fn subscribe(ws: &mut Socket, channel: &str, id: usize) -> anyhow::Result<()> {
    let subscribe = json!({"id": id, "subscribe": {"channel": channel}});
    command(ws, subscribe, id)
        .await
        .with_context(|| format!("subscribe to {channel}"))
}

/// Sends `cmd` and reads until the reply with `id`; an error reply fails.
async fn command(ws: &mut Socket, cmd: Value, id: usize) -> anyhow::Result<()> {
    ws.send(Message::Text(cmd.to_string().into())).await?;
    while let Some(frame) = ws.next().await {
        let Message::Text(t) = frame? else { continue };
        for line in t.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)?;
            if v["id"].as_u64() != Some(id as u64) {
                continue;
            }
            if !v["error"].is_null() {
                bail!("refused: {}", v["error"]);
            }
            return Ok(());
        }
    }
    bail!("closed before the reply to command {id}")
}

/// Publish number `index` into `channel`.
pub fn publish(channel: &str, index: usize, from: &str, client_msg_id: &str, body: &str) -> String {
    json!({"id": index + FIRST_PUBLISH_ID, "publish": {"channel": channel,
        "data": {"from": from, "client_msg_id": client_msg_id, "body": body}}})
    .to_string()
}

/// What one frame means: replies and pushes, one JSON object per line.
pub fn parse(text: &str) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)?;
        if v.as_object().is_some_and(|o| o.is_empty()) {
            events.push(Event::Ping);
            continue;
        }
        let publish_index = v["id"]
            .as_u64()
            .and_then(|id| usize::try_from(id).ok())
            .and_then(|id| id.checked_sub(FIRST_PUBLISH_ID));
        if let Some(error) = v.get("error") {
            events.push(Event::Refused {
                index: publish_index,
                code: error["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| error["code"].to_string()),
                retry: error["temporary"].as_bool().unwrap_or(false),
            });
        } else if let (Some(index), true) = (publish_index, v.get("publish").is_some()) {
            events.push(Event::Accepted { index });
        } else if let Some(publication) = v["push"].get("pub") {
            let data = &publication["data"];
            let text = |k: &str| data[k].as_str().unwrap_or("").to_owned();
            events.push(Event::Delivered(Delivery {
                from: text("from"),
                client_msg_id: text("client_msg_id"),
                body: text("body"),
                conversation: v["push"]["channel"].as_str().unwrap_or("").to_owned(),
                seq: None,
            }));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_pushes_and_pings_in_one_frame() {
        let frame = format!(
            "{}\n{}\n{}\n{{}}",
            r#"{"id":18,"publish":{}}"#,
            r#"{"id":20,"error":{"code":111,"message":"too many requests","temporary":true}}"#,
            r#"{"push":{"channel":"personal:#b","pub":{"data":{"from":"a","client_msg_id":"f1","body":"42 xx"},"offset":3}}}"#,
        );
        let events = parse(&frame).unwrap();
        assert_eq!(events[0], Event::Accepted { index: 2 });
        assert_eq!(
            events[1],
            Event::Refused {
                index: Some(4),
                code: "too many requests".into(),
                retry: true
            }
        );
        let Event::Delivered(d) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!((d.from.as_str(), d.number().unwrap()), ("a", 42));
        assert_eq!(events[3], Event::Ping);
    }

    #[test]
    fn setup_replies_are_not_sends() {
        assert!(parse(r#"{"id":2,"subscribe":{}}"#).unwrap().is_empty());
    }

    #[test]
    fn publish_frame_round_trips() {
        let f: Value = serde_json::from_str(&publish("group:g", 0, "a", "g0", "0 x")).unwrap();
        assert_eq!(f["id"], 16);
        assert_eq!(f["publish"]["data"]["client_msg_id"], "g0");
    }
}
