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

/// chat-svc's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Messages one user may send per window, over all sessions and edges;
    /// beyond it sends are refused with `rate_limited`.
    #[arg(
        long,
        env = "PARLEY_USER_SEND_LIMIT",
        global = true,
        default_value_t = 100
    )]
    pub user_send_limit: u64,
    /// The window of that limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_USER_SEND_WINDOW_SECS",
        global = true,
        default_value_t = 10
    )]
    pub user_send_window_secs: u64,
}

impl ChatArgs {
    pub fn send_limit(&self) -> chat::SendLimit {
        chat::SendLimit {
            count: self.user_send_limit,
            window: std::time::Duration::from_secs(self.user_send_window_secs.max(1)),
        }
    }
}

/// Runs chat-svc (API and sequencer) as its own process until SIGINT/SIGTERM.
pub async fn run_standalone(
    node: &parley::node::NodeArgs,
    args: &ChatArgs,
) -> Result<(), parley::node::RunError> {
    let node = parley::node::Node::start(parley::discovery::kind::CHAT, node, None).await?;
    node.stop_on_signal();
    let parts = node;
    let chat = Chat::new(parts.backends.clone(), parts.pusher, args.send_limit());
    let served = serve(parts.grpc, chat, parts.backends, parts.shutdown.clone()).await;
    parts.shutdown.cancel();
    let _ = parts.announcer.await;
    Ok(served?)
}
