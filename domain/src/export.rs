//! What `GET /audit/export` can export: each kind's table, columns, time column and order. The
//! gateway streams the rows of one kind over a range from one snapshot (a REPEATABLE READ, READ
//! ONLY transaction), as NDJSON (`row_to_json`) or RFC 4180 CSV (every column as text).

pub use shared::export::ExportKind;

/// How one kind is read.
#[derive(Debug, Clone, Copy)]
pub struct ExportSpec {
    /// The table.
    pub table: &'static str,
    /// Its columns, in export order.
    pub columns: &'static [&'static str],
    /// The column the range applies to.
    pub time_column: &'static str,
    /// Whether that column is a Beijing `date` (reconciliations) rather than a timestamp.
    pub date_column: bool,
    /// The order of the rows.
    pub order_by: &'static str,
    /// Whether a finance caller may export it (money kinds); the others need `audit:export:all`.
    pub money: bool,
}

/// How `kind` is read.
pub fn spec(kind: ExportKind) -> ExportSpec {
    kind_spec(kind)
}

fn kind_spec(kind: ExportKind) -> ExportSpec {
    let spec = |table, columns, order_by, money| ExportSpec {
        table,
        columns,
        time_column: "created_at",
        date_column: false,
        order_by,
        money,
    };
    match kind {
        ExportKind::AccessLogs => spec(
            "audit_access_log",
            &[
                "id",
                "actor_id",
                "actor_roles",
                "action",
                "target_type",
                "target_id",
                "outcome",
                "request_id",
                "client_ip",
                "detail",
                "created_at",
            ],
            "id",
            false,
        ),
        ExportKind::Ledger => spec(
            "credit_ledger",
            &[
                "id",
                "account_id",
                "kind",
                "amount",
                "held_delta",
                "debt_delta",
                "balance_after",
                "held_after",
                "debt_after",
                "reference",
                "related_entry_id",
                "hold_id",
                "task_id",
                "reason",
                "metadata",
                "actor_id",
                "request_id",
                "created_at",
            ],
            "id",
            true,
        ),
        ExportKind::Tasks => spec(
            "tasks",
            &[
                "id",
                "owner_id",
                "account_id",
                "task_type",
                "units",
                "params",
                "status",
                "progress",
                "seq",
                "estimated_credits",
                "actual_units",
                "actual_cost",
                "created_at",
                "updated_at",
                "finished_at",
            ],
            "created_at, id",
            false,
        ),
        ExportKind::TaskHistory => spec(
            "task_state_history",
            &[
                "task_id",
                "seq",
                "kind",
                "from_status",
                "to_status",
                "progress",
                "actual_units",
                "message",
                "data",
                "actor_id",
                "node_id",
                "request_id",
                "created_at",
            ],
            "created_at, task_id, seq",
            false,
        ),
        ExportKind::TaskAudit => spec(
            "task_audit_logs",
            &[
                "id",
                "task_id",
                "seq",
                "action",
                "actor_id",
                "detail",
                "request_id",
                "created_at",
            ],
            "id",
            false,
        ),
        ExportKind::Authorizations => spec(
            "authorizations",
            &[
                "id",
                "subject_id",
                "resource",
                "actions",
                "quota_total",
                "quota_used",
                "valid_from",
                "valid_until",
                "status",
                "granted_by",
                "created_at",
                "updated_at",
            ],
            "created_at, id",
            false,
        ),
        ExportKind::AuthorizationLogs => spec(
            "authorization_logs",
            &[
                "id",
                "authorization_id",
                "subject_id",
                "resource",
                "action",
                "event",
                "allowed",
                "violation_code",
                "units",
                "actor_id",
                "request_id",
                "detail",
                "created_at",
            ],
            "id",
            false,
        ),
        ExportKind::Payments => spec(
            "payment_orders",
            &[
                "id",
                "out_trade_no",
                "account_id",
                "user_id",
                "amount_fen",
                "credits",
                "status",
                "wechat_transaction_id",
                "credited_entry_id",
                "credited_by",
                "notification_id",
                "payer_openid",
                "review_reason",
                "failure_code",
                "expires_at",
                "paid_at",
                "success_time",
                "created_at",
                "updated_at",
            ],
            "created_at, id",
            true,
        ),
        ExportKind::Reconciliations => ExportSpec {
            table: "reconciliation_items",
            columns: &[
                "id",
                "bill_date",
                "class",
                "out_trade_no",
                "order_id",
                "transaction_id",
                "local_amount_fen",
                "bill_amount_fen",
                "action",
                "detail",
            ],
            time_column: "bill_date",
            date_column: true,
            order_by: "bill_date, id",
            money: true,
        },
    }
}

/// The range condition on `$1` (from, inclusive) and `$2` (to, exclusive).
fn range(kind: ExportKind) -> String {
    let spec = spec(kind);
    if spec.date_column {
        format!(
            "{0} >= ($1 at time zone 'Asia/Shanghai')::date \
                 and {0} < ($2 at time zone 'Asia/Shanghai')::date",
            spec.time_column
        )
    } else {
        format!("{0} >= $1 and {0} < $2", spec.time_column)
    }
}

/// One JSON object per row (text), for NDJSON.
pub fn ndjson_query(kind: ExportKind) -> String {
    let spec = spec(kind);
    format!(
        "select row_to_json(t)::text from (select {} from {} where {} order by {}) t",
        spec.columns.join(", "),
        spec.table,
        range(kind),
        spec.order_by
    )
}

/// Every column as text, for CSV.
pub fn csv_query(kind: ExportKind) -> String {
    let spec = spec(kind);
    let columns: Vec<String> = spec
        .columns
        .iter()
        .map(|column| format!("{column}::text"))
        .collect();
    format!(
        "select {} from {} where {} order by {}",
        columns.join(", "),
        spec.table,
        range(kind),
        spec.order_by
    )
}

/// One CSV field, quoted as RFC 4180 says when it must be (a comma, a quote, a line break, or
/// leading/trailing space), quotes doubled; a NULL is an empty field.
pub fn csv_field(value: Option<&str>) -> String {
    let Some(value) = value else {
        return String::new();
    };
    // A text a spreadsheet would run as a formula is defused with a leading `'` (numbers, such
    // as negative amounts, stay numbers).
    let defused;
    let value =
        if value.starts_with(['=', '+', '-', '@', '\t', '\r']) && value.parse::<f64>().is_err() {
            defused = format!("'{value}");
            defused.as_str()
        } else {
            value
        };
    let needs_quotes =
        value.contains([',', '"', '\r', '\n']) || value.starts_with(' ') || value.ends_with(' ');
    if needs_quotes {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// One CSV record (CRLF-terminated, as RFC 4180 says).
pub fn csv_record<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> String {
    let mut line = values
        .into_iter()
        .map(csv_field)
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_rfc_4180_says() {
        assert_eq!(
            csv_record([
                Some("a"),
                None,
                Some("b,c"),
                Some("say \"hi\""),
                Some("two\nlines")
            ]),
            "a,,\"b,c\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
    }

    #[test]
    fn spreadsheet_formulas_are_defused_and_numbers_kept() {
        assert_eq!(
            csv_field(Some("=HYPERLINK(\"http://x\")")),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_field(Some("@SUM(A1)")), "'@SUM(A1)");
        assert_eq!(csv_field(Some("-42")), "-42");
        assert_eq!(csv_field(Some("+1.5")), "+1.5");
    }

    #[test]
    fn every_kind_reads_a_range_in_order() {
        for kind in ExportKind::ALL {
            let query = ndjson_query(kind);
            assert!(query.contains("$1") && query.contains("$2"), "{query}");
            assert!(csv_query(kind).contains("::text"));
        }
    }
}
