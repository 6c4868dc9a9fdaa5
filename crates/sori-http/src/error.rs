//! The one API error type: every failure becomes `{type, message, errors[]}` with a fitting
//! status. Server faults are logged with their cause and shown to clients only as
//! "internal error".

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sori_app::AppError;
use sori_domain::{FieldError, Invalid};
use utoipa::ToSchema;

/// Body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable kind, e.g. `invalidInput`, `notFound`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Human-readable summary.
    pub message: String,
    /// Per-field problems, when the input was at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldErrorBody>,
}

/// One field problem in an error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldErrorBody {
    /// JSON path of the offending input.
    pub field: String,
    /// The rule it broke.
    pub message: String,
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    errors: Vec<FieldError>,
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error without field details.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    /// 400 naming one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid::one(field, message).into()
    }

    /// The fields an input error (400) names, and none for any other error.
    pub(crate) fn invalid_fields(&self) -> &[FieldError] {
        match self.status {
            StatusCode::BAD_REQUEST => &self.errors,
            _ => &[],
        }
    }

    /// 404 that does not say whether the thing exists in another channel.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("{what} not found"),
        )
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500 with the cause logged, not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internalError",
            "internal error",
        )
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalidInput",
            message: e.to_string(),
            errors: e.0,
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Invalid(i) => i.into(),
            AppError::Unauthorized(m) => Self::unauthorized(m),
            AppError::MemberHashRequired(m) => {
                Self::new(StatusCode::UNAUTHORIZED, "memberHashRequired", m)
            }
            AppError::Forbidden(m) => Self::forbidden(m),
            AppError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "notFound", m),
            AppError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            AppError::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is shutting down, overloaded or cannot reach its database; retry \
                 shortly",
            ),
            AppError::Busy(m) => Self::new(StatusCode::TOO_MANY_REQUESTS, "tooManyRequests", m),
            AppError::Store(s) => Self::internal(&s),
        }
    }
}

impl From<sori_store::StoreError> for ApiError {
    fn from(e: sori_store::StoreError) -> Self {
        AppError::from(e).into()
    }
}

/// Longest field path an error echoes (characters).
const MAX_FIELD_CHARS: usize = 200;
/// Longest message an error carries (characters).
const MAX_MESSAGE_CHARS: usize = 1000;

/// `s` cut to `max` characters, marked with an ellipsis, with control characters, line
/// separators and direction overrides written as `\u0000`-style escapes. Messages quote
/// the client's input (an unknown key, say): a megabyte-long key should not come back
/// twice, and a NUL, a line break or a right-to-left override in one should not reach the
/// client's screen or log as itself. Cut first, so an escape is never cut in half.
pub(crate) fn clip(mut s: String, max: usize) -> String {
    if let Some((at, _)) = s.char_indices().nth(max) {
        s.truncate(at);
        s.push('…');
    }
    match sori_domain::value::escape_unseen(&s) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}

/// A field path as errors show it.
pub(crate) fn clip_field(s: String) -> String {
    clip(s, MAX_FIELD_CHARS)
}

/// A message as errors show it.
pub(crate) fn clip_message(s: String) -> String {
    clip(s, MAX_MESSAGE_CHARS)
}

impl ApiError {
    /// The status and the body this error answers with (also one item's result inside a
    /// 200, see `sdk::calls`).
    pub(crate) fn status_and_body(self) -> (StatusCode, ErrorBody) {
        let body = ErrorBody {
            kind: self.kind,
            message: clip_message(self.message),
            errors: self
                .errors
                .into_iter()
                .map(|f| FieldErrorBody {
                    field: clip_field(f.field),
                    message: clip_message(f.message),
                })
                .collect(),
        };
        (self.status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut r = (status, crate::json::Json(body)).into_response();
        // A client told to come back (overload, logins being checked, a store being
        // reached) is told when: in a second, unless the answer's maker knows better (the
        // rate limiter sets its own).
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_ask_to_come_back_say_when() {
        for (status, want) in [
            (StatusCode::TOO_MANY_REQUESTS, Some("1")),
            (StatusCode::SERVICE_UNAVAILABLE, Some("1")),
            (StatusCode::BAD_REQUEST, None),
        ] {
            let r = ApiError::new(status, "x", "m").into_response();
            let got = r.headers().get("retry-after").and_then(|v| v.to_str().ok());
            assert_eq!(got, want, "{status}");
        }
    }

    #[test]
    fn clips_on_character_boundaries() {
        assert_eq!(clip("abc".into(), 3), "abc");
        assert_eq!(clip("abcd".into(), 3), "abc…");
        assert_eq!(clip("한국어입니다".into(), 2), "한국…");
        assert_eq!(clip(String::new(), 0), "");
        assert_eq!(clip("tr\u{0}ack\n".into(), 20), "tr\\u0000ack\\n");
        assert_eq!(clip("a\u{1b}\u{1b}\u{1b}".into(), 2), "a\\u001b…");
        assert_eq!(clip("k\u{2028}z\u{202e}".into(), 9), "k\\u2028z\\u202e");
    }
}
