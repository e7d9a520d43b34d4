//! chat-svc: the message path.
//!
//! - [`conversations`]: who may do what where (membership, 1:1 resolution).
//! - [`chat`]: the domain behind `ChatService`: send appends durably to the
//!   bus and answers "sent"; receipts go the same way; typing is pushed
//!   directly; history and sync read the store.
//! - [`groups`]: creating groups and changing their members and names.
//! - [`changes`]: edits, deletions and reactions, checked and queued.
//! - [`receipts`]: marks queued and coalesced on their way to the bus.
//! - [`tally`]: receipt counts of groups, sent a few times a second.
//! - [`sequencer`]: the `chat-messages` consumer. As the single owner of its
//!   partitions it assigns each conversation's dense `seq`, persists
//!   idempotently, fans out through the edges and only then commits.
//! - [`notifier`]: the `push-notifications` consumer, POSTing each event to
//!   a webhook (when one is configured).
//! - [`grpc`]: the tonic adapter, and [`serve`] to run it with its consumers.

pub mod changes;
pub mod chat;
pub mod conversations;
pub mod groups;
pub mod grpc;
pub mod log;
pub mod notifier;
pub mod periodic;
pub mod receipts;
pub mod sequencer;
pub mod tally;

pub use chat::Chat;

use parley::backends::Backends;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `ChatService` and runs the sequencer and the notifier until
/// `shutdown`.
pub async fn serve(
    listener: TcpListener,
    chat: Chat,
    backends: Backends,
    shutdown: CancellationToken,
) -> Result<(), parley::grpc::ServeError> {
    let (caught_up, replayed) = tokio::sync::oneshot::channel();
    // A sequencer that fails (panics) stops the node: chat-svc must not go
    // on acking sends nothing would sequence.
    let sequencer = tokio::spawn({
        let (chat, shutdown) = (chat.clone(), shutdown.clone());
        async move {
            let run = tokio::spawn(sequencer::run(chat, caught_up, shutdown.clone()));
            if let Err(e) = run.await {
                tracing::error!(error = %e, "the sequencer failed; stopping");
                shutdown.cancel();
            }
        }
    });
    let receipts = tokio::spawn(chat.receipts.clone().flush_every(
        receipts::FLUSH_EVERY,
        backends.bus.clone(),
        shutdown.clone(),
    ));
    let notifier = tokio::spawn(notifier::run(
        backends.clone(),
        chat.webhook().cloned(),
        shutdown.clone(),
    ));
    // Nothing is answered before the store is back to what clients may have
    // been shown (see `Store::rolls_back_on_crash`); callers wait in the
    // listener's backlog meanwhile.
    let served = tokio::select! {
        caught_up = replayed => match caught_up {
            Ok(()) => {
                let routes = tonic::service::Routes::new(grpc::server(chat));
                parley::grpc::serve(listener, routes, grpc::NAMES, backends, shutdown.clone())
                    .await
            }
            // The sequencer ended without catching up (it panicked): nothing
            // would sequence what chat-svc acked, so it does not serve.
            Err(_) => {
                tracing::error!("the sequencer stopped before the store caught up; chat-svc is not serving");
                Ok(())
            }
        },
        () = shutdown.cancelled() => Ok(()),
    };
    shutdown.cancel();
    let _ = receipts.await;
    let _ = sequencer.await;
    let _ = notifier.await;
    served
}

/// chat-svc's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Messages one user may send in any window (sliding, not aligned to
    /// the clock), over all sessions and edges; beyond it sends are
    /// refused with `rate_limited`. Half of it may come at once.
    #[arg(
        long,
        env = "PARLEY_USER_SEND_LIMIT",
        global = true,
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub user_send_limit: u64,
    /// The window of that limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_USER_SEND_WINDOW_SECS",
        global = true,
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub user_send_window_secs: u64,
    /// Where notifications for members with no live session are POSTed
    /// (JSON, `http://`); unset: they are queued on `push-notifications`
    /// and not sent anywhere.
    #[arg(long, env = "PARLEY_NOTIFY_WEBHOOK_URL", global = true)]
    pub notify_webhook_url: Option<String>,
    /// Attempts per notification before it is dropped.
    #[arg(
        long,
        env = "PARLEY_NOTIFY_MAX_ATTEMPTS",
        global = true,
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub notify_max_attempts: u32,
    /// Most members a group may have, its creator included; adding beyond
    /// it is refused with `too_large`.
    #[arg(
        long,
        env = "PARLEY_GROUP_MAX_MEMBERS",
        global = true,
        default_value_t = chat::DEFAULT_MAX_MEMBERS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=100_000)
    )]
    pub group_max_members: usize,
    /// Most messages that may wait on `chat-messages` for the sequencers
    /// (consumer lag summed over partitions) before sends are refused with
    /// `unavailable`.
    #[arg(
        long,
        env = "PARLEY_MAX_BACKLOG",
        global = true,
        default_value_t = chat::DEFAULT_MAX_BACKLOG,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_backlog: u64,
}

impl ChatArgs {
    /// The webhook, when one is configured.
    pub fn webhook(&self) -> Option<notifier::Webhook> {
        self.notify_webhook_url
            .as_ref()
            .map(|url| notifier::Webhook {
                max_attempts: self.notify_max_attempts,
                ..notifier::Webhook::new(url.clone())
            })
    }

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
    let chat = Chat::new(parts.backends.clone(), parts.pusher, args.send_limit())
        .with_webhook(args.webhook())
        .with_group_limit(args.group_max_members)
        .with_backlog_limit(args.max_backlog);
    let served = serve(parts.grpc, chat, parts.backends, parts.shutdown.clone()).await;
    parts.shutdown.cancel();
    let _ = parts.announcer.await;
    Ok(served?)
}
