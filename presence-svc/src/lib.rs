//! presence-svc: who is online.
//!
//! - [`presence`]: sessions open and close, edges heartbeat, users set a
//!   status; each change of what others see becomes a `user-presence` event.
//! - [`fanout`]: the `user-presence` consumer that pushes each change to the
//!   users who share a conversation with that user, and nobody else.
//! - the sweeper ([`Presence::sweep`]): offline for users whose sessions
//!   expired without a close.
//! - [`grpc`]: the tonic adapter, and [`serve`] to run it with its consumer.

pub mod fanout;
pub mod grpc;
pub mod presence;

pub use presence::Presence;

use parley::backends::Backends;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `PresenceService` and runs the fan-out until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    presence: Presence,
    backends: Backends,
    shutdown: CancellationToken,
) -> Result<(), parley::grpc::ServeError> {
    let fanout = tokio::spawn(fanout::run(presence.clone(), shutdown.clone()));
    let sweeper = tokio::spawn(presence.clone().sweep());
    let routes = tonic::service::Routes::new(grpc::server(presence));
    let served =
        parley::grpc::serve(listener, routes, grpc::NAMES, backends, shutdown.clone()).await;
    shutdown.cancel();
    let _ = fanout.await;
    let _ = sweeper.await;
    served
}

/// presence-svc's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PresenceArgs {
    /// Live sessions (WebSockets) one user may hold at once over every
    /// edge; a `join` past it is refused (`rate_limited`, close 4003).
    #[arg(
        long,
        env = "PARLEY_MAX_SESSIONS_PER_USER",
        global = true,
        default_value_t = presence::DEFAULT_MAX_SESSIONS_PER_USER,
        value_parser = clap::builder::TypedValueParser::map(
            clap::value_parser!(u32).range(1..),
            |n| n as usize
        )
    )]
    pub max_sessions_per_user: usize,
}

/// Runs presence-svc (API and fan-out) as its own process until
/// SIGINT/SIGTERM.
pub async fn run_standalone(
    node: &parley::node::NodeArgs,
    args: &PresenceArgs,
) -> Result<(), parley::node::RunError> {
    let node = parley::node::Node::start(parley::discovery::kind::PRESENCE, node, None).await?;
    node.stop_on_signal();
    let parts = node;
    let presence = Presence::new(
        parts.backends.clone(),
        parts.pusher,
        parts.liveness,
        parts.shutdown.clone(),
    )
    .with_max_sessions(args.max_sessions_per_user);
    let served = serve(parts.grpc, presence, parts.backends, parts.shutdown.clone()).await;
    parts.shutdown.cancel();
    let _ = parts.announcer.await;
    Ok(served?)
}
