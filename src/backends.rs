//! Picks each backend's implementation from configuration and opens it.
//! Setting `KAFKA_BROKERS`, `REDIS_URL` or `MONGODB_URL` switches that one
//! backend to the real server; the others stay embedded.
//!
//! Start-up policy: a configured real backend that cannot be reached is a
//! start-up failure that names the backend and its address, and the
//! process exits non-zero (an orchestrator restarts it). Once running, a
//! backend that goes away makes health NOT_SERVING and requests answer
//! `unavailable` until it is back.

use crate::bus::{EventBus, embedded::EmbeddedBus, kafka::KafkaBus};
use crate::config::BackendConfig;
use crate::registry::watch::Restarts;
use crate::registry::{Registry, memory::MemoryRegistry, redis::RedisRegistry};
use crate::store::{Store, embedded::EmbeddedStore, mongo::MongoStore};
use std::sync::Arc;

/// The three backends every role is built on. Cloning shares them.
#[derive(Clone)]
pub struct Backends {
    pub bus: Arc<dyn EventBus>,
    pub registry: Arc<dyn Registry>,
    pub store: Arc<dyn Store>,
    /// Wakes whoever must write the registry again after it lost its data
    /// (instances, edges' sessions); one poller per process.
    pub restarts: Restarts,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backends")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot open the embedded {what} in {dir}: {cause}")]
    Embedded {
        what: &'static str,
        dir: String,
        cause: String,
    },
    #[error("cannot reach {what} at {address}: {cause}")]
    Unreachable {
        what: &'static str,
        address: String,
        cause: String,
    },
}

/// Hides credentials in a URL before it is printed.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// What a role that keeps nothing but sessions needs (the edge): the
/// registry alone. Opened and health-checked without the bus and the
/// store, so an edge starts and serves while Kafka and the store are away
/// or not configured for it.
#[derive(Clone)]
pub struct RegistryOnly {
    pub registry: Arc<dyn Registry>,
    /// As [`Backends::restarts`].
    pub restarts: Restarts,
}

impl std::fmt::Debug for RegistryOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryOnly")
    }
}

/// Backends a server's gRPC health follows (see `grpc::serve`).
#[async_trait::async_trait]
pub trait Checked: Send + Sync + 'static {
    /// `Ok` when every backend answers; else the first that does not.
    async fn check(&self) -> Result<(), String>;
}

async fn open_registry(config: &BackendConfig) -> Result<Arc<dyn Registry>, BackendError> {
    Ok(match &config.redis_url {
        Some(url) => Arc::new(
            RedisRegistry::connect(url, &config.redis_prefix)
                .await
                .map_err(|e| BackendError::Unreachable {
                    what: "Redis",
                    address: redact(url),
                    cause: e.to_string(),
                })?,
        ),
        None => Arc::new(MemoryRegistry::new()),
    })
}

impl RegistryOnly {
    /// Opens the configured registry only; `KAFKA_BROKERS`, `MONGODB_URL`
    /// and the data directory are not touched.
    pub async fn open(config: &BackendConfig) -> Result<Self, BackendError> {
        let registry = open_registry(config).await?;
        let restarts = Restarts::watch(&registry);
        Ok(Self { registry, restarts })
    }
}

#[async_trait::async_trait]
impl Checked for RegistryOnly {
    async fn check(&self) -> Result<(), String> {
        self.registry.ping().await.map_err(|e| e.to_string())
    }
}

impl Backends {
    /// The registry part, for a role that uses nothing else (the
    /// all-in-one's edge).
    pub fn registry_only(&self) -> RegistryOnly {
        RegistryOnly {
            registry: self.registry.clone(),
            restarts: self.restarts.clone(),
        }
    }

    /// Opens the configured backends.
    pub async fn open(config: &BackendConfig) -> Result<Self, BackendError> {
        let dir = config.data_dir.display().to_string();
        let embedded = |what: &'static str, cause: String| BackendError::Embedded {
            what,
            dir: dir.clone(),
            cause,
        };
        let bus: Arc<dyn EventBus> = match &config.kafka_brokers {
            Some(brokers) => Arc::new(
                KafkaBus::connect(
                    brokers,
                    &config.topic_prefix,
                    config.partitions,
                    config.replication,
                )
                .await
                .map_err(|e| BackendError::Unreachable {
                    what: "Kafka",
                    address: brokers.clone(),
                    cause: e.to_string(),
                })?,
            ),
            None => Arc::new(
                EmbeddedBus::open(&config.data_dir, config.partitions)
                    .map_err(|e| embedded("bus", e.to_string()))?,
            ),
        };
        let RegistryOnly { registry, restarts } = RegistryOnly::open(config).await?;
        let store: Arc<dyn Store> = match &config.mongodb_url {
            Some(url) => Arc::new(
                MongoStore::connect(url, config.mongodb_database.as_deref())
                    .await
                    .map_err(|e| BackendError::Unreachable {
                        what: "MongoDB",
                        address: redact(url),
                        cause: e.to_string(),
                    })?,
            ),
            None => {
                let store = EmbeddedStore::open(&config.data_dir)
                    .map_err(|e| embedded("store", e.to_string()))?;
                // The replay after a crash must be observable before the
                // store may lag the log (see `Store::rolls_back_on_crash`):
                // the embedded bus answers `uncommitted`, Kafka does not.
                Arc::new(if config.kafka_brokers.is_none() {
                    store.deferring_sequencer_fsync()
                } else {
                    store
                })
            }
        };
        Ok(Self {
            bus,
            registry,
            store,
            restarts,
        })
    }
}

#[async_trait::async_trait]
impl Checked for Backends {
    /// Answers whether every backend responds, naming the first that does not.
    async fn check(&self) -> Result<(), String> {
        self.bus.ping().await.map_err(|e| e.to_string())?;
        self.registry.ping().await.map_err(|e| e.to_string())?;
        self.store.ping().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_not_printed() {
        assert_eq!(
            redact("mongodb://user:secret@db:27017/x"),
            "mongodb://***@db:27017/x"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
