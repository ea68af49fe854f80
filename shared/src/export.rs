//! The kinds of record `GET /api/v1/audit/export` streams.

use serde::{Deserialize, Serialize};

/// An exportable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportKind {
    /// `audit_access_log`.
    AccessLogs,
    /// `credit_ledger`.
    Ledger,
    /// `tasks`.
    Tasks,
    /// `task_state_history`.
    TaskHistory,
    /// `task_audit_logs`.
    TaskAudit,
    /// `authorizations` (licenses).
    Authorizations,
    /// `authorization_logs` (every license check and change).
    AuthorizationLogs,
    /// `payment_orders`.
    Payments,
    /// `reconciliation_items` (by bill date).
    Reconciliations,
}

impl ExportKind {
    /// Every kind.
    pub const ALL: [ExportKind; 9] = [
        ExportKind::AccessLogs,
        ExportKind::Ledger,
        ExportKind::Tasks,
        ExportKind::TaskHistory,
        ExportKind::TaskAudit,
        ExportKind::Authorizations,
        ExportKind::AuthorizationLogs,
        ExportKind::Payments,
        ExportKind::Reconciliations,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportKind::AccessLogs => "access_logs",
            ExportKind::Ledger => "ledger",
            ExportKind::Tasks => "tasks",
            ExportKind::TaskHistory => "task_history",
            ExportKind::TaskAudit => "task_audit",
            ExportKind::Authorizations => "authorizations",
            ExportKind::AuthorizationLogs => "authorization_logs",
            ExportKind::Payments => "payments",
            ExportKind::Reconciliations => "reconciliations",
        }
    }
}
