//! What every single-role process shares: open the backends, bind the gRPC
//! port, announce the instance in the registry, stop on SIGINT/SIGTERM.
//! The all-in-one binary starts the same role libraries in one process.

use crate::backends::{BackendError, Backends};
use crate::config::{BackendConfig, Liveness};
use crate::discovery::{Discovery, announce};
use crate::push::Pusher;
use crate::registry::ServiceEntry;
use crate::time::now_ms;
use clap::Args;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Flags of a process that runs one role.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub backends: BackendConfig,
    /// This instance's id in the registry; generated when unset.
    #[arg(long, env = "SERVICE_ID", global = true)]
    pub service_id: Option<String>,
    /// Where this instance serves gRPC (port 0: any free port).
    #[arg(long, env = "GRPC_ADDR", global = true, default_value = "127.0.0.1:0")]
    pub grpc_addr: String,
    /// The gRPC address other processes reach this instance at, when it
    /// differs from the bound one (binding 0.0.0.0 in a container:
    /// `chat1:50051`).
    #[arg(long, env = "GRPC_ADVERTISE_ADDR", global = true)]
    pub grpc_advertise_addr: Option<String>,
    /// Seconds an instance stays listed in the registry after its last
    /// heartbeat (heartbeats every third of it).
    #[arg(
        long,
        env = "PARLEY_SERVICE_TTL_SECS",
        global = true,
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub service_ttl_secs: u64,
    /// Seconds a dropped connection's user stays online, waiting for a
    /// reconnect.
    #[arg(
        long,
        env = "PARLEY_OFFLINE_GRACE_SECS",
        global = true,
        default_value_t = 10
    )]
    pub offline_grace_secs: u64,
}

impl NodeArgs {
    pub fn liveness(&self) -> Liveness {
        Liveness {
            offline_grace: Duration::from_secs(self.offline_grace_secs.min(300)),
            service_ttl: Duration::from_secs(self.service_ttl_secs),
            ..Liveness::default()
        }
    }

    /// The gRPC address to register: the advertised one, else the bound one.
    pub fn advertised_grpc(&self, bound: std::net::SocketAddr) -> String {
        self.grpc_advertise_addr
            .clone()
            .unwrap_or_else(|| bound.to_string())
    }

    /// The configured id, or `<kind>-<random>`.
    pub fn id_for(&self, kind: &str) -> String {
        self.service_id
            .clone()
            .unwrap_or_else(|| format!("{kind}-{}", &crate::ids::new_session_id()[..8]))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Backends(#[from] BackendError),
    #[error("cannot bind {addr}: {cause}")]
    Bind { addr: String, cause: std::io::Error },
    #[error("cannot register in the registry: {0}")]
    Register(#[from] crate::ApiError),
}

/// A started single-role process, registered and ready to serve.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub backends: Backends,
    pub discovery: Discovery,
    pub pusher: Pusher,
    pub liveness: Liveness,
    pub grpc: TcpListener,
    pub shutdown: CancellationToken,
    /// Ends (after deregistering) once `shutdown` is cancelled.
    pub announcer: JoinHandle<()>,
}

impl Node {
    /// Opens the backends, binds gRPC and registers as `kind`.
    /// `http_addr` is advertised for roles that also serve HTTP (edges).
    pub async fn start(
        kind: &str,
        args: &NodeArgs,
        http_addr: Option<String>,
    ) -> Result<Self, NodeError> {
        let backends = Backends::open(&args.backends).await?;
        if args.backends.redis_url.is_none() {
            tracing::warn!(
                "REDIS_URL is unset: the embedded registry is private to this process, so other processes cannot find this {kind}; use `parley` (all-in-one) or a shared registry"
            );
        }
        let grpc = TcpListener::bind(&args.grpc_addr)
            .await
            .map_err(|cause| NodeError::Bind {
                addr: args.grpc_addr.clone(),
                cause,
            })?;
        let grpc_addr = grpc.local_addr().map_err(|cause| NodeError::Bind {
            addr: args.grpc_addr.clone(),
            cause,
        })?;
        let id = args.id_for(kind);
        let shutdown = CancellationToken::new();
        let liveness = args.liveness();
        let entry = ServiceEntry {
            kind: kind.to_owned(),
            id: id.clone(),
            grpc_addr: args.advertised_grpc(grpc_addr),
            http_addr,
            started_at_ms: now_ms(),
            load: 0,
        };
        let announcer = announce(
            backends.registry.clone(),
            backends.restarts.clone(),
            entry,
            liveness,
            crate::grpc::in_flight,
            shutdown.clone(),
        )
        .await?;
        tracing::info!(%kind, %id, grpc = %grpc_addr, "started");
        // On stdout whatever the log level, like the edge's "listening"
        // line: scripts/cluster waits for it.
        println!("Parley {kind} {id} registered, gRPC on {grpc_addr}");
        let discovery = Discovery::new(backends.registry.clone());
        Ok(Self {
            id,
            pusher: Pusher::new(discovery.clone()),
            discovery,
            backends,
            liveness,
            grpc,
            shutdown,
            announcer,
        })
    }

    /// Cancels the shutdown token on SIGINT or SIGTERM.
    pub fn stop_on_signal(&self) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        });
    }
}

/// Why a single-role process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Serve(#[from] crate::grpc::ServeError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
