//! Service discovery: instances announce themselves in the registry with a
//! heartbeat; callers look instances up there and keep one lazily connected
//! gRPC channel per address.

use crate::config::Liveness;
use crate::error::ApiError;
use crate::registry::{Registry, ServiceEntry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Kinds of instances, as registered.
pub mod kind {
    pub const EDGE: &str = "edge";
    pub const AUTH: &str = "auth";
    pub const CHAT: &str = "chat";
    pub const PRESENCE: &str = "presence";
}

/// How long an instance list is reused: far below any instance TTL, so a
/// dead instance is dropped about as fast as the registry drops it.
const LIST_TTL: Duration = Duration::from_secs(1);

/// An instance list and when it was read.
type Listed = (std::time::Instant, Vec<ServiceEntry>);

/// Finds instances and hands out channels to them.
#[derive(Clone)]
pub struct Discovery {
    registry: Arc<dyn Registry>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    next: Arc<AtomicUsize>,
    /// Instance lists by kind, reused for [`LIST_TTL`]: every client frame
    /// and every push needs one, and on Redis a listing is two round trips.
    lists: Arc<Mutex<HashMap<String, Listed>>>,
    /// Instances whose id starts with this are used first: an all-in-one
    /// node calls its own roles (over gRPC all the same) while they live,
    /// and never a dead predecessor still in the registry.
    local: Option<String>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Discovery")
    }
}

impl Discovery {
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Self {
            registry,
            channels: Arc::default(),
            next: Arc::default(),
            lists: Arc::default(),
            local: None,
        }
    }

    /// Prefers instances whose id starts with `prefix`.
    pub fn preferring(mut self, prefix: impl Into<String>) -> Self {
        self.local = Some(prefix.into());
        self
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Live instances of `kind`, as listed in the registry at most
    /// [`LIST_TTL`] ago.
    pub async fn instances(&self, kind: &str) -> Result<Vec<ServiceEntry>, ApiError> {
        let poisoned = || ApiError::unavailable("discovery lock poisoned");
        if let Some((at, list)) = self.lists.lock().map_err(|_| poisoned())?.get(kind)
            && at.elapsed() < LIST_TTL
        {
            return Ok(list.clone());
        }
        let list = self.registry.services(Some(kind)).await?;
        self.lists
            .lock()
            .map_err(|_| poisoned())?
            .insert(kind.to_owned(), (std::time::Instant::now(), list.clone()));
        Ok(list)
    }

    /// A channel to a live instance of `kind`, round-robin across them.
    pub async fn channel(&self, kind: &str) -> Result<Channel, ApiError> {
        let mut instances = self.instances(kind).await?;
        if let Some(local) = &self.local
            && instances.iter().any(|i| i.id.starts_with(local.as_str()))
        {
            instances.retain(|i| i.id.starts_with(local.as_str()));
        }
        if instances.is_empty() {
            return Err(ApiError::unavailable(format!(
                "no {kind} service is running"
            )));
        }
        let pick = self.next.fetch_add(1, Ordering::Relaxed) % instances.len();
        self.channel_at(&instances[pick].grpc_addr)
    }

    /// The channel to one address, created on first use.
    pub fn channel_at(&self, addr: &str) -> Result<Channel, ApiError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| ApiError::unavailable("discovery lock poisoned"))?;
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| ApiError::unavailable(format!("bad service address {addr}")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Registers `entry` now (so callers find it as soon as this returns), then
/// keeps it registered until `shutdown` and deregisters it. `load` is read
/// at every heartbeat.
pub async fn announce(
    registry: Arc<dyn Registry>,
    entry: ServiceEntry,
    liveness: Liveness,
    load: impl Fn() -> u64 + Send + 'static,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, ApiError> {
    let mut entry = entry;
    entry.load = load();
    registry
        .register_service(&entry, liveness.service_ttl)
        .await?;
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(liveness.service_heartbeat());
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    entry.load = load();
                    if let Err(e) = registry.register_service(&entry, liveness.service_ttl).await {
                        tracing::warn!(kind = %entry.kind, id = %entry.id, error = %e, "heartbeat failed");
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        if let Err(e) = registry.deregister_service(&entry.kind, &entry.id).await {
            tracing::warn!(kind = %entry.kind, id = %entry.id, error = %e, "deregister failed");
        }
    }))
}
