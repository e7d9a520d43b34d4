//! Serving a role's gRPC API: every server also serves reflection (so
//! `grpcurl` can list and call it) and health, which reports NOT_SERVING
//! until the role's backends answer and whenever they stop answering.
//! What a server serves is also reachable in process ([`local`]).

pub mod local;

use crate::backends::Checked;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `routes` (the role's services) plus reflection and health on
/// `listener` until `shutdown`. `names` are the fully qualified service
/// names whose health follows the backends.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    names: &'static [&'static str],
    backends: impl Checked,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    // List what this server really serves: its own services and health, not
    // every service in Parley's descriptor set.
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for name in names {
        reflection = reflection.with_service_name(*name);
    }
    let reflection = reflection.build_v1()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    // The first status is known before the server accepts a call, so a
    // health check never finds the service unregistered.
    let mut last = check(&backends).await;
    report(&reporter, names, last).await;
    let watcher = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(2));
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                let status = check(&backends).await;
                if status != last {
                    report(&reporter, names, status).await;
                    last = status;
                }
            }
        }
    });
    let routes = routes.add_service(reflection).add_service(health);
    let local = listener
        .local_addr()
        .ok()
        .map(|addr| local::Local::serve(addr.to_string(), routes.clone()));
    // In-process callers stop finding the server when shutdown starts, as
    // network callers get GOAWAY then, not when the drain ends.
    let delist = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            drop(local);
        }
    };
    let served = Server::builder()
        .tcp_nodelay(true)
        .layer(tower::layer::layer_fn(|inner| CountInFlight {
            inner,
            count: &IN_FLIGHT,
        }))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned());
    let (result, ()) = tokio::join!(served, delist);
    watcher.abort();
    Ok(result?)
}

/// gRPC requests this process is serving right now, over all its servers:
/// the `load` a role reports in the registry.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

pub fn in_flight() -> u64 {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// Counts a request from its arrival until its response (or its
/// cancellation) drops the guard: requests served in process
/// ([`local`]) count too.
pub(crate) struct InFlightGuard(&'static AtomicU64);

impl InFlightGuard {
    /// Counts one request in [`in_flight`].
    pub(crate) fn new() -> Self {
        Self::counting(&IN_FLIGHT)
    }

    fn counting(count: &'static AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The tower middleware that keeps [`IN_FLIGHT`] (`count`: another
/// counter only in tests, which run beside other servers of the process).
#[derive(Clone, Debug)]
struct CountInFlight<S> {
    inner: S,
    count: &'static AtomicU64,
}

impl<S, R> tower::Service<R> for CountInFlight<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let guard = InFlightGuard::counting(self.count);
        let response = self.inner.call(request);
        Box::pin(async move {
            let _guard = guard;
            response.await
        })
    }
}

async fn check(backends: &impl Checked) -> ServingStatus {
    match backends.check().await {
        Ok(()) => ServingStatus::Serving,
        Err(cause) => {
            tracing::warn!(%cause, "backend check failed; gRPC health is NOT_SERVING");
            ServingStatus::NotServing
        }
    }
}

async fn report(reporter: &HealthReporter, names: &[&str], status: ServingStatus) {
    for name in std::iter::once(&"").chain(names) {
        reporter.set_service_status(*name, status).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[tokio::test]
    async fn a_request_counts_until_its_response_or_cancellation() {
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let wait = std::sync::Arc::new(tokio::sync::Mutex::new(Some(wait)));
        let inner = tower::service_fn(move |()| {
            let wait = wait.clone();
            async move {
                if let Some(rx) = wait.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, std::convert::Infallible>(())
            }
        });
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let in_flight = || COUNT.load(Ordering::Relaxed);
        let mut service = CountInFlight {
            inner,
            count: &COUNT,
        };
        let before = in_flight();
        let pending = service.ready().await.unwrap().call(());
        assert_eq!(in_flight(), before + 1);
        let answered = tokio::spawn(pending);
        release.send(()).unwrap();
        answered.await.unwrap().unwrap();
        assert_eq!(in_flight(), before);

        let dropped = service.ready().await.unwrap().call(());
        assert_eq!(in_flight(), before + 1);
        drop(dropped);
        assert_eq!(in_flight(), before);
    }
}
