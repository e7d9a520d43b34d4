//! Service discovery: instances announce themselves in the registry with a
//! heartbeat; callers look instances up there and keep one lazily connected
//! gRPC channel per address, or call in process when this process serves
//! the address ([`crate::grpc::local`]).
//!
//! Balancing is round-robin over the live instances of a kind, with passive
//! health checks (as nginx's `max_fails`): a call that fails below gRPC
//! (refused, reset; not a timeout) sets its instance aside for [`EJECTION`], so
//! a killed instance costs its callers one failed call each rather than one
//! in N until the registry drops it. A gRPC status from the service itself,
//! even `UNAVAILABLE`, is an answer and ejects nothing. (tonic's own
//! `balance_channel` is not used: its endpoints connect lazily and report
//! ready while refusing connections, so power-of-two-choices favours a dead
//! instance, which has no requests pending.)

use crate::config::Liveness;
use crate::error::ApiError;
use crate::registry::watch::Restarts;
use crate::registry::{Registry, ServiceEntry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
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

/// How long an instance whose call failed below gRPC is passed over (unless
/// every instance of its kind is).
pub const EJECTION: Duration = Duration::from_secs(5);

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
    /// Addresses whose last call failed below gRPC, and when.
    ejected: Arc<Mutex<HashMap<String, Instant>>>,
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
            ejected: Arc::default(),
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
    /// [`LIST_TTL`] ago (an empty listing is read again on every call).
    pub async fn instances(&self, kind: &str) -> Result<Vec<ServiceEntry>, ApiError> {
        let poisoned = || ApiError::unavailable("discovery lock poisoned");
        if let Some((at, list)) = self.lists.lock().map_err(|_| poisoned())?.get(kind)
            && at.elapsed() < LIST_TTL
        {
            return Ok(list.clone());
        }
        let list = self.registry.services(Some(kind)).await?;
        // An empty list is not kept: it is what a registry that just lost
        // its data answers until instances register again (at once, see
        // `announce`), and the next caller should see them as soon as they do.
        if !list.is_empty() {
            self.lists
                .lock()
                .map_err(|_| poisoned())?
                .insert(kind.to_owned(), (std::time::Instant::now(), list.clone()));
        }
        Ok(list)
    }

    /// A channel to a live instance of `kind`, round-robin across them,
    /// passing over ejected ones while another is available.
    pub async fn channel(&self, kind: &str) -> Result<Routed, ApiError> {
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
        let healthy: Vec<&ServiceEntry> = {
            let mut ejected = self
                .ejected
                .lock()
                .map_err(|_| ApiError::unavailable("discovery lock poisoned"))?;
            ejected.retain(|_, at| at.elapsed() < EJECTION);
            instances
                .iter()
                .filter(|i| !ejected.contains_key(&i.grpc_addr))
                .collect()
        };
        let pick = self.next.fetch_add(1, Ordering::Relaxed);
        let addr = if healthy.is_empty() {
            &instances[pick % instances.len()].grpc_addr
        } else {
            &healthy[pick % healthy.len()].grpc_addr
        };
        self.channel_at(addr)
    }

    /// The channel to one address, created on first use; in process when
    /// this process serves that address ([`crate::grpc::local`]).
    pub fn channel_at(&self, addr: &str) -> Result<Routed, ApiError> {
        if let Some(routes) = crate::grpc::local::served_at(addr) {
            return Ok(Routed {
                transport: Transport::Local(routes),
                addr: Arc::from(addr),
                ejected: self.ejected.clone(),
            });
        }
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| ApiError::unavailable("discovery lock poisoned"))?;
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|_| ApiError::unavailable(format!("bad service address {addr}")))?
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_while_idle(true);
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(Routed {
            transport: Transport::Remote(channel),
            addr: Arc::from(addr),
            ejected: self.ejected.clone(),
        })
    }
}

/// The longest a call to another instance may take, in process or not.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`Routed`] reaches its instance.
#[derive(Clone, Debug)]
enum Transport {
    /// HTTP/2 to another process (or to this one through a port it does
    /// not serve in process).
    Remote(Channel),
    /// The services themselves, called in this process.
    Local(tonic::service::Routes),
}

/// A channel to one instance that reports transport failures to
/// [`Discovery`], which then passes the instance over for a while.
#[derive(Clone, Debug)]
pub struct Routed {
    transport: Transport,
    addr: Arc<str>,
    ejected: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Routed {
    /// The instance's gRPC address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether calls stay in this process.
    pub fn is_local(&self) -> bool {
        matches!(self.transport, Transport::Local(_))
    }
}

/// An in-process call that failed below gRPC.
#[derive(Debug, thiserror::Error)]
pub enum LocalFailure {
    /// It ran past [`CALL_TIMEOUT`] (a remote one reports tonic's own
    /// timeout).
    #[error("in-process call timed out after {0:?}")]
    TimedOut(Duration),
    /// Its handler panicked (over the network the connection would reset).
    #[error("in-process call failed: {0}")]
    Panicked(String),
}

/// Whether `error` is the request deadline running out: the instance may
/// be slow, not gone, so it is not set aside for it (one that stops
/// answering altogether leaves the registry within its TTL).
fn is_timeout(error: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn eject(ejected: &Mutex<HashMap<String, Instant>>, addr: &str, error: &tonic::transport::Error) {
    if is_timeout(error) {
        tracing::warn!(%addr, %error, "call timed out");
        return;
    }
    tracing::warn!(%addr, %error, "call failed below gRPC; instance set aside");
    if let Ok(mut ejected) = ejected.lock() {
        ejected.insert(addr.to_owned(), Instant::now());
    }
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl tower::Service<HttpRequest> for Routed {
    type Response = HttpResponse;
    /// `tonic::transport::Error` over the network, [`LocalFailure`] in
    /// process.
    type Error = tonic::codegen::StdError;
    type Future = futures::future::BoxFuture<'static, Result<HttpResponse, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.transport {
            Transport::Remote(channel) => {
                let ready = channel.poll_ready(cx);
                if let Poll::Ready(Err(e)) = &ready {
                    eject(&self.ejected, &self.addr, e);
                }
                ready.map_err(Into::into)
            }
            Transport::Local(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        match &mut self.transport {
            Transport::Remote(channel) => {
                let call = channel.call(request);
                let (addr, ejected) = (self.addr.clone(), self.ejected.clone());
                Box::pin(async move {
                    let result = call.await;
                    if let Err(e) = &result {
                        eject(&ejected, &addr, e);
                    }
                    result.map_err(Into::into)
                })
            }
            Transport::Local(routes) => {
                let guard = crate::grpc::InFlightGuard::new();
                // A task of its own, as the network server gives each call:
                // a handler that panics fails its call, not the caller.
                let call = tokio::spawn(routes.call(request));
                Box::pin(async move {
                    let _guard = guard;
                    match tokio::time::timeout(CALL_TIMEOUT, call).await {
                        Ok(Ok(Ok(response))) => Ok(response),
                        Ok(Ok(Err(never))) => match never {},
                        Ok(Err(failed)) => Err(LocalFailure::Panicked(failed.to_string()).into()),
                        Err(_) => Err(LocalFailure::TimedOut(CALL_TIMEOUT).into()),
                    }
                })
            }
        }
    }
}

/// Registers `entry` now (so callers find it as soon as this returns), then
/// keeps it registered until `shutdown` and deregisters it: every
/// [`Liveness::service_heartbeat`], and at once when `restarts` says the
/// registry lost its data (so callers find the instance again within
/// [`crate::registry::watch::POLL`] of Redis answering, not at the next
/// heartbeat). `load` is read at every heartbeat.
pub async fn announce(
    registry: Arc<dyn Registry>,
    restarts: Restarts,
    entry: ServiceEntry,
    liveness: Liveness,
    load: impl Fn() -> u64 + Send + 'static,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, ApiError> {
    let mut entry = entry;
    let mut restarts = restarts;
    entry.load = load();
    registry
        .register_service(&entry, liveness.service_ttl)
        .await?;
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(liveness.service_heartbeat());
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = restarts.changed() => {
                    tracing::info!(kind = %entry.kind, id = %entry.id, "registering again after the registry lost its data");
                }
                () = shutdown.cancelled() => break,
            }
            entry.load = load();
            if let Err(e) = registry
                .register_service(&entry, liveness.service_ttl)
                .await
            {
                tracing::warn!(kind = %entry.kind, id = %entry.id, error = %e, "heartbeat failed");
            }
        }
        if let Err(e) = registry.deregister_service(&entry.kind, &entry.id).await {
            tracing::warn!(kind = %entry.kind, id = %entry.id, error = %e, "deregister failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::Discovery;
    use crate::backends::Backends;
    use crate::config::BackendConfig;
    use tokio_util::sync::CancellationToken;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    /// A health check through `discovery` to `addr`, and whether it stayed
    /// in process.
    async fn check(discovery: &Discovery, addr: &str) -> (bool, Result<i32, tonic::Status>) {
        let routed = discovery.channel_at(addr).expect("an address");
        let local = routed.is_local();
        let answer = HealthClient::new(routed)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        (local, answer)
    }

    #[tokio::test]
    async fn a_service_of_this_process_is_called_in_process_while_served_and_over_the_network_after()
     {
        let dir = tempfile::tempdir().expect("a temp dir");
        let backends = Backends::open(&BackendConfig::embedded(dir.path()))
            .await
            .expect("embedded backends");
        let discovery = Discovery::new(backends.registry.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address").to_string();
        assert!(crate::grpc::local::served_at(&addr).is_none());

        let shutdown = CancellationToken::new();
        let server = tokio::spawn(crate::grpc::serve(
            listener,
            tonic::service::Routes::default(),
            &[],
            backends,
            shutdown.clone(),
        ));
        // Served in process from the moment the server accepts calls.
        let mut answered = None;
        for _ in 0..100 {
            if crate::grpc::local::served_at(&addr).is_some() {
                answered = Some(check(&discovery, &addr).await);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (local, status) = answered.expect("the server registered its services in process");
        assert!(local, "a service of this process is called in process");
        // SERVING (1): the health service answered, in process.
        assert_eq!(status.expect("an answer"), 1);

        shutdown.cancel();
        server
            .await
            .expect("the server task")
            .expect("a clean stop");
        let (local, status) = check(&discovery, &addr).await;
        assert!(!local, "a stopped server is no longer reached in process");
        assert!(
            status.is_err(),
            "the closed port refuses the call over the network"
        );
    }
}
