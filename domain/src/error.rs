//! Domain errors, typed by outcome; PostgreSQL constraint names are mapped to them in one place.

/// What went wrong in a domain operation, by outcome the caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The referenced row does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up, for the message.
        what: &'static str,
    },
    /// The input breaks a business rule.
    #[error("{0}")]
    Validation(String),
    /// The account cannot cover the amount.
    #[error("insufficient credits: {available} available, {requested} requested")]
    InsufficientCredits {
        /// What the account has.
        available: i64,
        /// What the operation needed.
        requested: i64,
    },
    /// The operation conflicts with the stored state.
    #[error("{0}")]
    Conflict(String),
    /// The act was already done once and must not be done again (an order already credited or
    /// paid); callers that deliver at least once treat it as success.
    #[error("{0}")]
    AlreadyApplied(String),
    /// A task event the state machine forbids.
    #[error("{0}")]
    InvalidTransition(String),
    /// Refunds of a charge would exceed it.
    #[error("the refund exceeds what is left of the charge: {remaining} refundable")]
    RefundExceedsCharge {
        /// What may still be refunded.
        remaining: i64,
    },
    /// A license refused the operation.
    #[error("license refused: {}", .0.as_str())]
    License(shared::licenses::Violation),
    /// Too much is queued for this resource: retry later.
    #[error("{0}")]
    Busy(String),
    /// The operation's worker stopped before answering; its effect is unknown to the caller,
    /// so it must retry with the same idempotency key.
    #[error("{0}")]
    Unavailable(String),
    /// PostgreSQL failed or is unreachable.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

/// Result of a domain operation.
pub type DomainResult<T> = Result<T, DomainError>;

impl From<sqlx::Error> for DomainError {
    fn from(error: sqlx::Error) -> Self {
        DomainError::Database(error)
    }
}

/// The name of the constraint a database error violated, if any.
pub fn violated_constraint(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}
