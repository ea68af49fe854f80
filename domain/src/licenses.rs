//! Licenses (`authorizations`): checks, atomic quota consumption, grants and changes. Every check
//! and change writes an `authorization_logs` row; changes also write `audit_access_log`, in the
//! same transaction.

use crate::audit::{self, Actor, AuditEntry, Outcome};
use crate::{DomainError, DomainResult};
use chrono::{DateTime, Utc};
use shared::licenses::{License, LicenseCheck, LicenseStatus, UpdateLicense, Violation};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

const COLUMNS: &str = "id, subject_id, resource, actions, quota_total, quota_used, valid_from, \
                       valid_until, status, granted_by, created_at, updated_at";

fn license_from_row(row: &PgRow) -> Result<License, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(License {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        subject_id: row.try_get("subject_id")?,
        resource: row.try_get("resource")?,
        actions: row.try_get("actions")?,
        quota_total: row.try_get("quota_total")?,
        quota_used: row.try_get("quota_used")?,
        valid_from: row.try_get("valid_from")?,
        valid_until: row.try_get("valid_until")?,
        status: LicenseStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown license status {status}").into(),
        })?,
        granted_by: row.try_get("granted_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Why `license` does not allow `action` at `now` (None: it does). `action` None skips the
/// action check (quota consumption names no action).
pub fn violation(license: &License, action: Option<&str>, now: DateTime<Utc>) -> Option<Violation> {
    match license.status {
        LicenseStatus::Revoked => return Some(Violation::LicenseRevoked),
        LicenseStatus::Suspended => return Some(Violation::LicenseSuspended),
        LicenseStatus::Active => {}
    }
    if now < license.valid_from {
        return Some(Violation::LicenseNotYetValid);
    }
    if license.valid_until.is_some_and(|until| until <= now) {
        return Some(Violation::LicenseExpired);
    }
    if action.is_some_and(|action| !license.actions.iter().any(|granted| granted == action)) {
        return Some(Violation::ActionNotPermitted);
    }
    if license
        .quota_total
        .is_some_and(|total| license.quota_used >= total)
    {
        return Some(Violation::QuotaExhausted);
    }
    None
}

/// The most specific reason among several licenses' refusals: the one a user can act on first.
fn rank(violation: Violation) -> u8 {
    match violation {
        Violation::QuotaExhausted => 0,
        Violation::ActionNotPermitted => 1,
        Violation::LicenseNotYetValid => 2,
        Violation::LicenseExpired => 3,
        Violation::LicenseSuspended => 4,
        Violation::LicenseRevoked => 5,
        Violation::LicenseNotFound => 6,
    }
}

/// The decision for (subject, resource, action) at `now`, from PostgreSQL. Among the subject's
/// licenses for the resource, an allowing one wins (the one with the most quota left); otherwise
/// the most specific refusal is reported. Also returns how long the decision stays true (until
/// the next validity boundary of a license involved), for caching.
pub async fn decide(
    pool: &PgPool,
    subject_id: &str,
    resource: &str,
    action: &str,
    now: DateTime<Utc>,
) -> DomainResult<(LicenseCheck, Option<DateTime<Utc>>)> {
    let rows = sqlx::query(&format!(
        "select {COLUMNS} from authorizations where subject_id = $1 and resource = $2 \
         order by created_at desc, id"
    ))
    .bind(subject_id)
    .bind(resource)
    .fetch_all(pool)
    .await?;
    let licenses: Vec<License> = rows
        .iter()
        .map(license_from_row)
        .collect::<Result<_, _>>()?;
    let next_boundary = licenses
        .iter()
        .flat_map(|license| [Some(license.valid_from), license.valid_until])
        .flatten()
        .filter(|boundary| *boundary > now)
        .min();
    let remaining = |license: &License| license.quota_total.map(|total| total - license.quota_used);
    let allowing = licenses
        .iter()
        .filter(|license| violation(license, Some(action), now).is_none())
        .max_by_key(|license| remaining(license).unwrap_or(i64::MAX));
    let check = match allowing {
        Some(license) => LicenseCheck {
            allowed: true,
            license_id: Some(license.id.clone()),
            remaining_quota: remaining(license),
            valid_until: license.valid_until,
            violation_code: None,
        },
        None => match licenses
            .iter()
            .filter_map(|license| violation(license, Some(action), now).map(|v| (v, license)))
            .min_by_key(|(violation, _)| rank(*violation))
        {
            Some((violation, license)) => LicenseCheck {
                allowed: false,
                license_id: Some(license.id.clone()),
                remaining_quota: remaining(license),
                valid_until: license.valid_until,
                violation_code: Some(violation),
            },
            None => LicenseCheck {
                allowed: false,
                license_id: None,
                remaining_quota: None,
                valid_until: None,
                violation_code: Some(Violation::LicenseNotFound),
            },
        },
    };
    Ok((check, next_boundary))
}

/// One `authorization_logs` row.
#[derive(Debug, Clone)]
pub struct LogEntry<'a> {
    /// The license concerned, if any.
    pub license_id: Option<Uuid>,
    /// The subject.
    pub subject_id: &'a str,
    /// The resource.
    pub resource: Option<&'a str>,
    /// The action checked.
    pub action: Option<&'a str>,
    /// check, consume, grant, suspend, resume, revoke, quota_change, update.
    pub event: &'a str,
    /// Why not, when refused.
    pub violation: Option<Violation>,
    /// Units consumed.
    pub units: Option<i64>,
    /// Extra detail.
    pub detail: Option<serde_json::Value>,
}

/// Writes an `authorization_logs` row on `conn`.
pub async fn log(conn: &mut PgConnection, actor: &Actor, entry: LogEntry<'_>) -> DomainResult<()> {
    sqlx::query(
        "insert into authorization_logs (authorization_id, subject_id, resource, action, event, \
           allowed, violation_code, units, actor_id, request_id, detail) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(entry.license_id)
    .bind(entry.subject_id)
    .bind(entry.resource)
    .bind(entry.action)
    .bind(entry.event)
    .bind(entry.violation.is_none())
    .bind(entry.violation.map(Violation::as_str))
    .bind(entry.units)
    .bind(&actor.id)
    .bind(&actor.request_id)
    .bind(entry.detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a check's decision.
pub async fn log_check(
    pool: &PgPool,
    actor: &Actor,
    subject_id: &str,
    resource: &str,
    action: &str,
    check: &LicenseCheck,
) -> DomainResult<()> {
    let mut conn = pool.acquire().await?;
    let entry = LogEntry {
        license_id: check
            .license_id
            .as_deref()
            .and_then(|id| Uuid::parse_str(id).ok()),
        subject_id,
        resource: Some(resource),
        action: Some(action),
        event: "check",
        violation: check.violation_code,
        units: None,
        detail: None,
    };
    log(&mut conn, actor, entry).await
}

/// A license by id.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> DomainResult<License> {
    let row = sqlx::query(&format!(
        "select {COLUMNS} from authorizations where id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DomainError::NotFound { what: "license" })?;
    Ok(license_from_row(&row)?)
}

/// Uses `units` of the license's quota atomically: one conditional UPDATE, so concurrent
/// consumers can never overdraw it. A refusal is logged too.
pub async fn consume(
    conn: &mut PgConnection,
    actor: &Actor,
    id: Uuid,
    units: i64,
) -> DomainResult<License> {
    if units <= 0 {
        return Err(DomainError::Validation("units must be positive".into()));
    }
    let row = sqlx::query(&format!(
        "update authorizations set quota_used = quota_used + $2 \
          where id = $1 and status = 'active' and valid_from <= now() \
            and (valid_until is null or valid_until > now()) \
            and (quota_total is null or quota_used + $2 <= quota_total) \
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(units)
    .fetch_optional(&mut *conn)
    .await?;
    let (license, refusal) = match row {
        Some(row) => (license_from_row(&row)?, None),
        None => {
            let license = get(&mut *conn, id).await?;
            let refusal =
                violation(&license, None, Utc::now()).unwrap_or(Violation::QuotaExhausted);
            (license, Some(refusal))
        }
    };
    let entry = LogEntry {
        license_id: Some(id),
        subject_id: &license.subject_id,
        resource: Some(&license.resource),
        action: None,
        event: "consume",
        violation: refusal,
        units: Some(units),
        detail: None,
    };
    log(conn, actor, entry).await?;
    match refusal {
        None => Ok(license),
        Some(violation) => Err(DomainError::License(violation)),
    }
}

/// A new license's terms.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The user granted to.
    pub subject_id: String,
    /// The resource.
    pub resource: String,
    /// Actions granted.
    pub actions: Vec<String>,
    /// Total quota (None: unlimited).
    pub quota_total: Option<i64>,
    /// Start of validity.
    pub valid_from: DateTime<Utc>,
    /// End of validity.
    pub valid_until: Option<DateTime<Utc>>,
}

fn check_actions(actions: &[String]) -> DomainResult<()> {
    let valid = |action: &String| {
        (1..=64).contains(&action.len())
            && action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-:".contains(&b))
    };
    if actions.is_empty() || actions.len() > 32 || !actions.iter().all(valid) {
        return Err(DomainError::Validation(
            "actions needs 1-32 names of lowercase letters, digits and _ . - :".into(),
        ));
    }
    Ok(())
}

/// Grants a license; logged and audited in one transaction.
pub async fn grant(conn: &mut PgConnection, actor: &Actor, grant: Grant) -> DomainResult<License> {
    check_actions(&grant.actions)?;
    if grant.resource.is_empty() || grant.resource.len() > 255 {
        return Err(DomainError::Validation(
            "resource must be 1-255 characters".into(),
        ));
    }
    if grant
        .quota_total
        .is_some_and(|total| !(0..=shared::limits::MAX_QUOTA).contains(&total))
    {
        return Err(DomainError::Validation(format!(
            "quota_total must be between 0 and {}",
            shared::limits::MAX_QUOTA
        )));
    }
    if grant
        .valid_until
        .is_some_and(|until| until <= grant.valid_from)
    {
        return Err(DomainError::Validation(
            "valid_until must be after valid_from".into(),
        ));
    }
    let row = sqlx::query(&format!(
        "insert into authorizations (id, subject_id, resource, actions, quota_total, valid_from, \
           valid_until, granted_by) values ($1, $2, $3, $4, $5, $6, $7, $8) returning {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(&grant.subject_id)
    .bind(&grant.resource)
    .bind(&grant.actions)
    .bind(grant.quota_total)
    .bind(grant.valid_from)
    .bind(grant.valid_until)
    .bind(&actor.id)
    .fetch_one(&mut *conn)
    .await?;
    let license = license_from_row(&row)?;
    record_change(
        conn,
        actor,
        &license,
        "grant",
        serde_json::json!({
            "actions": license.actions, "quota_total": license.quota_total,
            "valid_from": license.valid_from, "valid_until": license.valid_until,
        }),
    )
    .await?;
    Ok(license)
}

/// Suspends, resumes, revokes, or changes quota, validity or actions; logged and audited in one
/// transaction. A revoked license cannot change any more.
pub async fn update(
    conn: &mut PgConnection,
    actor: &Actor,
    id: Uuid,
    change: &UpdateLicense,
) -> DomainResult<License> {
    let row = sqlx::query(&format!(
        "select {COLUMNS} from authorizations where id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(DomainError::NotFound { what: "license" })?;
    let before = license_from_row(&row)?;
    if before.status == LicenseStatus::Revoked {
        return Err(DomainError::Conflict(
            "the license is revoked; it cannot change any more".into(),
        ));
    }
    if let Some(actions) = &change.actions {
        check_actions(actions)?;
    }
    let quota_total = change.quota_total.unwrap_or(before.quota_total);
    if quota_total.is_some_and(|total| total > shared::limits::MAX_QUOTA) {
        return Err(DomainError::Validation(format!(
            "quota_total must be at most {}",
            shared::limits::MAX_QUOTA
        )));
    }
    if quota_total.is_some_and(|total| total < before.quota_used) {
        return Err(DomainError::Validation(format!(
            "quota_total cannot go below the {} units already used",
            before.quota_used
        )));
    }
    let valid_until = change.valid_until.unwrap_or(before.valid_until);
    if valid_until.is_some_and(|until| until <= before.valid_from) {
        return Err(DomainError::Validation(
            "valid_until must be after valid_from".into(),
        ));
    }
    let status = change.status.unwrap_or(before.status);
    let actions = change
        .actions
        .clone()
        .unwrap_or_else(|| before.actions.clone());
    let row = sqlx::query(&format!(
        "update authorizations set status = $2, quota_total = $3, valid_until = $4, actions = $5 \
          where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .bind(status.as_str())
    .bind(quota_total)
    .bind(valid_until)
    .bind(&actions)
    .fetch_one(&mut *conn)
    .await?;
    let after = license_from_row(&row)?;
    let event = match (before.status, after.status) {
        (_, LicenseStatus::Revoked) => "revoke",
        (LicenseStatus::Active, LicenseStatus::Suspended) => "suspend",
        (LicenseStatus::Suspended, LicenseStatus::Active) => "resume",
        _ if before.quota_total != after.quota_total => "quota_change",
        _ => "update",
    };
    record_change(
        conn,
        actor,
        &after,
        event,
        serde_json::json!({
            "status": [before.status, after.status],
            "quota_total": [before.quota_total, after.quota_total],
            "valid_until": [before.valid_until, after.valid_until],
            "actions": [before.actions, after.actions],
        }),
    )
    .await?;
    Ok(after)
}

async fn record_change(
    conn: &mut PgConnection,
    actor: &Actor,
    license: &License,
    event: &str,
    detail: serde_json::Value,
) -> DomainResult<()> {
    let id = Uuid::parse_str(&license.id).ok();
    let entry = LogEntry {
        license_id: id,
        subject_id: &license.subject_id,
        resource: Some(&license.resource),
        action: None,
        event,
        violation: None,
        units: None,
        detail: Some(detail.clone()),
    };
    log(&mut *conn, actor, entry).await?;
    let action = format!("license.{event}");
    audit::record(
        conn,
        actor,
        AuditEntry {
            action: &action,
            target_type: Some("license"),
            target_id: Some(&license.id),
            outcome: Outcome::Success,
            detail: Some(detail),
        },
    )
    .await?;
    Ok(())
}
