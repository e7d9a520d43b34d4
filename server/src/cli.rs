//! Command line of the `parley` binary: flags and the seed's environment
//! names, validated into an [`AppConfig`].

use crate::AppConfig;
use clap::{Parser, Subcommand};
use parley::config::{BackendConfig, Liveness};
use parley_auth::config::AuthArgs;
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
    /// HTTP port of the edge (browsers, REST, /ws).
    #[arg(long, env = "PORT", default_value_t = 8080, global = true)]
    pub port: u16,
    /// Address to listen on; 0.0.0.0 to accept other machines.
    #[arg(long, env = "HOST", default_value = "127.0.0.1", global = true)]
    pub host: String,
    /// This node's id (registry, `connected.node`); generated when unset.
    #[arg(long, env = "SERVICE_ID", global = true)]
    pub service_id: Option<String>,
    /// Seconds a dropped connection's user stays online, waiting for a
    /// reconnect.
    #[arg(
        long,
        env = "PARLEY_OFFLINE_GRACE_SECS",
        default_value_t = 10,
        global = true
    )]
    pub offline_grace_secs: u64,
    #[command(flatten)]
    pub backends: BackendConfig,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Role {
    /// Every role in one process (the default).
    All,
}

impl Cli {
    /// Resolves secrets and defaults into the node's configuration.
    pub fn app_config(&self) -> anyhow::Result<AppConfig> {
        let auth = self.auth.resolve(&self.backends.data_dir)?;
        let node_id = self
            .service_id
            .clone()
            .unwrap_or_else(|| format!("parley-{}", &parley::ids::new_session_id()[..6]));
        let liveness = Liveness {
            offline_grace: Duration::from_secs(self.offline_grace_secs.min(300)),
            ..Liveness::default()
        };
        Ok(AppConfig {
            backends: self.backends.clone(),
            auth,
            node_id,
            liveness,
            join_timeout: Duration::from_secs(10),
        })
    }
}
