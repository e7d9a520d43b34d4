//! chat-svc: the message path.
//!
//! - [`conversations`]: who may do what where (membership, 1:1 resolution).
//! - [`chat`]: the domain behind `ChatService`: send appends durably to the
//!   bus and answers "sent"; receipts go the same way; typing is pushed
//!   directly; history and sync read the store.
//! - [`sequencer`]: the `chat-messages` consumer. As the single owner of its
//!   partitions it assigns each conversation's dense `seq`, persists
//!   idempotently, fans out through the edges and only then commits.
//! - [`grpc`]: the tonic adapter, and [`serve`] to run it with its consumer.

pub mod chat;
pub mod conversations;
pub mod grpc;
pub mod sequencer;

pub use chat::Chat;

use parley::backends::Backends;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `ChatService` and runs the sequencer until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    chat: Chat,
    backends: Backends,
    shutdown: CancellationToken,
) -> Result<(), parley::grpc::ServeError> {
    let sequencer = tokio::spawn(sequencer::run(chat.clone(), shutdown.clone()));
    let routes = tonic::service::Routes::new(grpc::server(chat));
    let served =
        parley::grpc::serve(listener, routes, grpc::NAMES, backends, shutdown.clone()).await;
    shutdown.cancel();
    let _ = sequencer.await;
    served
}

/// Runs chat-svc (API and sequencer) as its own process until SIGINT/SIGTERM.
pub async fn run_standalone(node: &parley::node::NodeArgs) -> Result<(), parley::node::RunError> {
    let node = parley::node::Node::start(parley::discovery::kind::CHAT, node, None).await?;
    node.stop_on_signal();
    let (parts, announcer) = node.into_parts();
    let chat = Chat::new(parts.backends.clone(), parts.pusher);
    let served = serve(parts.grpc, chat, parts.backends, parts.shutdown.clone()).await;
    parts.shutdown.cancel();
    let _ = announcer.await;
    Ok(served?)
}
