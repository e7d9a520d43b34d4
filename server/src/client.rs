//! A small client of a running Parley over its public interfaces (REST and
//! the WebSocket protocol), shared by the load generator (`parley-load`)
//! and the torture test (`parley-torture`): registration, joining, latency
//! percentiles and a process's resident memory.

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

/// A registered user and its token.
#[derive(Debug, Clone)]
pub struct User {
    /// The user id.
    pub id: String,
    /// A JWT for `join` and REST.
    pub token: String,
}

/// A client WebSocket.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Registers `name` (email `<name>@load.test`) and answers its id and token.
pub async fn register(http: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<User> {
    let resp = http
        .post(format!("{url}/api/auth/register"))
        .json(&json!({"username": name, "email": format!("{name}@load.test"), "password": "load-password-1"}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("register {name}: {}", resp.status());
    }
    let body: Value = resp.json().await?;
    Ok(User {
        id: body["user"]["id"]
            .as_str()
            .context("no user id")?
            .to_owned(),
        token: body["token"].as_str().context("no token")?.to_owned(),
    })
}

/// Registers `<prefix>0` … `<prefix>{count-1}`, a few at a time.
pub async fn register_many(url: &str, prefix: &str, count: usize) -> anyhow::Result<Vec<User>> {
    let http = reqwest::Client::new();
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    // Registration hashes a password (argon2): a few at a time is plenty.
    futures::stream::iter(names)
        .map(|n| {
            let http = http.clone();
            async move { register(&http, url, &n).await }
        })
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Connects to `/ws` of `url` (http://…) and joins; answers the socket and
/// the `connected` frame.
pub async fn join_with(url: &str, token: &str) -> anyhow::Result<(Socket, Value)> {
    let ws_url = format!("{}/ws", url.replacen("http", "ws", 1));
    let (mut ws, _) = connect_async_with_config(ws_url, None, true).await?;
    ws.send(Message::Text(
        json!({"type": "join", "token": token}).to_string().into(),
    ))
    .await?;
    while let Some(frame) = ws.next().await {
        if let Message::Text(t) = frame? {
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "connected" {
                return Ok((ws, v));
            }
            if v["type"] == "error" {
                bail!("join refused: {v}");
            }
        }
    }
    bail!("closed before connected")
}

/// Connects and joins; answers the socket and the node (edge) it landed on.
pub async fn join_at(url: &str, token: &str) -> anyhow::Result<(Socket, String)> {
    let (ws, connected) = join_with(url, token).await?;
    let node = connected["node"].as_str().unwrap_or_default().to_owned();
    Ok((ws, node))
}

/// Connects and joins.
pub async fn join(url: &str, token: &str) -> anyhow::Result<Socket> {
    Ok(join_at(url, token).await?.0)
}

/// The resident memory of process `pid`, in KiB (from /proc).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// "p50 …, p99 …, max …" of a histogram of microseconds, in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

/// Samples the RSS of the process whose pid is in `pid` (0: none yet; it
/// may change as a server is restarted) every 100 ms, keeping the peak in
/// `peak` (KiB). Runs until dropped.
pub async fn sample_peak_rss(
    pid: std::sync::Arc<std::sync::atomic::AtomicU64>,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        let p = pid.load(Ordering::Relaxed);
        if let Ok(p) = u32::try_from(p)
            && p != 0
            && let Ok(kib) = rss_kib(p)
        {
            peak.fetch_max(kib, Ordering::Relaxed);
        }
    }
}
