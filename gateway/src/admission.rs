//! Honest overload for money work (charges, refunds, adjustments, task creation): an operation is
//! admitted only while the node can do it soon, before its idempotency key is claimed, so a
//! refusal costs nothing and changes nothing. The signals:
//!
//! - the node's queueing delay: the ledger's ([`domain::ledger::Ledger::queue_delay`], account
//!   batches waiting for a committer) or the runtime's (how late a 10 ms timer fires: every task
//!   waits that long for a core when the machine is saturated); when either has been longer than
//!   `ledger.max_queue_ms` for 100 ms on end, new work is refused at once (a shorter stall, such
//!   as one slow disk flush, is absorbed: the work admitted meanwhile waits it out);
//! - a limit on money operations in flight on the node, adapted to their latency (AIMD): every
//!   100 ms window in which more than 5 % of the admitted operations took longer than
//!   `ledger.latency_target_ms` (from admission to answer) lowers the limit by a tenth; a window
//!   within the target in which the operations in flight reached the limit raises it by a tenth.
//!   It stays between 8 (or `ledger.max_in_flight`, if smaller) and `ledger.max_in_flight`. With
//!   the target at 0 the limit is `ledger.max_in_flight`, fixed;
//! - the wait for a place (an adaptive queue timeout): a request beyond the limit waits at most
//!   `ledger.max_queue_ms` for one, which absorbs a burst; but after a 100 ms window in which a
//!   request waited that long in vain (the queue did not drain: the node is over capacity, not
//!   hit by a burst), the wait is cut to a fifth of it, until a window passes with no request
//!   giving up. Beyond capacity the admitted requests then wait ~10 ms instead of ~50 ms.
//!
//! Refusals are 503 `service_unavailable` with `Retry-After` (retry with the same
//! `Idempotency-Key`), counted in `ledger_shed_total{reason}`; the limit is the gauge
//! `ledger_concurrency_limit`. The requests that are admitted keep a bounded latency instead of
//! queueing for seconds behind the pool.

use crate::error::ApiError;
use axum::http::StatusCode;
use domain::ledger::Ledger;
use shared::ErrorCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

/// The admission control of one node.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: Arc<Limit>,
    max_wait: Duration,
    queue: Queue,
    /// How late the runtime's probe timer fired last, in microseconds.
    lag_us: Arc<AtomicU64>,
    stall: Stall,
}

/// Since when a queueing delay (the ledger's or the runtime's) has been over the bound.
#[derive(Debug)]
struct Stall {
    base: Instant,
    /// Microseconds since `base` when the delay went over, plus one; 0 while it is not over.
    over_since_us: AtomicU64,
}

impl Stall {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            over_since_us: AtomicU64::new(0),
        }
    }

    /// Whether a delay that is `over` the bound now has been over it for `WINDOW` on end.
    fn persists(&self, over: bool) -> bool {
        if !over {
            self.over_since_us.store(0, Ordering::Release);
            return false;
        }
        let now = self.base.elapsed().as_micros() as u64 + 1;
        let since =
            match self
                .over_since_us
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        now - since >= WINDOW.as_micros() as u64
    }
}

/// The probe's period.
const PROBE: Duration = Duration::from_millis(10);

/// How often the in-flight limit is reconsidered.
const WINDOW: Duration = Duration::from_millis(100);

/// The lowest the adaptive limit goes (unless `max_in_flight` is lower).
const MIN_LIMIT: usize = 8;

/// A place among the money operations in flight, held until the request is answered; its drop
/// reports the operation's latency to the limit.
#[derive(Debug)]
pub struct Admitted {
    permit: Option<OwnedSemaphorePermit>,
    arrived: Instant,
    limit: Arc<Limit>,
    permits: Arc<Semaphore>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(permit) = self.permit.take()
            && self.limit.retire_one()
        {
            // The limit was lowered while this place was taken: the place goes away with it.
            permit.forget();
        }
        self.limit.completed(self.arrived.elapsed(), &self.permits);
    }
}

/// The adaptive in-flight limit (see the module documentation). The semaphore holds `total`
/// places (taken or free); `wanted` is where the limit should be: a lowered limit forgets free
/// places at once and taken ones as they come back.
#[derive(Debug)]
struct Limit {
    min: usize,
    max: usize,
    /// `None`: the limit is fixed at `max`.
    target: Option<Duration>,
    total: AtomicUsize,
    wanted: AtomicUsize,
    in_flight: AtomicUsize,
    window: Mutex<Window>,
}

/// The operations completed in the current window.
#[derive(Debug)]
struct Window {
    started: Instant,
    samples: u32,
    over_target: u32,
    /// Most operations in flight at once during the window.
    peak: usize,
}

impl Limit {
    fn new(max: usize, target: Option<Duration>) -> Self {
        metrics::gauge!("ledger_concurrency_limit").set(max as f64);
        Self {
            min: MIN_LIMIT.min(max),
            max,
            target,
            total: AtomicUsize::new(max),
            wanted: AtomicUsize::new(max),
            in_flight: AtomicUsize::new(0),
            window: Mutex::new(Window {
                started: Instant::now(),
                samples: 0,
                over_target: 0,
                peak: 0,
            }),
        }
    }

    /// The limit as it stands.
    fn current(&self) -> usize {
        self.wanted.load(Ordering::Acquire)
    }

    /// One more operation in flight.
    fn admitted(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if let Ok(mut window) = self.window.lock() {
            window.peak = window.peak.max(now);
        }
    }

    /// Whether a returning place must be forgotten (there are more places than wanted).
    fn retire_one(&self) -> bool {
        let wanted = self.wanted.load(Ordering::Acquire);
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                (total > wanted).then(|| total - 1)
            })
            .is_ok()
    }

    /// An operation took `latency`; at the end of a window, the limit moves.
    fn completed(&self, latency: Duration, permits: &Semaphore) {
        let Some(target) = self.target else {
            return;
        };
        let Ok(mut window) = self.window.lock() else {
            return;
        };
        window.samples += 1;
        if latency > target {
            window.over_target += 1;
        }
        if window.started.elapsed() < WINDOW {
            return;
        }
        let wanted = self.current();
        let next = if window.over_target * 20 > window.samples {
            // More than 5 % over the target: the P95 is above it.
            wanted.saturating_sub((wanted / 10).max(1)).max(self.min)
        } else if window.peak * 10 >= wanted * 9 {
            // Within the target and the limit was what held the work back.
            (wanted + (wanted / 10).max(1)).min(self.max)
        } else {
            wanted
        };
        *window = Window {
            started: Instant::now(),
            samples: 0,
            over_target: 0,
            peak: self.in_flight.load(Ordering::Acquire),
        };
        drop(window);
        self.set(next, permits);
    }

    /// Moves the limit to `next` places.
    fn set(&self, next: usize, permits: &Semaphore) {
        self.wanted.store(next, Ordering::Release);
        metrics::gauge!("ledger_concurrency_limit").set(next as f64);
        let total = self.total.load(Ordering::Acquire);
        if next > total {
            permits.add_permits(next - total);
            self.total.fetch_add(next - total, Ordering::AcqRel);
        } else if next < total {
            let forgotten = permits.forget_permits(total - next);
            self.total.fetch_sub(forgotten, Ordering::AcqRel);
        }
    }
}

/// The adaptive wait for a place (see the module documentation).
#[derive(Debug)]
struct Queue {
    /// The wait bound while the queue stands.
    short_wait: Duration,
    standing: AtomicBool,
    window: Mutex<QueueWindow>,
}

#[derive(Debug)]
struct QueueWindow {
    started: Instant,
    /// Whether a request gave up waiting for a place in the window.
    gave_up: bool,
}

impl Queue {
    fn new(max_wait: Duration) -> Self {
        metrics::gauge!("ledger_queue_standing").set(0.0);
        Self {
            short_wait: max_wait / 5,
            standing: AtomicBool::new(false),
            window: Mutex::new(QueueWindow {
                started: Instant::now(),
                gave_up: false,
            }),
        }
    }

    /// How long a request beyond the limit may wait for a place now.
    fn wait_bound(&self, max_wait: Duration) -> Duration {
        if self.standing.load(Ordering::Acquire) {
            self.short_wait
        } else {
            max_wait
        }
    }

    /// A request got a place, or gave up waiting for one; at the end of a window, says whether
    /// the queue stood through it (someone gave up).
    fn asked(&self, gave_up: bool) {
        let Ok(mut window) = self.window.lock() else {
            return;
        };
        window.gave_up |= gave_up;
        if window.started.elapsed() < WINDOW {
            return;
        }
        let standing = window.gave_up;
        *window = QueueWindow {
            started: Instant::now(),
            gave_up: false,
        };
        drop(window);
        if self.standing.swap(standing, Ordering::AcqRel) != standing {
            metrics::gauge!("ledger_queue_standing").set(if standing { 1.0 } else { 0.0 });
        }
    }
}

impl Admission {
    /// At most `max_in_flight` operations at once (fewer while their latency exceeds `target`,
    /// when given), none waiting longer than `max_wait`.
    pub fn new(max_in_flight: usize, max_wait: Duration, target: Option<Duration>) -> Self {
        metrics::describe_counter!(
            "ledger_shed_total",
            "Money operations refused with 503 before any work because the node was at capacity"
        );
        metrics::describe_gauge!(
            "runtime_lag_seconds",
            "How late a 10 ms timer fired on the node's runtime (scheduling delay)"
        );
        metrics::describe_gauge!(
            "ledger_queue_standing",
            "1 while requests give up waiting for a place among the money operations (beyond \
             capacity: the wait for a place is cut to a fifth), else 0"
        );
        metrics::describe_gauge!(
            "ledger_concurrency_limit",
            "Money operations the node admits at once (adapted to their latency)"
        );
        let lag_us = Arc::new(AtomicU64::new(0));
        tokio::spawn(probe(lag_us.clone()));
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            limit: Arc::new(Limit::new(max_in_flight, target)),
            max_wait,
            queue: Queue::new(max_wait),
            lag_us,
            stall: Stall::new(),
        }
    }

    /// The runtime's scheduling delay, as last measured.
    pub fn runtime_lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Acquire))
    }

    /// The in-flight limit as it stands.
    pub fn limit(&self) -> usize {
        self.limit.current()
    }

    /// A place for one money operation, or the 503 to answer.
    pub async fn admit(&self, ledger: &Ledger) -> Result<Admitted, ApiError> {
        self.delays(ledger.queue_delay(), self.runtime_lag())?;
        self.place().await
    }

    /// The 503 to answer when the ledger's queueing delay or the runtime's lag has been over the
    /// bound for a window on end.
    fn delays(&self, queue_delay: Duration, runtime_lag: Duration) -> Result<(), ApiError> {
        let queue_over = queue_delay > self.max_wait;
        if self
            .stall
            .persists(queue_over || runtime_lag > self.max_wait)
        {
            return Err(shed(if queue_over {
                "queue_delay"
            } else {
                "runtime_lag"
            }));
        }
        Ok(())
    }

    /// A place among the operations in flight, waiting at most `max_wait` for one.
    async fn place(&self) -> Result<Admitted, ApiError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.queue.asked(false);
                permit
            }
            Err(TryAcquireError::Closed) => return Err(shed("closed")),
            Err(TryAcquireError::NoPermits) => {
                let bound = self.queue.wait_bound(self.max_wait);
                match tokio::time::timeout(bound, self.permits.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => {
                        self.queue.asked(false);
                        permit
                    }
                    _ => {
                        self.queue.asked(true);
                        return Err(shed("in_flight"));
                    }
                }
            }
        };
        self.limit.admitted();
        // The latency the limit watches starts here: a wait for a place is the limit's own doing.
        Ok(Admitted {
            permit: Some(permit),
            arrived: Instant::now(),
            limit: self.limit.clone(),
            permits: self.permits.clone(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Admission with at most `max` in flight, a 50 ms wait bound and a 50 ms latency target.
    fn adaptive(max: usize) -> Admission {
        let bound = Duration::from_millis(50);
        Admission::new(max, bound, Some(bound))
    }

    /// Admits `n` operations and answers each after `latency` (paused clock), `windows` times.
    async fn run(admission: &Admission, n: usize, latency: Duration, windows: usize) {
        for _ in 0..windows {
            let mut admitted = Vec::new();
            for _ in 0..n {
                admitted.push(admission.place().await.expect("a place"));
            }
            tokio::time::advance(latency.max(WINDOW)).await;
            drop(admitted);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_narrow_the_limit_down_to_its_floor_and_fast_busy_ones_widen_it_again() {
        let admission = adaptive(64);
        assert_eq!(admission.limit(), 64);

        run(&admission, 64, Duration::from_millis(200), 1).await;
        assert_eq!(admission.limit(), 58, "a slow window takes a tenth off");
        run(&admission, 8, Duration::from_millis(200), 40).await;
        assert_eq!(admission.limit(), MIN_LIMIT, "never below the floor");
        assert_eq!(
            admission.permits.available_permits(),
            MIN_LIMIT,
            "the places beyond the limit are gone"
        );

        // Fast answers while every place is taken: the limit grows back to its ceiling.
        for _ in 0..60 {
            let limit = admission.limit();
            let mut admitted = Vec::new();
            for _ in 0..limit {
                admitted.push(admission.place().await.expect("a place"));
            }
            tokio::time::advance(WINDOW).await;
            // Answered within the target (the window has passed; the latency is re-stamped).
            for place in &mut admitted {
                place.arrived = Instant::now();
            }
            drop(admitted);
        }
        assert_eq!(admission.limit(), 64, "never above max_in_flight");
        assert_eq!(admission.permits.available_permits(), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn a_narrowed_limit_makes_the_next_request_wait_then_shed() {
        let admission = adaptive(16);
        run(&admission, 4, Duration::from_millis(500), 10).await;
        let limit = admission.limit();
        assert!(limit < 16, "narrowed to {limit}");
        let mut held = Vec::new();
        for _ in 0..limit {
            held.push(admission.place().await.expect("within the limit"));
        }
        let refused = admission.place().await.expect_err("beyond the limit");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert!(
            admission.place().await.is_ok(),
            "a place again once answered"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_giving_up_on_a_place_cut_the_wait_for_one_until_a_window_passes_without() {
        let admission = Admission::new(1, Duration::from_millis(50), None);
        let held = admission.place().await.expect("the only place");
        let waited = || async {
            let asked = Instant::now();
            let refused = admission.place().await.expect_err("no place");
            assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
            asked.elapsed()
        };
        // A burst: the full bound, until the window (100 ms) in which requests gave up closes.
        for _ in 0..2 {
            assert_eq!(waited().await, Duration::from_millis(50));
        }
        // The queue stands: the wait is cut to 10 ms.
        assert_eq!(waited().await, Duration::from_millis(10));
        for _ in 0..20 {
            assert_eq!(waited().await, Duration::from_millis(10), "while it stands");
        }
        // Places are free again: the window with the give-ups closes, then one without any.
        drop(held);
        for _ in 0..2 {
            let place = admission.place().await.expect("a free place");
            tokio::time::advance(WINDOW).await;
            drop(place);
        }
        let held = admission.place().await.expect("a free place");
        assert_eq!(
            waited().await,
            Duration::from_millis(50),
            "a burst waits in full again"
        );
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queueing_delay_over_the_bound_sheds_only_once_it_lasts_a_window() {
        let admission = adaptive(64);
        let (short, long) = (Duration::from_millis(10), Duration::from_millis(80));
        assert!(
            admission.delays(long, short).is_ok(),
            "a stall is absorbed at first"
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(
            admission.delays(short, long).is_ok(),
            "60 ms over: still absorbed"
        );
        tokio::time::advance(Duration::from_millis(40)).await;
        let refused = admission
            .delays(long, short)
            .expect_err("100 ms over: shed");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            admission.delays(short, long).is_err(),
            "the lag alone still counts"
        );
        // Back under the bound: the next stall is absorbed again.
        assert!(admission.delays(short, short).is_ok());
        assert!(
            admission.delays(long, long).is_ok(),
            "a new stall starts its own window"
        );
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(admission.delays(long, long).is_ok());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(admission.delays(long, long).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_target_the_limit_stays_at_max_in_flight() {
        let admission = Admission::new(32, Duration::from_millis(50), None);
        run(&admission, 32, Duration::from_secs(1), 5).await;
        assert_eq!(admission.limit(), 32);
        assert_eq!(admission.permits.available_permits(), 32);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_answers_below_the_limit_leave_it_where_it_is() {
        let admission = adaptive(64);
        run(&admission, 8, Duration::from_millis(200), 3).await;
        let fast_one = || async {
            let mut place = admission.place().await.expect("a place");
            tokio::time::advance(WINDOW).await;
            place.arrived = Instant::now();
            drop(place);
        };
        // The first fast answer closes the window the slow ones filled.
        fast_one().await;
        let narrowed = admission.limit();
        assert!(narrowed < 64);
        for _ in 0..5 {
            fast_one().await;
        }
        assert_eq!(
            admission.limit(),
            narrowed,
            "one in flight is no reason to widen"
        );
    }
}
