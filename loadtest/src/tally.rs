//! What the simulated clients observed, shared by all of them: live sessions, joins and their
//! errors, disconnect codes, publications delivered (unique, duplicated, recovered), delivery
//! latency from each publication's `ts`, and a per-second timeline for the chart.

use crate::report::{self, Latency};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Sequence numbers a session received, per channel (to tell duplicates).
pub type Seen = HashMap<String, HashSet<u64>>;

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub second: f64,
    /// Sessions connected.
    pub live: i64,
    /// Deliveries during the second.
    pub deliveries: u64,
    /// Median delivery latency during the second (ms).
    pub p50_ms: f64,
    /// 99th percentile delivery latency during the second (ms).
    pub p99_ms: f64,
}

/// Deliveries of one publication (fan-out: when did the last subscriber get it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// Subscribers that got it.
    pub deliveries: u64,
    /// Latest delivery, µs since the epoch.
    pub last_us: i64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or_default()
}

/// Everything observed.
#[derive(Debug)]
pub struct Tally {
    started: Instant,
    live: AtomicI64,
    joins: AtomicU64,
    connect_errors: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    disconnects: Mutex<BTreeMap<u16, u64>>,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    recovered: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    window: Mutex<(Histogram<u64>, u64)>,
    rejoin: Mutex<Histogram<u64>>,
    spreads: Option<Mutex<HashMap<u64, Spread>>>,
    timeline: Mutex<Vec<Sample>>,
}

impl Tally {
    /// A tally; `spreads` keeps per-publication delivery spreads (fan-out).
    pub fn new(spreads: bool) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            live: AtomicI64::new(0),
            joins: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            disconnects: Mutex::new(BTreeMap::new()),
            delivered: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            latency: Mutex::new(report::histogram()),
            window: Mutex::new((report::histogram(), 0)),
            rejoin: Mutex::new(report::histogram()),
            spreads: spreads.then(|| Mutex::new(HashMap::new())),
            timeline: Mutex::new(Vec::new()),
        })
    }

    /// A publication a session received (`recovered`: in a connect/subscribe reply).
    pub fn publication(&self, channel: &str, data: &Value, seen: &mut Seen, recovered: bool) {
        let Some(seq) = data.get("seq").and_then(Value::as_u64) else {
            return;
        };
        if !seen.entry(channel.to_owned()).or_default().insert(seq) {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if recovered {
            self.recovered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = now_us();
        if let Some(ts) = data.get("ts").and_then(Value::as_i64) {
            let latency = Duration::from_micros((now - ts * 1000).max(1) as u64);
            report::record(&mut lock(&self.latency), latency);
            let mut window = lock(&self.window);
            report::record(&mut window.0, latency);
            window.1 += 1;
        }
        if let Some(spreads) = &self.spreads {
            let mut spreads = lock(spreads);
            let spread = spreads.entry(seq).or_default();
            spread.deliveries += 1;
            spread.last_us = spread.last_us.max(now);
        }
    }

    /// A session (re)joined; `after` is how long it was away.
    pub fn joined(&self, after: Option<Duration>) {
        self.live.fetch_add(1, Ordering::Relaxed);
        self.joins.fetch_add(1, Ordering::Relaxed);
        if let Some(after) = after {
            report::record(&mut lock(&self.rejoin), after);
        }
    }

    /// A session left; `code` when the server closed it.
    pub fn left(&self, code: Option<u16>) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        if let Some(code) = code {
            *lock(&self.disconnects).entry(code).or_default() += 1;
        }
    }

    /// A session could not join.
    pub fn connect_error(&self, error: &str) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        let key: String = error.chars().take(80).collect();
        *lock(&self.errors).entry(key).or_default() += 1;
    }

    /// Sessions connected now.
    pub fn live(&self) -> i64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Joins so far (first joins and rejoins).
    pub fn joins(&self) -> u64 {
        self.joins.load(Ordering::Relaxed)
    }

    /// Failed joins so far.
    pub fn connect_errors(&self) -> u64 {
        self.connect_errors.load(Ordering::Relaxed)
    }

    /// Unique deliveries so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Appends a timeline sample and starts a new window.
    pub fn sample(&self) {
        let (p50_ms, p99_ms, deliveries) = {
            let mut window = lock(&self.window);
            let latency = Latency::of(&window.0);
            let deliveries = window.1;
            window.0.reset();
            window.1 = 0;
            (latency.p50_ms, latency.p99_ms, deliveries)
        };
        lock(&self.timeline).push(Sample {
            second: self.started.elapsed().as_secs_f64(),
            live: self.live(),
            deliveries,
            p50_ms,
            p99_ms,
        });
    }

    /// Samples every second until `stop`.
    pub fn sample_every_second(self: &Arc<Self>, stop: CancellationToken) {
        let tally = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => tally.sample(),
                }
            }
        });
    }

    /// The summary.
    pub fn summary(&self) -> Observed {
        Observed {
            joins: self.joins(),
            connect_errors: self.connect_errors(),
            errors: lock(&self.errors).clone(),
            disconnects: lock(&self.disconnects)
                .iter()
                .map(|(code, count)| (code.to_string(), *count))
                .collect(),
            delivered: self.delivered(),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            recovered: self.recovered.load(Ordering::Relaxed),
            latency: Latency::of(&lock(&self.latency)),
            rejoin: Latency::of(&lock(&self.rejoin)),
            timeline: lock(&self.timeline).clone(),
        }
    }

    /// Per-publication spreads (fan-out), by sequence number.
    pub fn spreads(&self) -> HashMap<u64, Spread> {
        self.spreads
            .as_ref()
            .map(|spreads| lock(spreads).clone())
            .unwrap_or_default()
    }
}

/// The tally as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    /// Successful joins (first joins and rejoins).
    pub joins: u64,
    /// Failed joins.
    pub connect_errors: u64,
    /// Failed joins by error.
    pub errors: BTreeMap<String, u64>,
    /// Server closes by code.
    pub disconnects: BTreeMap<String, u64>,
    /// Unique publications delivered (live and recovered).
    pub delivered: u64,
    /// Publications delivered more than once to a session.
    pub duplicated: u64,
    /// Of `delivered`, those that came through recovery.
    pub recovered: u64,
    /// Live delivery latency from the publication's `ts`.
    pub latency: Latency,
    /// Time from a dropped socket to the session's rejoin.
    pub rejoin: Latency,
    /// Per-second samples.
    pub timeline: Vec<Sample>,
}
