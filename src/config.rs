//! Configuration shared by every role, parsed by clap from flags and the
//! seed's environment names. Tests build these structs directly instead of
//! touching the process environment.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Which backends to use. Setting an URL switches that backend from the
/// embedded default to the real server.
#[derive(Debug, Clone, Args)]
pub struct BackendConfig {
    /// Directory of the embedded backends' files (and the generated JWT
    /// secret when none is configured).
    #[arg(long, env = "PARLEY_DATA_DIR", global = true, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Kafka bootstrap servers (host:port,...); embedded bus when unset.
    #[arg(long, env = "KAFKA_BROKERS", global = true)]
    pub kafka_brokers: Option<String>,
    /// Redis URL; embedded registry when unset.
    #[arg(long, env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// MongoDB URL; embedded store when unset.
    #[arg(long, env = "MONGODB_URL", global = true)]
    pub mongodb_url: Option<String>,
    /// Partitions per topic (created at start-up when missing).
    #[arg(
        long,
        env = "PARLEY_PARTITIONS",
        global = true,
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub partitions: u32,
    /// Replication factor of the Kafka topics created at start-up.
    #[arg(
        long,
        env = "PARLEY_REPLICATION",
        global = true,
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub replication: u16,
    /// Prefix of every Redis key, so deployments can share a Redis.
    #[arg(
        long,
        env = "PARLEY_REDIS_PREFIX",
        global = true,
        default_value = "parley"
    )]
    pub redis_prefix: String,
    /// Prefix of the Kafka topic names (`<prefix>chat-messages`, ...).
    #[arg(long, env = "PARLEY_TOPIC_PREFIX", global = true, default_value = "")]
    pub topic_prefix: String,
    /// MongoDB database; the one in MONGODB_URL's path, else `parley`.
    #[arg(long, env = "PARLEY_MONGODB_DATABASE", global = true)]
    pub mongodb_database: Option<String>,
}

impl BackendConfig {
    /// Embedded backends under `data_dir`, as tests and the default use.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            kafka_brokers: None,
            redis_url: None,
            mongodb_url: None,
            partitions: 8,
            replication: 1,
            redis_prefix: "parley".into(),
            topic_prefix: String::new(),
            mongodb_database: None,
        }
    }
}

/// Timing of liveness: how often things heartbeat and when they expire.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// A service instance vanishes from the registry this long after its
    /// last heartbeat.
    pub service_ttl: Duration,
    /// A session vanishes this long after its edge last vouched for it.
    pub session_ttl: Duration,
    /// A dropped (not cleanly closed) connection counts as offline after
    /// this long without the user reconnecting.
    pub offline_grace: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            service_ttl: Duration::from_secs(15),
            session_ttl: Duration::from_secs(60),
            offline_grace: Duration::from_secs(10),
        }
    }
}

impl Liveness {
    /// Heartbeats go out three times per TTL, so one lost beat is harmless.
    pub fn service_heartbeat(&self) -> Duration {
        self.service_ttl / 3
    }

    pub fn session_heartbeat(&self) -> Duration {
        self.session_ttl / 3
    }
}
