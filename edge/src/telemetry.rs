//! Prometheus metrics at `/metrics`. The recorder is process-wide, so it is
//! installed once however many edges a process (or a test) runs.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

pub async fn metrics() -> String {
    prometheus().map(|h| h.render()).unwrap_or_default()
}
