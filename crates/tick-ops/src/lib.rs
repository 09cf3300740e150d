//! The operations endpoint every stage binary serves on its metrics port: `/metrics`
//! (Prometheus text), `/healthz` (liveness) and `/readyz` (readiness), and the process setup
//! (logging, metrics recorder, signals) those binaries share. The embedded binary needs none of
//! it, so it lives outside `tick-core`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use tick_core::health::Health;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct OpsState {
    health: Arc<Health>,
    prometheus: PrometheusHandle,
}

/// Installs the global Prometheus recorder (histograms with latency buckets) and returns its
/// handle; call once per process.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &buckets,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_rows".into()),
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0],
        )?
        .install_recorder()?;
    Ok(handle)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` fires; returns the
/// bound address through `on_listen`.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(OpsState { health, prometheus });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("failed to listen on {addr} for metrics: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics and health endpoints listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn metrics(State(s): State<OpsState>) -> String {
    s.prometheus.run_upkeep();
    s.prometheus.render()
}

async fn ready(State(s): State<OpsState>) -> (StatusCode, &'static str) {
    if s.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Options every stage binary has besides its own.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessArgs {
    /// Log format on stderr (`RUST_LOG` sets the filter).
    #[arg(long, env = "TICKFLOW_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: tick_core::telemetry::LogFormat,
    /// Address of the /metrics, /healthz and /readyz endpoints (default: 0.0.0.0 and the
    /// component's port).
    #[arg(long, env = "TICKFLOW_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// A running stage process: its shutdown token, health state and ops endpoint.
pub struct Process {
    /// Tripped by SIGINT/SIGTERM.
    pub shutdown: CancellationToken,
    /// Readiness reported on /readyz.
    pub health: Arc<Health>,
    ops_stop: CancellationToken,
    ops_task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ProcessArgs {
    /// Initialises logging and metrics, starts the ops endpoint and the signal handler.
    pub fn start(&self, component: &str, default_port: u16) -> anyhow::Result<Process> {
        tick_core::telemetry::init(self.log_format, "info");
        let prometheus = install_metrics()?;
        let health = Health::new();
        let addr = self
            .metrics_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port)));
        let ops_stop = CancellationToken::new();
        let ops_task = tokio::spawn(serve(addr, health.clone(), prometheus, ops_stop.clone()));
        tracing::info!(component, version = env!("CARGO_PKG_VERSION"), "starting");
        Ok(Process {
            shutdown: tick_core::shutdown::on_signals(),
            health,
            ops_stop,
            ops_task,
        })
    }
}

impl Process {
    /// Stops the ops endpoint after the stage finished; returns the stage's result.
    pub async fn finish(self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        self.health.set_ready(false);
        self.ops_stop.cancel();
        if let Ok(Err(e)) = self.ops_task.await {
            tracing::warn!(error = %e, "metrics endpoint failed");
        }
        match &result {
            Ok(()) => tracing::info!("stopped cleanly"),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "stopped with an error"),
        }
        result
    }
}
