//! Command line of the `parley` binary: flags and the seed's environment
//! names, validated into an [`AppConfig`]. Without a subcommand it runs
//! every role in one process; a subcommand runs one role.

use crate::AppConfig;
use clap::{Parser, Subcommand};
use parley::node::NodeArgs;
use parley_auth::config::AuthArgs;
use parley_edge::HttpArgs;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "parley",
    version,
    about = "Parley: a horizontally scalable chat backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Option<Role>,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub chat: parley_chat::ChatArgs,
    #[command(flatten)]
    pub presence: parley_presence::PresenceArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Role {
    /// Every role in one process (the default).
    All,
    /// An edge: browsers' WebSockets and REST (listens on PORT and GRPC_ADDR).
    Edge,
    /// auth-svc: accounts and tokens (GRPC_ADDR).
    Auth,
    /// chat-svc: messages, receipts, history, and the sequencer (GRPC_ADDR).
    Chat,
    /// presence-svc: sessions and presence (GRPC_ADDR).
    Presence,
    /// Asks a gRPC server's health service and exits 0 when it is SERVING,
    /// 1 otherwise: a container healthcheck (`parley probe 127.0.0.1:50051`).
    Probe {
        /// host:port of the gRPC server.
        addr: String,
    },
}

impl Cli {
    /// Resolves secrets and defaults into the all-in-one configuration.
    pub fn app_config(&self) -> anyhow::Result<AppConfig> {
        let auth = self.auth.resolve(&self.node.backends.data_dir)?;
        Ok(AppConfig {
            backends: self.node.backends.clone(),
            auth,
            node_id: self.node.id_for("parley"),
            liveness: self.node.liveness(),
            join_timeout: Duration::from_secs(10),
            ws_frames_per_sec: self.http.ws_frames_per_sec,
            max_frame_wait: Duration::from_millis(self.http.max_frame_wait_ms),
            send_limit: self.chat.send_limit(),
            notify: self.chat.webhook(),
            group_max_members: self.chat.group_max_members,
            max_backlog: self.chat.max_backlog,
            max_sessions_per_user: self.presence.max_sessions_per_user,
            allowed_origins: parley_edge::origin::AllowedOrigins::new(&self.http.allowed_origins),
        })
    }
}
