//! The all-in-one Parley: every role in one process, calling each other
//! through the same discovery, generated clients and gRPC services as
//! across machines (one code path), in process rather than over loopback
//! HTTP/2 ([`parley::grpc::local`]; each role still listens on a loopback
//! port, for grpcurl and for other nodes), on the embedded backends unless
//! real ones are configured.
//!
//! [`App::start`] binds and starts everything and returns once the chat is
//! being served, so tests bind port 0, read [`App::http_addr`] and go.
//! (After a crash chat-svc answers once its sequencer has replayed the
//! log, see `Store::rolls_back_on_crash`; calls wait for it meanwhile.)

pub mod cli;
pub mod client;

use parley::backends::{BackendError, Backends};
use parley::config::{BackendConfig, Liveness};
use parley::discovery::{Discovery, announce, kind};
use parley::push::Pusher;
use parley::registry::ServiceEntry;
use parley::time::now_ms;
use parley_auth::{Accounts, AuthConfig};
use parley_chat::Chat;
use parley_edge::{EdgeConfig, EdgeState};
use parley_presence::Presence;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything the all-in-one needs, already resolved.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub backends: BackendConfig,
    pub auth: AuthConfig,
    /// Names this node in the registry and in `connected.node`.
    pub node_id: String,
    pub liveness: Liveness,
    pub join_timeout: Duration,
    /// Frames per second one WebSocket may send.
    pub ws_frames_per_sec: u32,
    /// Longest a write command may wait at the edge before `unavailable`.
    pub max_frame_wait: Duration,
    /// Messages one user may send per window (all sessions, all edges).
    pub send_limit: parley_chat::chat::SendLimit,
    /// Where offline members' notifications are POSTed, if anywhere.
    pub notify: Option<parley_chat::notifier::Webhook>,
    /// Most members a group may have.
    pub group_max_members: usize,
    /// Most messages waiting for the sequencers before sends are refused.
    pub max_backlog: u64,
    /// Most live sessions one user may hold at once.
    pub max_sessions_per_user: usize,
    /// Pages of other origins allowed to open `/ws`.
    pub allowed_origins: parley_edge::origin::AllowedOrigins,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Backends(#[from] BackendError),
    #[error("cannot bind an internal gRPC port: {0}")]
    Bind(#[from] std::io::Error),
    #[error("cannot register a service: {0}")]
    Register(#[from] parley::ApiError),
}

/// A running all-in-one node.
#[derive(Debug)]
pub struct App {
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

async fn loopback() -> std::io::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").await
}

fn log_exit<E: std::fmt::Display>(role: &'static str, result: Result<(), E>) {
    if let Err(e) = result {
        tracing::error!(role, error = %e, "role stopped with an error");
    }
}

impl App {
    /// Opens the backends, starts every role and serves browsers on `http`.
    pub async fn start(config: AppConfig, http: TcpListener) -> Result<Self, StartError> {
        let backends = Backends::open(&config.backends).await?;
        let shutdown = CancellationToken::new();
        let discovery =
            Discovery::new(backends.registry.clone()).preferring(format!("{}-", config.node_id));
        let pusher = Pusher::new(discovery.clone());
        let mut tasks = Vec::new();

        let (auth_l, chat_l, presence_l) =
            (loopback().await?, loopback().await?, loopback().await?);
        for (k, listener) in [
            (kind::AUTH, &auth_l),
            (kind::CHAT, &chat_l),
            (kind::PRESENCE, &presence_l),
        ] {
            let entry = ServiceEntry {
                kind: k.into(),
                id: format!("{}-{k}", config.node_id),
                grpc_addr: listener.local_addr()?.to_string(),
                http_addr: None,
                started_at_ms: now_ms(),
                load: 0,
            };
            tasks.push(
                announce(
                    backends.registry.clone(),
                    backends.restarts.clone(),
                    entry,
                    config.liveness,
                    parley::grpc::in_flight,
                    shutdown.clone(),
                )
                .await?,
            );
        }

        let accounts = Accounts::new(backends.store.clone(), &config.auth);
        tasks.push(tokio::spawn({
            let (b, s) = (backends.clone(), shutdown.clone());
            async move { log_exit("auth", parley_auth::serve(auth_l, accounts, b, s).await) }
        }));
        let chat = Chat::new(backends.clone(), pusher.clone(), config.send_limit)
            .with_webhook(config.notify.clone())
            .with_group_limit(config.group_max_members)
            .with_backlog_limit(config.max_backlog);
        tasks.push(tokio::spawn({
            let (b, s) = (backends.clone(), shutdown.clone());
            async move { log_exit("chat", parley_chat::serve(chat_l, chat, b, s).await) }
        }));
        let presence = Presence::new(backends.clone(), pusher, config.liveness, shutdown.clone())
            .with_max_sessions(config.max_sessions_per_user);
        tasks.push(tokio::spawn({
            let (b, s) = (backends.clone(), shutdown.clone());
            async move {
                log_exit(
                    "presence",
                    parley_presence::serve(presence_l, presence, b, s).await,
                )
            }
        }));

        let http_addr = http.local_addr()?;
        let edge_grpc = loopback().await?;
        let edge_config = EdgeConfig {
            node_id: config.node_id.clone(),
            liveness: config.liveness,
            join_timeout: config.join_timeout,
            frames_per_second: config.ws_frames_per_sec,
            max_frame_wait: config.max_frame_wait,
            advertise_grpc: None,
            advertise_http: None,
            allowed_origins: config.allowed_origins.clone(),
        };
        let state = EdgeState::new(edge_config, discovery, shutdown.clone());
        tasks.push(tokio::spawn({
            let s = shutdown.clone();
            async move {
                log_exit(
                    "edge",
                    parley_edge::serve(http, edge_grpc, state, backends.registry_only(), s).await,
                )
            }
        }));
        Ok(Self {
            http_addr,
            shutdown,
            tasks,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Cancelling it stops the node, as [`App::stop`] does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token is cancelled and every role has stopped.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops every role: clients are told to reconnect (close 4002), the
    /// instances deregister, consumers stop between batches.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}
