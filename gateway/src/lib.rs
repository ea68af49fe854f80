//! The gateway: axum HTTP API, auth, permission matrix, metrics, and the composition root that
//! wires the domain and the hub into a running node.

pub mod admission;
pub mod auth;
pub mod console;
pub mod demo_worker;
pub mod error;
pub mod events;
pub mod http_metrics;
pub mod hygiene;
pub mod idempotency;
pub mod jobs;
pub mod license_cache;
pub mod masking;
pub mod pagination;
pub mod payments;
pub mod permissions;
pub mod problem;
pub mod readiness;
pub mod realtime;
pub mod reconcile;
pub mod refusals;
pub mod risk;
pub mod routes;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod wechat_sandbox;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware;
use routes::ops::OpenApiDocument;
use settings::Settings;
use state::AppState;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Builds the node's state, applies migrations when configured, and serves on `listener` until
/// `shutdown` is cancelled, then drains for at most the grace period.
pub async fn launch(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    http_metrics::install()?;
    let state = AppState::new(settings).await?;
    if state.settings.database.migrate_on_start {
        domain::db::migrate(&state.db)
            .await
            .context("applying migrations")?;
    }
    serve(state, listener, shutdown).await
}

/// Serves an already built state (tests use it to keep a handle on the state).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    let grace = state.settings.shutdown_grace();
    let app = router(state.clone())?;
    tracing::info!(%address, node = %state.settings.node_id, "listening");
    let draining = state.draining.clone();
    let signal = shutdown.clone();
    let limits = state.settings.http.clone();
    tokio::spawn(async move {
        signal.cancelled().await;
        draining.store(true, Ordering::Release);
        tracing::info!("shutdown requested: draining");
    });
    let server = server::serve(listener, app, &limits, shutdown.clone());
    let scheduler = tokio::spawn(jobs::run_scheduler(
        state.clone(),
        periodic_jobs(&state),
        shutdown.clone(),
    ));
    let broker = state.realtime.broker.clone();
    let sweep = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            broker.sweep();
            metrics::gauge!("hub_channels").set(broker.subscribed_channels() as f64);
        }
    });
    let mut server = std::pin::pin!(server);
    // Biased: once shutdown is asked, the drain runs even if the server (which stops accepting at
    // once and may have no connection left to wait for) is ready first.
    tokio::select! {
        biased;
        () = shutdown.cancelled() => {
            // Realtime sessions get 3001 spread over a few seconds while HTTP requests finish.
            let spread = std::time::Duration::from_millis(state.settings.realtime.drain_spread_ms);
            let drain = tokio::time::timeout(grace, state.realtime.drain(spread));
            let (_, served) = tokio::join!(drain, tokio::time::timeout(grace, &mut server));
            match served {
                Ok(result) => result.context("serving HTTP")?,
                Err(_) => tracing::warn!(?grace, "grace period over: closing remaining connections"),
            }
        }
        result = &mut server => result.context("serving HTTP")?,
    }
    scheduler.abort();
    sweep.abort();
    state.realtime.supervisor.stop(Some("shutdown".into()));
    state.tasks.stop();
    state.ledger.stop();
    state.db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The node's periodic jobs (each run by one node at a time, see [`jobs`]).
pub fn periodic_jobs(state: &AppState) -> Vec<jobs::Job> {
    let settings = &state.settings;
    let mut list = vec![jobs::Job {
        name: "idempotency.purge",
        schedule: jobs::Schedule::Every(std::time::Duration::from_millis(
            settings.idempotency.purge_interval_ms.max(1000),
        )),
        lease: std::time::Duration::from_secs(60),
        run: Arc::new(|state, _fence| Box::pin(purge_idempotency_keys(state))),
    }];
    list.push(jobs::Job {
        name: "events.retention",
        schedule: jobs::Schedule::Every(std::time::Duration::from_secs(3600)),
        lease: std::time::Duration::from_secs(120),
        run: Arc::new(|state, _fence| {
            Box::pin(async move {
                let months = state.settings.events.retention_months;
                Ok(jobs::Report::done(
                    events::retention(&state.db, months).await?,
                ))
            })
        }),
    });
    if state.wechat.pay.is_some() {
        list.push(payments::query_job(&settings.payments));
        list.push(payments::reconcile_job(&settings.payments));
    }
    list
}

/// Deletes expired idempotency keys, 10,000 per statement.
async fn purge_idempotency_keys(state: AppState) -> anyhow::Result<jobs::Report> {
    const PER_STATEMENT: i64 = 10_000;
    let mut total = 0;
    loop {
        let deleted = domain::idempotency::purge_expired(&state.db, PER_STATEMENT).await?;
        metrics::counter!("idempotency_keys_purged_total").increment(deleted);
        total += deleted;
        if deleted < PER_STATEMENT as u64 {
            return Ok(jobs::Report::done(format!("{total} expired keys deleted")));
        }
    }
}

/// The full router: routes, permission enforcement, limits, telemetry, problem+json.
pub fn router(state: AppState) -> anyhow::Result<Router> {
    let (routes, mut openapi) = routes::all(state.settings.dev_mode).split_for_parts();
    routes::contract::complete(&mut openapi);
    let document = OpenApiDocument(Arc::from(
        openapi.to_pretty_json().context("serializing OpenAPI")?,
    ));
    let timeout = TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        state.settings.request_timeout(),
    );
    let trusted = state.settings.http.trusted_proxies.clone();
    // `Router::layer` wraps each route (and the fallback): the first layer added is the innermost.
    Ok(routes
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::Extension(document))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            permissions::authorize,
        ))
        .layer(middleware::from_fn(hygiene::refuse_nul))
        .layer(DefaultBodyLimit::max(state.settings.http.body_limit_bytes))
        .layer(timeout)
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn(http_metrics::track))
        .layer(middleware::from_fn(problem::finalize))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            // A 5xx is logged once, at error, by the error that caused it (with the request id
            // of this span and the cause chain), not a second time by the trace layer.
            TraceLayer::new_for_http()
                .on_failure(())
                .make_span_with(move |request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str);
                let client_ip = permissions::client_ip(request, &trusted)
                    .map(|ip| ip.to_string())
                    .unwrap_or_default();
                let request_id = request
                    .headers()
                    .get(problem::REQUEST_ID)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!("request", method = %request.method(), route, request_id, client_ip)
            }),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::from_fn(hygiene::sanitize_request_id))
        .with_state(state))
}
