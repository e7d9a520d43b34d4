//! Sending with a window of unacknowledged messages in flight, or at a fixed
//! pace, on either target.

use crate::target::{Event, Target};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use parley_server::client::Socket;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long a client waits before resending a send refused as busy, as a
/// client backs off.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Sends `messages` frames made by `frame(index, µs since start)`, keeping
/// `window` unacknowledged, and no sooner than `pace` apart when given (the
/// n-th at `pace × n` after the first); answers when each was first sent (µs
/// since `start`). A send refused as busy (`unavailable`, `rate_limited`, or
/// a temporary Centrifugo error) is resent after a short pause, the same
/// frame with the same client id, as docs/protocol.md tells clients to;
/// latency still counts from the first attempt.
pub async fn send_window(
    target: &Target,
    ws: &mut Socket,
    messages: usize,
    window: usize,
    pace: Option<Duration>,
    start: Instant,
    frame: impl Fn(usize, u64) -> String,
) -> anyhow::Result<Vec<u64>> {
    let mut sent_at = Vec::with_capacity(messages);
    let mut acked = 0usize;
    let mut resent = 0usize;
    let began = tokio::time::Instant::now();
    while acked < messages {
        while sent_at.len() < messages && sent_at.len() - acked < window.max(1) {
            if let Some(pace) = pace {
                let due = began + pace * u32::try_from(sent_at.len())?;
                // Answers that arrive meanwhile wait in the socket.
                tokio::time::sleep_until(due).await;
            }
            let micros = start.elapsed().as_micros() as u64;
            let text = frame(sent_at.len(), micros);
            sent_at.push(micros);
            ws.send(Message::Text(text.into())).await?;
        }
        let Some(reply) = ws.next().await else {
            bail!("sender socket closed");
        };
        let Message::Text(t) = reply? else { continue };
        for event in target.parse(&t)? {
            match event {
                Event::Accepted { .. } => acked += 1,
                Event::Refused {
                    index: Some(i),
                    retry: true,
                    ..
                } => {
                    let first = *sent_at.get(i).context("answer to a send never made")?;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    ws.send(Message::Text(frame(i, first).into())).await?;
                    resent += 1;
                }
                Event::Refused { code, .. } => bail!("send refused: {code}"),
                Event::Ping => ws.send(target.pong()).await?,
                Event::Delivered(_) => {}
            }
        }
    }
    if resent > 0 {
        println!("  ({resent} sends refused as busy or rate limited and resent)");
    }
    Ok(sent_at)
}
