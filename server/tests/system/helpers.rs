//! `spawn_app` and a small WebSocket client that awaits frames by type or
//! by `ref` (never by sleeping).

use futures::{SinkExt, StreamExt};
use parley::config::{BackendConfig, Liveness};
use parley_auth::AuthConfig;
use parley_server::{App, AppConfig};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// The JWT secret of test apps, so tests can forge and expire tokens.
pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789abcdef";
/// A failsafe so a broken server fails the test instead of hanging it; no
/// test waits for it to pass.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct TestApp {
    /// What the node runs on (prefixes included), for checks with real clients.
    pub backends: BackendConfig,
    /// Kept so the in-process node lives as long as the test.
    pub _app: Option<App>,
    pub addr: std::net::SocketAddr,
    pub http: reqwest::Client,
    _dir: Option<TempDir>,
}

/// The backends a test node uses: embedded, or — when `PARLEY_TEST_REAL` is
/// set (scripts/test does, after `scripts/infra up`) — the real Kafka, Redis
/// and MongoDB named by `KAFKA_BROKERS`, `REDIS_URL`, `MONGODB_URL`, with a
/// random topic prefix, key prefix and database per test.
pub fn backend_config(dir: &std::path::Path) -> BackendConfig {
    let mut config = BackendConfig::embedded(dir);
    if std::env::var_os("PARLEY_TEST_REAL").is_some() {
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("PARLEY_TEST_REAL is set but {name} is not"))
        };
        let run = parley::ids::new_session_id()[..12].to_owned();
        config.kafka_brokers = Some(var("KAFKA_BROKERS"));
        config.redis_url = Some(var("REDIS_URL"));
        config.mongodb_url = Some(var("MONGODB_URL"));
        config.partitions = 4;
        config.topic_prefix = format!("t{run}.");
        config.redis_prefix = format!("t{run}");
        config.mongodb_database = Some(format!("t{run}"));
    }
    config
}

/// The tests' HTTP client: a request that gets no answer fails the test
/// after [`PATIENCE`] instead of hanging the suite.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("an HTTP client")
}

/// Whether the real engines are configured (`PARLEY_TEST_REAL`, set by
/// scripts/test); a test that needs them and finds them unset says it is
/// skipped.
pub fn real_engines(what: &str) -> bool {
    let real = std::env::var_os("PARLEY_TEST_REAL").is_some();
    if !real {
        eprintln!("skipped: {what} needs the real engines (PARLEY_TEST_REAL unset)");
    }
    real
}

pub fn test_config(dir: &std::path::Path) -> AppConfig {
    AppConfig {
        backends: backend_config(dir),
        auth: AuthConfig {
            jwt_secret: SecretString::from(SECRET.to_owned()),
            jwt_expires_in: Duration::from_secs(3600),
        },
        node_id: format!("test-{}", &parley::ids::new_session_id()[..6]),
        liveness: Liveness {
            offline_grace: Duration::from_millis(300),
            ..Liveness::default()
        },
        join_timeout: Duration::from_millis(500),
        ws_frames_per_sec: parley_edge::state::DEFAULT_FRAMES_PER_SECOND,
        // Tests of other things never shed: the suite runs many apps at once
        // on a few cores, and a pipelined burst could wait past the default.
        max_frame_wait: Duration::from_secs(10),
        send_limit: parley_chat::chat::SendLimit::default(),
        notify: None,
        group_max_members: parley_chat::chat::DEFAULT_MAX_MEMBERS,
        max_backlog: parley_chat::chat::DEFAULT_MAX_BACKLOG,
        max_sessions_per_user: parley_presence::presence::DEFAULT_MAX_SESSIONS_PER_USER,
        allowed_origins: parley_edge::origin::AllowedOrigins::default(),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with the configuration adjusted first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut AppConfig)) -> TestApp {
    if std::env::var_os("RUST_LOG").is_some() {
        parley::telemetry::init();
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    let backends = config.backends.clone();
    let app = tokio::time::timeout(PATIENCE * 4, App::start(config, listener))
        .await
        .expect("the node started in time")
        .unwrap();
    TestApp {
        backends,
        addr: app.http_addr(),
        _app: Some(app),
        http: http_client(),
        _dir: Some(dir),
    }
}

/// A registered user with a token.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub token: String,
}

impl TestApp {
    /// A client of a server started elsewhere (another process).
    pub fn at(addr: std::net::SocketAddr) -> Self {
        Self {
            backends: BackendConfig::embedded("."),
            _app: None,
            addr,
            http: http_client(),
            _dir: None,
        }
    }

    /// The `messages` collection of the Mongo database this node stores
    /// into (real engines only), to count what landed.
    pub async fn stored_messages(&self) -> mongodb::Collection<mongodb::bson::Document> {
        mongodb::Client::with_uri_str(self.backends.mongodb_url.as_deref().unwrap())
            .await
            .unwrap()
            .database(self.backends.mongodb_database.as_deref().unwrap())
            .collection("messages")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn register(&self, username: &str) -> TestUser {
        let (status, body) = self
            .post(
                "/api/auth/register",
                &json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": "password123",
                    "displayName": username.to_uppercase(),
                }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        TestUser {
            id: body["user"]["id"].as_str().unwrap().to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn raw_ws(&self) -> Ws {
        let (stream, _) = connect_async(format!("ws://{}/ws", self.addr))
            .await
            .unwrap();
        Ws {
            stream,
            pending: VecDeque::new(),
        }
    }

    /// Connects and joins; answers the client after `connected`.
    pub async fn connect(&self, user: &TestUser) -> Ws {
        let mut ws = self.raw_ws().await;
        ws.send(json!({"type": "join", "token": user.token})).await;
        let connected = ws.expect("connected").await;
        assert_eq!(connected["user"]["id"], user.id.as_str());
        ws
    }
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while waiting for another one.
    pending: VecDeque<Value>,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16, String),
    NoFrame,
}

impl Ws {
    pub async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// Queues every frame, then flushes them together.
    pub async fn send_batch(&mut self, texts: Vec<String>) {
        for t in texts {
            self.stream.feed(Message::Text(t.into())).await.unwrap();
        }
        self.stream.flush().await.unwrap();
    }

    pub async fn send_text(&mut self, text: String) {
        self.stream.send(Message::Text(text.into())).await.unwrap();
    }

    async fn read(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("no frame from the server in time");
            match next {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame matching `pred` within `wait`, or `None`; frames that
    /// do not match are kept for later calls.
    pub async fn next_where_within(
        &mut self,
        wait: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if pred(&v) {
                        return Some(v);
                    }
                    self.pending.push_back(v);
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    }

    /// The next frame of this type; others are kept for later calls.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.expect_where(|v| v["type"] == kind).await
    }

    pub async fn expect_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let v = self.read().await.expect("connection closed while waiting");
            if pred(&v) {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Sends a frame with `ref` and answers the `ack` or `error` for it.
    pub async fn request(&mut self, mut frame: Value, reference: &str) -> Value {
        frame["ref"] = json!(reference);
        self.send(frame).await;
        self.expect_where(|v| v["ref"] == reference && (v["type"] == "ack" || v["type"] == "error"))
            .await
    }

    /// Sends a message and answers the ack's `message`.
    pub async fn send_message(&mut self, to: &str, body: &str) -> Value {
        let cmid = parley::ids::new_session_id();
        let reply = self
            .request(
                json!({"type": "send_message", "to": to, "client_msg_id": cmid, "body": body}),
                &format!("send-{cmid}"),
            )
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
        reply["message"].clone()
    }

    /// Waits for the server to close; answers the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("server did not close in time");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Closed::Code(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::NoFrame,
                Some(Ok(Message::Text(t))) => {
                    self.pending.push_back(serde_json::from_str(&t).unwrap())
                }
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn close(mut self) {
        self.stream.close(None).await.unwrap();
        // Drain until the server's close reply, so the close is complete.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.stream.next()).await {}
    }

    /// Frames already received and not yet consumed.
    pub fn pending(&self) -> &VecDeque<Value> {
        &self.pending
    }
}

/// Sends a frame with a fresh `ref`; answers the `ack` or `error`.
pub async fn ask(ws: &mut Ws, frame: Value) -> Value {
    let reference = format!("r-{}", &parley::ids::new_session_id()[..8]);
    ws.request(frame, &reference).await
}

/// Like [`ask`], failing unless the answer is the `ack`.
pub async fn acked(ws: &mut Ws, frame: Value) -> Value {
    let reply = ask(ws, frame).await;
    assert_eq!(reply["type"], "ack", "{reply}");
    reply
}

/// Sends into a conversation by id; answers the ack's `message`.
pub async fn post(ws: &mut Ws, conversation: &str, body: &str) -> Value {
    let cmid = parley::ids::new_session_id();
    acked(
        ws,
        json!({"type": "send_message", "conversation_id": conversation, "client_msg_id": cmid, "body": body}),
    )
    .await["message"]
        .clone()
}

/// The code of an `error` reply (failing when it is not one).
pub fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "{reply}");
    reply["code"].as_str().unwrap()
}

/// Asserts that a refused send is one the protocol says to resend with the
/// same `client_msg_id`: `unavailable` (a backend down, the server busy) or
/// `rate_limited` (the user's send rate; a client paces its resends).
pub fn assert_retryable(reply: &Value) {
    let code = error_code(reply);
    assert!(
        code == "unavailable" || code == "rate_limited",
        "refused otherwise: {reply}"
    );
}
