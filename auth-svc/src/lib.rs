//! auth-svc: accounts and tokens behind the gRPC `AuthService`.
//!
//! - [`config`]: JWT secret and lifetime (`JWT_SECRET`, `JWT_EXPIRES_IN`).
//! - [`password`]: argon2id hashing, off the async threads.
//! - [`token`]: HS256 JWTs with the algorithm pinned and `exp` required.
//! - [`accounts`]: register, login, verify, look-ups: the domain, no tonic.
//! - [`grpc`]: the tonic adapter, and [`serve`] to run it on a listener.

pub mod accounts;
pub mod config;
pub mod grpc;
pub mod password;
pub mod token;
mod validate;

pub use accounts::Accounts;
pub use config::AuthConfig;

use parley::backends::Backends;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `AuthService` (with reflection and health) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    accounts: Accounts,
    backends: Backends,
    shutdown: CancellationToken,
) -> Result<(), parley::grpc::ServeError> {
    let routes = tonic::service::Routes::new(grpc::server(accounts));
    parley::grpc::serve(listener, routes, grpc::NAMES, backends, shutdown).await
}

/// Runs auth-svc as its own process until SIGINT/SIGTERM.
pub async fn run_standalone(
    node: &parley::node::NodeArgs,
    auth: &config::AuthArgs,
) -> Result<(), parley::node::RunError> {
    use parley::node::{Node, RunError};
    let config = auth
        .resolve(&node.backends.data_dir)
        .map_err(|e| RunError::Config(e.to_string()))?;
    let node = Node::start(parley::discovery::kind::AUTH, node, None).await?;
    node.stop_on_signal();
    let parts = node;
    let accounts = Accounts::new(parts.backends.store.clone(), &config);
    let served = serve(parts.grpc, accounts, parts.backends, parts.shutdown.clone()).await;
    parts.shutdown.cancel();
    let _ = parts.announcer.await;
    Ok(served?)
}
