//! Picks each backend's implementation from configuration and opens it.

use crate::bus::{EventBus, embedded::EmbeddedBus};
use crate::config::BackendConfig;
use crate::registry::{Registry, memory::MemoryRegistry};
use crate::store::{Store, embedded::EmbeddedStore};
use std::sync::Arc;

/// The three backends every role is built on. Cloning shares them.
#[derive(Clone)]
pub struct Backends {
    pub bus: Arc<dyn EventBus>,
    pub registry: Arc<dyn Registry>,
    pub store: Arc<dyn Store>,
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
    #[error(
        "{name} is set, but this build has no {what} backend yet; unset it to use the embedded one"
    )]
    NotBuilt {
        name: &'static str,
        what: &'static str,
    },
}

impl Backends {
    /// Opens the configured backends.
    pub async fn open(config: &BackendConfig) -> Result<Self, BackendError> {
        if config.kafka_brokers.is_some() {
            return Err(BackendError::NotBuilt {
                name: "KAFKA_BROKERS",
                what: "Kafka",
            });
        }
        if config.redis_url.is_some() {
            return Err(BackendError::NotBuilt {
                name: "REDIS_URL",
                what: "Redis",
            });
        }
        if config.mongodb_url.is_some() {
            return Err(BackendError::NotBuilt {
                name: "MONGODB_URL",
                what: "MongoDB",
            });
        }
        let dir = config.data_dir.display().to_string();
        let bus = EmbeddedBus::open(&config.data_dir, config.partitions).map_err(|e| {
            BackendError::Embedded {
                what: "bus",
                dir: dir.clone(),
                cause: e.to_string(),
            }
        })?;
        let store = EmbeddedStore::open(&config.data_dir).map_err(|e| BackendError::Embedded {
            what: "store",
            dir: dir.clone(),
            cause: e.to_string(),
        })?;
        Ok(Self {
            bus: Arc::new(bus),
            registry: Arc::new(MemoryRegistry::new()),
            store: Arc::new(store),
        })
    }

    /// Answers whether every backend responds, naming the first that does not.
    pub async fn check(&self) -> Result<(), String> {
        self.bus.ping().await.map_err(|e| e.to_string())?;
        self.registry.ping().await.map_err(|e| e.to_string())?;
        self.store.ping().await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
