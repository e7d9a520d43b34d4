//! presence-svc: who is online.
//!
//! - [`presence`]: sessions open and close, edges heartbeat, users set a
//!   status; each change of what others see becomes a `user-presence` event.
//! - [`fanout`]: the `user-presence` consumer that pushes each change to the
//!   users who share a conversation with that user, and nobody else.
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
    let routes = tonic::service::Routes::new(grpc::server(presence));
    let served =
        parley::grpc::serve(listener, routes, grpc::NAMES, backends, shutdown.clone()).await;
    shutdown.cancel();
    let _ = fanout.await;
    served
}
