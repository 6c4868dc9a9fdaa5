//! Request parsing with errors that name the field: JSON bodies (413 when too large, 400
//! with line and column when malformed) and list query parameters.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Query, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON request body, parsed but not yet interpreted.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::field("body", "a JSON body is required"));
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::field("body", format!("malformed JSON: {e}")))?;
        if let Some(path) = nul_path(&v, String::new()) {
            return Err(ApiError::field(path, "must not contain NUL characters"));
        }
        Ok(JsonBody(v))
    }
}

/// Path of the first string (or key) holding U+0000, which no store can keep as text.
pub(crate) fn nul_path(v: &Value, at: String) -> Option<String> {
    let here = || {
        if at.is_empty() {
            "body".to_owned()
        } else {
            at.clone()
        }
    };
    match v {
        Value::String(s) if s.contains('\0') => Some(here()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_path(x, format!("{}[{i}]", here()))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(p)
            } else {
                nul_path(x, p)
            }
        }),
        _ => None,
    }
}

fn body_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payloadTooLarge",
            "request body is too large",
        )
    } else {
        ApiError::field("body", r.body_text())
    }
}

impl JsonBody {
    /// Deserializes into `T`, naming the path of the first offending field.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        serde_path_to_error::deserialize(self.0).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::field(field, e.into_inner().to_string())
        })
    }
}

/// Sort direction of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    /// Oldest first.
    Asc,
    /// Newest first (default).
    Desc,
}

/// `since` / `limit` / `sortOrder` of a list call (SPEC §14).
#[derive(Debug, Clone)]
pub struct Paging {
    /// Opaque cursor from the previous page's `next`.
    pub since: Option<String>,
    /// Page size, 1–500.
    pub limit: u32,
    /// Direction.
    pub order: SortOrder,
}

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 25;
/// Largest page.
pub const MAX_LIMIT: u32 = 500;

impl Paging {
    /// Reads and checks the paging parameters.
    pub fn from_query(q: &Query<HashMap<String, String>>) -> Result<Self, ApiError> {
        let limit = match q.get("limit") {
            None => DEFAULT_LIMIT,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::field(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                }
            },
        };
        let order = match q.get("sortOrder").map(String::as_str) {
            None | Some("desc") => SortOrder::Desc,
            Some("asc") => SortOrder::Asc,
            Some(_) => return Err(ApiError::field("sortOrder", "must be `asc` or `desc`")),
        };
        let since = match q.get("since") {
            Some(s) if !sori_app::secrets::is_id(s) => {
                return Err(ApiError::field(
                    "since",
                    "is not a cursor returned by this API",
                ));
            }
            other => other.cloned(),
        };
        Ok(Self {
            since,
            limit,
            order,
        })
    }
}
