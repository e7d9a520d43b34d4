//! The edge: terminates browser WebSockets and REST calls, forwards each
//! command over gRPC to the role services, and writes what they push back
//! (`EdgeService.Deliver`) to the right sockets. It keeps no state that
//! outlives a connection, so edges can come and go behind nginx.
//!
//! - [`state`]: what handlers share (the local session table, clients).
//! - [`sessions`]: the sockets this edge holds, by session id.
//! - [`ws`]: `/ws`, the client protocol, one task per connection.
//! - [`rest`]: `/api/*`, `/health`, `/ready`; [`http_error`] maps errors.
//! - [`deliver`]: the gRPC `EdgeService` the services push through.
//! - [`web`]: the embedded browser client and its security headers;
//!   [`origin`]: which pages may open `/ws`; [`telemetry`]: `/metrics`.

pub mod deliver;
pub mod http_error;
pub mod origin;
pub mod rest;
pub mod sessions;
pub mod state;
pub mod telemetry;
pub mod web;
pub mod ws;

pub use state::{EdgeConfig, EdgeState};

use parley::backends::RegistryOnly;
use parley::discovery::{announce, kind};
use parley::registry::ServiceEntry;
use parley::time::now_ms;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot register the edge: {0}")]
    Register(#[from] parley::ApiError),
    #[error("cannot read the listener address: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Grpc(#[from] parley::grpc::ServeError),
}

/// Serves browsers on `http` and `EdgeService` on `grpc` until `shutdown`;
/// then tells every client to reconnect elsewhere (close 4002) and returns.
pub async fn serve(
    http: TcpListener,
    grpc: TcpListener,
    state: EdgeState,
    backends: RegistryOnly,
    shutdown: CancellationToken,
) -> Result<(), EdgeError> {
    // Install the recorder before the first metric is recorded.
    telemetry::prometheus();
    let entry = ServiceEntry {
        kind: kind::EDGE.into(),
        id: state.config.node_id.clone(),
        grpc_addr: match &state.config.advertise_grpc {
            Some(addr) => addr.clone(),
            None => grpc.local_addr()?.to_string(),
        },
        http_addr: Some(match &state.config.advertise_http {
            Some(addr) => addr.clone(),
            None => http.local_addr()?.to_string(),
        }),
        started_at_ms: now_ms(),
        load: 0,
    };
    let sessions = state.sessions.clone();
    let announcer = announce(
        backends.registry.clone(),
        backends.restarts.clone(),
        entry,
        state.config.liveness,
        move || sessions.len() as u64,
        shutdown.clone(),
    )
    .await?;
    let heartbeat = tokio::spawn(ws::heartbeat::run(
        state.clone(),
        backends.restarts.clone(),
        shutdown.clone(),
    ));
    let routes = tonic::service::Routes::new(deliver::server(state.sessions.clone()));
    let grpc_server = tokio::spawn(parley::grpc::serve(
        grpc,
        routes,
        deliver::NAMES,
        backends,
        shutdown.clone(),
    ));
    let app = rest::router(state);
    // Frames are small and latency-bound: never let Nagle hold one back.
    let http = axum::serve::ListenerExt::tap_io(http, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let http_result = axum::serve(http, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    let _ = heartbeat.await;
    let _ = announcer.await;
    if let Ok(Err(e)) = grpc_server.await {
        return Err(e.into());
    }
    Ok(http_result?)
}

/// Where an edge serves browsers.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// HTTP port of the edge (browsers, REST, /ws).
    #[arg(long, env = "PORT", default_value_t = 8080, global = true)]
    pub port: u16,
    /// Address to listen on; 0.0.0.0 to accept other machines.
    #[arg(long, env = "HOST", default_value = "127.0.0.1", global = true)]
    pub host: String,
    /// Frames per second one WebSocket may send (bursts of twice that).
    #[arg(long, env = "PARLEY_WS_FRAMES_PER_SEC", global = true,
          default_value_t = state::DEFAULT_FRAMES_PER_SECOND,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_frames_per_sec: u32,
    /// Milliseconds a send, edit, delete or reaction may wait at the edge
    /// behind its connection's earlier frames before it is answered
    /// `unavailable` (resend with the same `client_msg_id`): under overload
    /// the edge sheds instead of queueing.
    #[arg(long, env = "PARLEY_MAX_FRAME_WAIT_MS", global = true,
          default_value_t = state::DEFAULT_MAX_FRAME_WAIT_MS)]
    pub max_frame_wait_ms: u64,
    /// The HTTP address registered for this edge when it differs from the
    /// bound one (in a container: `edge1:3001`).
    #[arg(long, env = "HTTP_ADVERTISE_ADDR", global = true)]
    pub http_advertise_addr: Option<String>,
    /// Origins (`https://chat.example.com`, comma-separated; `*` for any)
    /// whose pages may open `/ws` besides the edge's own (an `Origin` whose
    /// host:port is the request's `Host`). Handshakes without `Origin`
    /// (non-browser clients) are always allowed.
    #[arg(
        long,
        env = "PARLEY_ALLOWED_ORIGINS",
        global = true,
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
}

/// Runs an edge as its own process until SIGINT/SIGTERM.
pub async fn run_standalone(
    node: &parley::node::NodeArgs,
    http: &HttpArgs,
) -> Result<(), parley::node::RunError> {
    use parley::node::{NodeError, RunError};
    // The edge keeps only sessions: it opens (and its health follows) the
    // registry alone, so it serves whatever Kafka and the store do.
    let backends = RegistryOnly::open(&node.backends)
        .await
        .map_err(NodeError::from)?;
    let bind = |addr: String, cause| NodeError::Bind { addr, cause };
    let http_listener = TcpListener::bind((http.host.as_str(), http.port))
        .await
        .map_err(|e| bind(format!("{}:{}", http.host, http.port), e))?;
    let grpc = TcpListener::bind(&node.grpc_addr)
        .await
        .map_err(|e| bind(node.grpc_addr.clone(), e))?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            parley::node::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let config = EdgeConfig {
        liveness: node.liveness(),
        frames_per_second: http.ws_frames_per_sec,
        max_frame_wait: std::time::Duration::from_millis(http.max_frame_wait_ms),
        advertise_grpc: node.grpc_advertise_addr.clone(),
        advertise_http: http.http_advertise_addr.clone(),
        allowed_origins: origin::AllowedOrigins::new(&http.allowed_origins),
        ..EdgeConfig::new(node.id_for(kind::EDGE))
    };
    let discovery = parley::discovery::Discovery::new(backends.registry.clone());
    let state = EdgeState::new(config, discovery, shutdown.clone());
    if let Ok(addr) = http_listener.local_addr() {
        println!("Parley edge listening on http://{addr}");
    }
    serve(http_listener, grpc, state, backends, shutdown)
        .await
        .map_err(|e| RunError::Other(e.to_string()))
}
