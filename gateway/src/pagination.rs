//! Query parameters of paginated listings and the opaque cursor over descending row ids.

use crate::error::ApiError;
use axum::http::StatusCode;
use serde::Deserialize;
use shared::ErrorCode;
use shared::page::{DEFAULT_LIMIT, MAX_LIMIT};

/// Prefix that makes cursors recognisably ours (and versioned).
const CURSOR_PREFIX: &str = "c1.";

/// `?limit=&cursor=`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The page size, validated.
    pub fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
            Some(limit) => Err(invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}, got {limit}"
            ))),
        }
    }

    /// The id the cursor points below, if a cursor was given.
    pub fn before_id(&self) -> Result<Option<i64>, ApiError> {
        let Some(cursor) = &self.cursor else {
            return Ok(None);
        };
        cursor
            .strip_prefix(CURSOR_PREFIX)
            .and_then(|hex_id| hex::decode(hex_id).ok())
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map(i64::from_be_bytes)
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| invalid("cursor is not one this server issued".into()))
    }
}

/// The cursor for the page after one whose last row has `id`.
pub fn cursor_after(id: i64) -> String {
    format!("{CURSOR_PREFIX}{}", hex::encode(id.to_be_bytes()))
}

fn invalid(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips() {
        let params = PageParams {
            limit: None,
            cursor: Some(cursor_after(42)),
        };
        assert_eq!(params.before_id().ok(), Some(Some(42)));
    }

    #[test]
    fn a_forged_cursor_is_rejected() {
        for cursor in ["42", "c1.zz", "c1.00", "c1.0000000000000000"] {
            let params = PageParams {
                limit: None,
                cursor: Some(cursor.into()),
            };
            assert!(params.before_id().is_err(), "{cursor}");
        }
    }

    #[test]
    fn limits_outside_one_to_five_hundred_are_rejected() {
        assert!(
            PageParams {
                limit: Some(0),
                cursor: None
            }
            .limit()
            .is_err()
        );
        assert!(
            PageParams {
                limit: Some(501),
                cursor: None
            }
            .limit()
            .is_err()
        );
        assert_eq!(PageParams::default().limit().ok(), Some(50));
    }
}
