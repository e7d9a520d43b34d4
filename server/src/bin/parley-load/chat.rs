//! Closed-loop 1:1: each sender keeps a window in flight to its receiver.

use crate::probe::Probe;
use crate::target::{Event, Target, body};
use crate::window::send_window;
use crate::{Ctx, merge, prefix, quantiles_ms, record_latencies, usage_fields, usage_text};
use anyhow::bail;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parley_server::client::{Socket, percentiles};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_tungstenite::tungstenite::Message;

pub async fn chat(ctx: &Ctx, pairs: usize, messages: usize, window: usize) -> anyhow::Result<()> {
    let target = &ctx.target;
    let users = target.users(&prefix(), pairs * 2).await?;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let mut sockets = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    let mut cross_node = 0;
    for pair in users.chunks(2) {
        let (sender, receiver) = (&pair[0], &pair[1]);
        let (tx, tx_node) = target.connect(sender).await?;
        let (rx, rx_node) = target.connect(receiver).await?;
        cross_node += usize::from(tx_node != rx_node);
        nodes.extend([tx_node, rx_node]);
        sockets.push((tx, rx, receiver.id.clone(), sender.id.clone()));
    }
    let start = Instant::now();
    let probe = Probe::start(&ctx.server_pid)?;
    let mut tasks = Vec::new();
    for (tx_ws, rx_ws, to, from) in sockets {
        let (histogram, target, bytes) = (histogram.clone(), target.clone(), ctx.body_bytes);
        tasks.push(tokio::spawn(async move {
            let receiving = receive(&target, rx_ws, &from, messages, start, histogram);
            let sending = async {
                let mut tx_ws = tx_ws;
                send_window(
                    &target,
                    &mut tx_ws,
                    messages,
                    window,
                    None,
                    start,
                    |i, t| target.direct(&from, &to, i, &format!("c{i}"), &body(t, bytes)),
                )
                .await
            };
            tokio::try_join!(receiving, sending).map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let usage = probe.finish()?;
    let h = histogram.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let total = (pairs * messages) as u64;
    println!(
        "chat ({}): {pairs} pairs x {messages} msgs (window {window}), {} edge(s), {cross_node} pairs across edges: {total} delivered in {:.2} s = {:.0} msgs/s; send→deliver {}{}",
        target.name(),
        nodes.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        percentiles(&h),
        usage_text(usage, total),
    );
    ctx.record(merge(
        merge(
            json!({"mode": "chat", "pairs": pairs, "messages": messages, "window": window,
                "delivered": total, "msgs_per_sec": total as f64 / elapsed.as_secs_f64()}),
            quantiles_ms(&h),
        ),
        usage_fields(usage, total),
    ))
}

/// Receives `messages` from `from`, recording send → deliver of each.
async fn receive(
    target: &Target,
    mut ws: Socket,
    from: &str,
    messages: usize,
    start: Instant,
    histogram: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<()> {
    let mut latencies = Vec::with_capacity(messages);
    while latencies.len() < messages {
        let Some(frame) = ws.next().await else {
            bail!("receiver socket closed");
        };
        let Message::Text(t) = frame? else { continue };
        for event in target.parse(&t)? {
            match event {
                Event::Delivered(d) if d.from == from => {
                    let now = start.elapsed().as_micros() as u64;
                    latencies.push(now.saturating_sub(d.number()?));
                }
                Event::Ping => ws.send(target.pong()).await?,
                _ => {}
            }
        }
    }
    record_latencies(&histogram, latencies)?;
    Ok(())
}
