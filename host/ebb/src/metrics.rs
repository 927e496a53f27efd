//! Prometheus metrics, served at `/metrics`: grants by state (read from the store
//! at scrape time), revoke and verify latency, residue found, escalations, and
//! connector call errors by kind. Recorded through the `metrics` facade, so code
//! that records does not care whether an exporter is installed.

use ebb_engine::lifecycle::GrantState;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;

/// Latency buckets in seconds: a connector call takes milliseconds to seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?)
}

/// The exposition text, with what describes stored state read from the store at
/// scrape time (so it survives a restart): grants by state, and grants ever
/// escalated by connector.
pub fn render(
    handle: &PrometheusHandle,
    counts: &BTreeMap<GrantState, u64>,
    escalations: &BTreeMap<String, u64>,
) -> String {
    for (state, n) in counts {
        #[expect(clippy::cast_precision_loss, reason = "a gauge of grant counts")]
        metrics::gauge!("ebb_grants", "state" => state.as_str()).set(*n as f64);
    }
    for (connector, n) in escalations {
        metrics::counter!("ebb_escalations_total", "connector" => connector.clone()).absolute(*n);
    }
    handle.render()
}
