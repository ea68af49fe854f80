//! `GET /api/v1/audit/export`: one kind of record over a time range, streamed as NDJSON or RFC
//! 4180 CSV from one consistent snapshot (a REPEATABLE READ, READ ONLY transaction whose snapshot
//! is taken before the answer starts: a write committed after that is not in the file). Rows are
//! read from PostgreSQL as they are sent, through a small bounded channel, so the node's memory
//! stays flat whatever the row count; a client that stops reading pauses the query. The export is
//! audited (`audit.export`: kind, range, format, rows, whether it completed).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Query, database_error};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::audit::{AuditEntry, Outcome};
use domain::export::{ExportKind, csv_record};
use futures_util::StreamExt;
use serde::Deserialize;
use shared::{ErrorCode, Problem};
use sqlx::Row;

/// Bytes gathered before a chunk is sent.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting for the client at most (the memory an export may hold).
const QUEUE: usize = 4;
/// Exports a node streams at once (each holds a database connection and a snapshot).
static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// The file's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// One JSON object per line (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// RFC 4180 CSV with a header row (`text/csv`).
    Csv,
}

/// `?kind=&from=&to=&format=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// What to export.
    pub kind: ExportKind,
    /// From this time, RFC 3339 (inclusive; a Beijing day for reconciliations).
    pub from: DateTime<Utc>,
    /// Up to this time, RFC 3339 (exclusive).
    pub to: DateTime<Utc>,
    /// `ndjson` (default) or `csv`.
    pub format: Option<ExportFormat>,
}

/// Streams one kind of record over `[from, to)` as NDJSON or CSV from one snapshot (auditor,
/// admin: every kind; finance: ledger, payments, reconciliations). Audited `audit.export`.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", security(("bearer" = [])),
    params(ExportQuery),
    responses(
        (status = 200, description = "The records, streamed (NDJSON or CSV, as asked)",
            content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ExportQuery>,
) -> ApiResult<Response> {
    let kind = query.kind;
    let spec = domain::export::spec(kind);
    if !spec.money && !caller.has_scope("audit:export:all") {
        return Err(ApiError::forbidden(format!(
            "exporting `{}` needs the scope `audit:export:all`",
            kind.as_str()
        )));
    }
    if query.from >= query.to {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidQuery,
            "from must be before to",
        ));
    }
    let format = query.format.unwrap_or_default();
    let permit = RUNNING.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            "too many exports are running on this node; retry shortly",
        )
    })?;
    let mut tx = state.db.begin().await.map_err(database_error)?;
    // The snapshot is taken by the first statement: before the answer starts.
    sqlx::query("set transaction isolation level repeatable read read only")
        .execute(&mut *tx)
        .await
        .map_err(database_error)?;
    sqlx::query("select 1")
        .execute(&mut *tx)
        .await
        .map_err(database_error)?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    let actor = caller.actor();
    let (from, to) = (query.from, query.to);
    let writer_state = state.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut rows: u64 = 0;
        let mut buffer = String::with_capacity(CHUNK * 2);
        let mut completed = true;
        let sql = match format {
            ExportFormat::Ndjson => domain::export::ndjson_query(kind),
            ExportFormat::Csv => {
                buffer.push_str(&csv_record(spec.columns.iter().map(|c| Some(*c))));
                domain::export::csv_query(kind)
            }
        };
        {
            let mut stream = sqlx::query(&sql).bind(from).bind(to).fetch(&mut *tx);
            while let Some(row) = stream.next().await {
                let row = match row {
                    Ok(row) => row,
                    Err(error) => {
                        tracing::error!(%error, kind = kind.as_str(), "export query failed");
                        completed = false;
                        let _ = sender
                            .send(Err(std::io::Error::other("the export failed")))
                            .await;
                        break;
                    }
                };
                match format {
                    ExportFormat::Ndjson => {
                        let line: String = row.try_get(0).unwrap_or_default();
                        buffer.push_str(&line);
                        buffer.push('\n');
                    }
                    ExportFormat::Csv => {
                        let values: Vec<Option<String>> = (0..spec.columns.len())
                            .map(|index| row.try_get::<Option<String>, _>(index).ok().flatten())
                            .collect();
                        buffer.push_str(&csv_record(values.iter().map(Option::as_deref)));
                    }
                }
                rows += 1;
                if buffer.len() >= CHUNK {
                    let chunk = Bytes::from(std::mem::take(&mut buffer));
                    if sender.send(Ok(chunk)).await.is_err() {
                        completed = false; // the client went away
                        break;
                    }
                }
            }
        }
        if completed && !buffer.is_empty() && sender.send(Ok(Bytes::from(buffer))).await.is_err() {
            completed = false;
        }
        drop(tx);
        metrics::counter!("audit_export_rows_total", "kind" => kind.as_str()).increment(rows);
        let detail = serde_json::json!({
            "kind": kind.as_str(), "from": from, "to": to,
            "format": match format { ExportFormat::Ndjson => "ndjson", ExportFormat::Csv => "csv" },
            "rows": rows, "completed": completed,
        });
        let written = domain::audit::record_now(
            &writer_state.db,
            &actor,
            AuditEntry {
                action: "audit.export",
                target_type: Some("export"),
                target_id: Some(kind.as_str()),
                outcome: if completed {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
                detail: Some(detail),
            },
        )
        .await;
        if let Err(error) = written {
            tracing::error!(%error, "cannot audit an export");
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let content_type = match format {
        ExportFormat::Ndjson => "application/x-ndjson",
        ExportFormat::Csv => "text/csv; charset=utf-8; header=present",
    };
    let extension = match format {
        ExportFormat::Ndjson => "ndjson",
        ExportFormat::Csv => "csv",
    };
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}-{}-{}.{extension}\"",
        kind.as_str(),
        from.format("%Y%m%dT%H%M%SZ"),
        to.format("%Y%m%dT%H%M%SZ")
    )) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
