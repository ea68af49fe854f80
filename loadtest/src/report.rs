//! Measurements: HDR latency histograms, outcome counts, the terminal table and the JSON report.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies in microseconds, 1 µs to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Records one latency.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 60_000_000);
    let _ = histogram.record(micros);
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles as Prometheus samples `{name}{quantile="…"}` (for the Pushgateway).
    pub fn samples(&self, name: &str) -> Vec<(String, f64)> {
        [
            ("0.5", self.p50_ms),
            ("0.95", self.p95_ms),
            ("0.99", self.p99_ms),
            ("1", self.max_ms),
        ]
        .into_iter()
        .map(|(quantile, value)| (format!("{name}{{quantile=\"{quantile}\"}}"), value))
        .collect()
    }

    /// Summarizes `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Outcome label → count (`201`, `402`, `409`, `5xx`, `error: …`).
pub type Outcomes = BTreeMap<String, u64>;

/// Prints a two-column table.
pub fn table(title: &str, rows: &[(String, String)]) {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!("\n{title}");
    println!("{}", "-".repeat(title.len()));
    for (name, value) in rows {
        println!("  {name:<width$}  {value}");
    }
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &std::path::Path, report: &T) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
    println!("\nreport written to {}", path.display());
    Ok(())
}
