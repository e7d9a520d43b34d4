//! The server under load, Parley or Centrifugo, behind one small interface,
//! so that every scenario runs the same generator, the same schedule and the
//! same measurements against either: users, connecting, the frames of a 1:1
//! or group send, and what the server's frames mean.

use crate::{centrifugo, parley_wire};
use futures::SinkExt;
use parley_server::client::{Socket, User};
use tokio_tungstenite::tungstenite::Message;

/// Which server, and how to reach it.
#[derive(Debug, Clone)]
pub enum Target {
    /// Parley's WebSocket protocol at `url` (http://host:port).
    Parley { url: String },
    /// Centrifugo's JSON protocol at `url`, with connection tokens signed by
    /// the HMAC `secret` it was configured with.
    Centrifugo { url: String, secret: String },
}

/// What one frame from the server means to the generator.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Send number `index` was accepted.
    Accepted { index: usize },
    /// Send number `index` (when known) was refused with `code`; `retry`
    /// when the server says trying again later may succeed.
    Refused {
        index: Option<usize>,
        code: String,
        retry: bool,
    },
    /// A message arrived.
    Delivered(Delivery),
    /// The server asked for a pong (Centrifugo's application-level ping).
    Ping,
}

/// A message as a receiver sees it, on either server.
#[derive(Debug, PartialEq)]
pub struct Delivery {
    /// The sender's user id.
    pub from: String,
    /// The sender's id for the message (deduplication key).
    pub client_msg_id: String,
    /// The body as sent: a number (send time or index) padded to the body size.
    pub body: String,
    /// The conversation (Parley) or channel (Centrifugo).
    pub conversation: String,
    /// Parley's per-conversation seq, for `mark_read`; absent on Centrifugo.
    pub seq: Option<u64>,
}

impl Delivery {
    /// The number a body starts with (see [`body`]).
    pub fn number(&self) -> anyhow::Result<u64> {
        Ok(self.body.split(' ').next().unwrap_or("").parse()?)
    }
}

/// A body of `bytes` bytes (at least the number's digits) that starts with
/// `number`, so both servers carry the same payload size.
pub fn body(number: u64, bytes: usize) -> String {
    let mut b = format!("{number} ");
    let pad = bytes.saturating_sub(b.len());
    b.extend(std::iter::repeat_n('x', pad));
    b
}

impl Target {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Parley { .. } => "parley",
            Target::Centrifugo { .. } => "centrifugo",
        }
    }

    /// Parley's URL; an error for Centrifugo (it has no accounts).
    pub fn parley_url(&self) -> anyhow::Result<&str> {
        match self {
            Target::Parley { url } => Ok(url),
            Target::Centrifugo { .. } => anyhow::bail!("this mode needs --target parley"),
        }
    }

    /// `count` users named `<prefix>0…`: registered on Parley (its real
    /// sign-up, password hash included), tokens minted for Centrifugo (it
    /// has no accounts; the application would mint them).
    pub async fn users(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<User>> {
        match self {
            Target::Parley { url } => {
                parley_server::client::register_many(url, prefix, count).await
            }
            Target::Centrifugo { secret, .. } => (0..count)
                .map(|i| {
                    let id = format!("{prefix}{i}");
                    let token = centrifugo::token(secret, &id)?;
                    Ok(User { id, token })
                })
                .collect(),
        }
    }

    /// Connects `user`, ready to receive its 1:1 messages; answers the
    /// socket and the node it landed on (Parley behind nginx; else empty).
    pub async fn connect(&self, user: &User) -> anyhow::Result<(Socket, String)> {
        match self {
            Target::Parley { url } => parley_server::client::join_at(url, &user.token).await,
            Target::Centrifugo { url, .. } => Ok((
                centrifugo::connect(url, &user.token, &user.id).await?,
                String::new(),
            )),
        }
    }

    /// The frame of 1:1 send number `index` to user `to`.
    pub fn direct(
        &self,
        from: &str,
        to: &str,
        index: usize,
        client_msg_id: &str,
        body: &str,
    ) -> String {
        match self {
            Target::Parley { .. } => parley_wire::direct(to, index, client_msg_id, body),
            Target::Centrifugo { .. } => {
                centrifugo::publish(&centrifugo::personal(to), index, from, client_msg_id, body)
            }
        }
    }

    /// Readies a member's socket for group `name` before the group is
    /// made: a Centrifugo member subscribes to its channel; a Parley member
    /// is added by the creator and needs nothing.
    pub async fn enter_group(&self, ws: &mut Socket, name: &str) -> anyhow::Result<()> {
        match self {
            Target::Parley { .. } => Ok(()),
            Target::Centrifugo { .. } => {
                let channel = centrifugo::group_channel(name);
                centrifugo::subscribe(ws, &channel, centrifugo::GROUP_SUB_ID).await
            }
        }
    }

    /// Makes group `name` of `creator` (connected on `ws`) and `others`;
    /// answers its id (the conversation on Parley, the channel on
    /// Centrifugo, which the creator subscribes to as well, so both servers
    /// push every message to every member).
    pub async fn create_group(
        &self,
        ws: &mut Socket,
        others: &[User],
        name: &str,
    ) -> anyhow::Result<String> {
        match self {
            Target::Parley { .. } => {
                let others: Vec<&str> = others.iter().map(|u| u.id.as_str()).collect();
                parley_wire::create_group(ws, name, &others).await
            }
            Target::Centrifugo { .. } => {
                self.enter_group(ws, name).await?;
                Ok(centrifugo::group_channel(name))
            }
        }
    }

    /// The frame of group send number `index` to `group`.
    pub fn to_group(
        &self,
        from: &str,
        group: &str,
        index: usize,
        client_msg_id: &str,
        body: &str,
    ) -> String {
        match self {
            Target::Parley { .. } => parley_wire::to_group(group, index, client_msg_id, body),
            Target::Centrifugo { .. } => {
                centrifugo::publish(group, index, from, client_msg_id, body)
            }
        }
    }

    /// What a text frame from the server means (Centrifugo may put several
    /// replies in one frame).
    pub fn parse(&self, text: &str) -> anyhow::Result<Vec<Event>> {
        match self {
            Target::Parley { .. } => parley_wire::parse(text),
            Target::Centrifugo { .. } => centrifugo::parse(text),
        }
    }

    /// The answer to [`Event::Ping`].
    pub fn pong(&self) -> Message {
        Message::Text(centrifugo::PONG.into())
    }
}

/// Reads `ws` until it closes, answering Centrifugo's pings (tungstenite
/// answers WebSocket pings, which Parley's probes are, as it reads): what an
/// idle client does.
pub async fn hold(target: Target, mut ws: Socket) -> anyhow::Result<()> {
    use futures::StreamExt;
    while let Some(frame) = ws.next().await {
        if let Message::Text(t) = frame?
            && target.parse(&t)?.contains(&Event::Ping)
        {
            ws.send(target.pong()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_size_and_the_number() {
        let b = body(1234, 100);
        assert_eq!(b.len(), 100);
        let d = Delivery {
            from: String::new(),
            client_msg_id: String::new(),
            body: b,
            conversation: String::new(),
            seq: None,
        };
        assert_eq!(d.number().unwrap(), 1234);
        assert!(body(123_456, 3).starts_with("123456"));
    }
}
