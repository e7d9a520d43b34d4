//! A client that writes on a fixed schedule and drops whatever comes back
//! (acks and refusals alike), as the fault suite's probe senders and
//! slow-reader senders do.

use futures::{SinkExt, StreamExt};
use parley_server::client::Socket;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Why [`write_every`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// `stop` turned; the socket was closed cleanly.
    Stopped,
    /// The socket closed or failed.
    Closed,
}

/// Writes `frame()` to `ws` every `every` (the first at once) until `stop`
/// turns or the socket closes, reading and dropping what comes back.
pub async fn write_every(
    ws: &mut Socket,
    every: Duration,
    stop: &mut watch::Receiver<bool>,
    mut frame: impl FnMut() -> Value,
) -> Ended {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if ws.send(Message::Text(frame().to_string().into())).await.is_err() {
                    return Ended::Closed;
                }
            }
            frame = ws.next() => if !matches!(frame, Some(Ok(_))) { return Ended::Closed },
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return Ended::Stopped;
            }
        }
    }
}
