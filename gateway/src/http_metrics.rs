//! Prometheus metrics: the process-wide recorder, HTTP request metrics by matched route, process
//! metrics, and the `/metrics` rendering.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Buckets for every `*_seconds` histogram: 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the ledger batch size histogram.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Installs the global recorder once per process (tests start several apps in one process) and
/// returns its handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    // Serializes installation: the global recorder can be set only once per process.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _guard = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("ledger_batch_size".into()), BATCH_BUCKETS)?
        .install_recorder()?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    let collector = PROCESS.get_or_init(metrics_process::Collector::default);
    collector.describe();
    metrics::describe_counter!(
        "http_requests_total",
        "HTTP requests by method, matched route and status"
    );
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by method and matched route"
    );
    Ok(handle)
}

/// The Prometheus text exposition of every metric, with fresh process metrics.
pub fn render() -> String {
    if let Some(collector) = PROCESS.get() {
        collector.collect();
    }
    match HANDLE.get() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

/// The `method` label: the standard methods by name, anything else (a client may send any token)
/// as `other`, so no client can grow the label set.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts requests and times them by matched route (never the raw path, whose
/// cardinality is unbounded), by a fixed set of methods and by status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    // The http crate only represents 100-999, so the status label is a bounded set too.
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
