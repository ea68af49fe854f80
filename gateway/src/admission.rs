//! Honest overload for money work (charges, refunds, adjustments, task creation): an operation is
//! admitted only while the node can do it soon, before its idempotency key is claimed, so a
//! refusal costs nothing and changes nothing. Two signals, both bounded by `ledger.max_queue_ms`:
//!
//! - the node's queueing delay: the ledger's ([`domain::ledger::Ledger::queue_delay`], account
//!   batches waiting for a committer) or the runtime's (how late a 10 ms timer fires: every task
//!   waits that long for a core when the machine is saturated); when either is longer than the
//!   bound, new work is refused at once;
//! - a cap on money operations in flight on the node (`ledger.max_in_flight`): a request waits at
//!   most the bound for a place.
//!
//! Refusals are 503 `service_unavailable` with `Retry-After` (retry with the same
//! `Idempotency-Key`), counted in `ledger_shed_total{reason}`. The requests that are admitted keep
//! a latency near the unloaded one instead of queueing for seconds behind the pool.

use crate::error::ApiError;
use axum::http::StatusCode;
use domain::ledger::Ledger;
use shared::ErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The admission control of one node.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    max_wait: Duration,
    /// How late the runtime's probe timer fired last, in microseconds.
    lag_us: Arc<AtomicU64>,
}

/// The probe's period.
const PROBE: Duration = Duration::from_millis(10);

/// A place among the money operations in flight, held until the request is answered.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl Admission {
    /// At most `max_in_flight` operations at once, none waiting longer than `max_wait`.
    pub fn new(max_in_flight: usize, max_wait: Duration) -> Self {
        metrics::describe_counter!(
            "ledger_shed_total",
            "Money operations refused with 503 before any work because the node was at capacity"
        );
        metrics::describe_gauge!(
            "runtime_lag_seconds",
            "How late a 10 ms timer fired on the node's runtime (scheduling delay)"
        );
        let lag_us = Arc::new(AtomicU64::new(0));
        tokio::spawn(probe(lag_us.clone()));
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_wait,
            lag_us,
        }
    }

    /// The runtime's scheduling delay, as last measured.
    pub fn runtime_lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Acquire))
    }

    /// A place for one money operation, or the 503 to answer.
    pub async fn admit(&self, ledger: &Ledger) -> Result<Admitted, ApiError> {
        if ledger.queue_delay() > self.max_wait {
            return Err(shed("queue_delay"));
        }
        if self.runtime_lag() > self.max_wait {
            return Err(shed("runtime_lag"));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => return Ok(Admitted(permit)),
            Err(TryAcquireError::Closed) => return Err(shed("closed")),
            Err(TryAcquireError::NoPermits) => {}
        }
        match tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Admitted(permit)),
            _ => Err(shed("in_flight")),
        }
    }
}

/// Measures how late a 10 ms timer fires, forever (the task ends with the runtime). A lag seen
/// decays by half each period, so one slow tick does not shed for long.
async fn probe(lag_us: Arc<AtomicU64>) {
    loop {
        let started = Instant::now();
        tokio::time::sleep(PROBE).await;
        let late = started.elapsed().saturating_sub(PROBE).as_micros() as u64;
        let previous = lag_us.load(Ordering::Acquire);
        let lag = late.max(previous / 2);
        lag_us.store(lag, Ordering::Release);
        metrics::gauge!("runtime_lag_seconds").set(lag as f64 / 1e6);
    }
}

fn shed(reason: &'static str) -> ApiError {
    metrics::counter!("ledger_shed_total", "reason" => reason).increment(1);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServiceUnavailable,
        "the node is at capacity for money operations; nothing was done: retry shortly with the \
         same Idempotency-Key",
    )
}
