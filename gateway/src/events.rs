//! Product events ("埋点"): the registry read from `docs/events.md` (compiled in: a name or prop
//! it does not list is refused), a bounded queue that requests put events into without waiting
//! (a full queue drops and counts), a writer that inserts them in batches, and the retention job
//! that keeps monthly partitions ahead and drops old ones.

use crate::settings::EventsSettings;
use chrono::{DateTime, Datelike, Utc};
use serde_json::{Map, Value};
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The registry document, as compiled into the binary.
pub const REGISTRY_DOCUMENT: &str = include_str!("../../docs/events.md");

/// Where an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Sent by a client through `POST /api/v1/events`.
    Client,
    /// Recorded by the node itself.
    Server,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Server => "server",
        }
    }
}

/// The registered events: name → (allowed props, source).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    events: HashMap<String, (BTreeSet<String>, Source)>,
}

fn names_in(cell: &str) -> Vec<String> {
    cell.split(',')
        .map(|part| part.trim().trim_matches('`').to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

impl Registry {
    /// Parses the table under `## Events`.
    pub fn parse(document: &str) -> anyhow::Result<Self> {
        let mut events = HashMap::new();
        let mut in_table = false;
        for line in document.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("## ") {
                in_table = trimmed == "## Events";
                continue;
            }
            if !in_table || !trimmed.starts_with('|') || trimmed.starts_with("| name") {
                continue;
            }
            let cells: Vec<&str> = trimmed
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            if cells.len() < 3 || cells[0].starts_with("---") {
                continue;
            }
            let name = cells[0].trim_matches('`').to_owned();
            let source = match cells[2] {
                "client" => Source::Client,
                "server" => Source::Server,
                other => anyhow::bail!("docs/events.md: `{name}` has source `{other}`"),
            };
            events.insert(name, (names_in(cells[1]).into_iter().collect(), source));
        }
        anyhow::ensure!(!events.is_empty(), "docs/events.md registers no event");
        Ok(Self { events })
    }

    /// The registry compiled into the binary.
    pub fn builtin() -> anyhow::Result<Self> {
        Self::parse(REGISTRY_DOCUMENT)
    }

    /// Why `name` with `props` sent by a client is refused, if it is.
    pub fn check(&self, name: &str, props: &Map<String, Value>) -> Result<(), String> {
        let Some((allowed, source)) = self.events.get(name) else {
            return Err(format!(
                "`{name}` is not a registered event (docs/events.md)"
            ));
        };
        if *source != Source::Client {
            return Err(format!(
                "`{name}` is recorded by the server, not sent by clients"
            ));
        }
        for (prop, value) in props {
            if !allowed.contains(prop) {
                return Err(format!("`{name}` has no prop `{prop}`"));
            }
            let fits = match value {
                Value::String(text) => text.chars().count() <= 256 && !text.contains('\0'),
                Value::Number(_) | Value::Bool(_) | Value::Null => true,
                _ => false,
            };
            if !fits {
                return Err(format!(
                    "`{name}.{prop}` must be a string (≤ 256 characters), a number or a boolean"
                ));
            }
        }
        Ok(())
    }
}

/// One event on its way to the table.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Its name.
    pub name: String,
    /// Who.
    pub user_id: Option<String>,
    /// From where.
    pub source: Source,
    /// When it happened.
    pub ts: DateTime<Utc>,
    /// Its props.
    pub props: Value,
}

/// Where requests put events: never waits.
#[derive(Debug, Clone)]
pub struct EventSink {
    sender: mpsc::Sender<EventRow>,
    /// The registry.
    pub registry: Arc<Registry>,
}

impl EventSink {
    /// A sink, and the receiver its writer drains.
    pub fn new(settings: &EventsSettings) -> anyhow::Result<(Self, mpsc::Receiver<EventRow>)> {
        let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
        Ok((
            Self {
                sender,
                registry: Arc::new(Registry::builtin()?),
            },
            receiver,
        ))
    }

    /// Queues an event; `false` (and counted) when the queue is full.
    pub fn offer(&self, row: EventRow) -> bool {
        let source = row.source.as_str();
        match self.sender.try_send(row) {
            Ok(()) => {
                metrics::counter!("events_accepted_total", "source" => source).increment(1);
                true
            }
            Err(_) => {
                metrics::counter!("events_dropped_total", "source" => source).increment(1);
                false
            }
        }
    }

    /// Records a server event for `user_id` now.
    pub fn server(&self, name: &str, user_id: Option<&str>, props: Value) {
        self.offer(EventRow {
            name: name.to_owned(),
            user_id: user_id.map(str::to_owned),
            source: Source::Server,
            ts: Utc::now(),
            props,
        });
    }
}

/// Drains the queue into `product_events` in batches until the senders are gone.
pub async fn run_writer(
    db: PgPool,
    mut receiver: mpsc::Receiver<EventRow>,
    settings: EventsSettings,
) {
    let pause = Duration::from_millis(settings.flush_interval_ms);
    let mut batch = Vec::with_capacity(settings.batch_size);
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        while batch.len() < settings.batch_size {
            match receiver.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        if let Err(error) = insert(&db, &batch).await {
            metrics::counter!("events_dropped_total", "source" => "writer")
                .increment(batch.len() as u64);
            tracing::warn!(%error, events = batch.len(), "cannot store product events; dropped");
        }
        batch.clear();
        tokio::time::sleep(pause).await;
    }
}

async fn insert(db: &PgPool, batch: &[EventRow]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into product_events (name, user_id, source, ts, props) \
         select * from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[])",
    )
    .bind(
        batch
            .iter()
            .map(|row| row.name.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|row| row.user_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|row| row.source.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|row| row.ts).collect::<Vec<_>>())
    .bind(
        batch
            .iter()
            .map(|row| row.props.clone())
            .collect::<Vec<_>>(),
    )
    .execute(db)
    .await?;
    Ok(())
}

fn month_start(year: i32, month: u32) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::from_ymd_opt(year, month, 1)
}

fn add_months(date: chrono::NaiveDate, months: i32) -> Option<chrono::NaiveDate> {
    let total = date.year() * 12 + date.month0() as i32 + months;
    month_start(total.div_euclid(12), total.rem_euclid(12) as u32 + 1)
}

/// The retention job: partitions for this month and the next two exist; partitions that end
/// before `retention_months` ago are dropped.
pub async fn retention(db: &PgPool, retention_months: u32) -> anyhow::Result<String> {
    let today = Utc::now().date_naive();
    let this_month = month_start(today.year(), today.month()).unwrap_or(today);
    let mut created = 0;
    for ahead in 0..3 {
        let (Some(start), Some(end)) = (
            add_months(this_month, ahead),
            add_months(this_month, ahead + 1),
        ) else {
            continue;
        };
        let name = format!("product_events_{}", start.format("%Y%m"));
        let exists: bool = sqlx::query_scalar("select to_regclass($1) is not null")
            .bind(&name)
            .fetch_one(db)
            .await?;
        if !exists {
            sqlx::query(&format!(
                "create table if not exists {name} partition of product_events \
                 for values from ('{start}') to ('{end}')"
            ))
            .execute(db)
            .await?;
            created += 1;
        }
    }
    let oldest_kept = add_months(this_month, -(retention_months as i32)).unwrap_or(this_month);
    let partitions: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid \
          join pg_class p on p.oid = i.inhparent \
         where p.relname = 'product_events' and c.relname ~ '^product_events_[0-9]{6}$'",
    )
    .fetch_all(db)
    .await?;
    let mut dropped = 0;
    for name in partitions {
        let Some(month) =
            chrono::NaiveDate::parse_from_str(&format!("{}01", &name[15..]), "%Y%m%d").ok()
        else {
            continue;
        };
        if add_months(month, 1).is_some_and(|end| end <= oldest_kept) {
            sqlx::query(&format!("drop table {name}"))
                .execute(db)
                .await?;
            dropped += 1;
        }
    }
    Ok(format!("{created} partitions created, {dropped} dropped"))
}

/// Records `task.created` or `task.finished` for a task change.
pub fn task_event(sink: &EventSink, name: &str, change: &domain::tasks::TaskChange) {
    let task = &change.task;
    let props = match name {
        "task.created" => serde_json::json!({
            "task_id": task.id, "task_type": task.task_type, "units": task.units,
            "estimated_credits": task.estimated_credits,
        }),
        _ => serde_json::json!({
            "task_id": task.id, "task_type": task.task_type, "state": task.status,
            "actual_cost": task.actual_cost,
        }),
    };
    sink.server(name, Some(&task.owner_id), props);
}
