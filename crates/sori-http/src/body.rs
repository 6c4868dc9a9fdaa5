//! Request parsing with errors in the API's format that name the field: JSON and raw
//! bodies (413 when too large, 400 with line and column when malformed), path
//! parameters, and list query parameters.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// The body limit of the route a request came to (set by `ops::gzip_bodies`), so a 413
/// can say the limit in effect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub usize);

/// The limit a request's body is read under, if its route has one.
fn limit_of(req: &Request) -> Option<usize> {
    req.extensions().get::<BodyLimit>().map(|l| l.0)
}

/// A JSON request body, parsed but not yet interpreted.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = limit_of(&req);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| body_rejection(r, limit))?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A request body as bytes, for handlers that parse it themselves (the Segment API reads
/// bodies whatever their content type). Its rejections (too large, a broken gzip stream)
/// answer in the API's error format, like every other input error.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = limit_of(&req);
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|r| body_rejection(r, limit))
    }
}

/// Path parameters, whose rejections (invalid percent-encoding or UTF-8) answer 400 in
/// the API's error format naming `path`, not as axum's plain text.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r| {
                use axum::extract::path::ErrorKind;
                use axum::extract::rejection::PathRejection;
                match &r {
                    // A route that names a parameter its handler does not take is our bug.
                    r if r.status().is_server_error() => ApiError::internal(&r.body_text()),
                    // axum's text names the route's own parameter, which callers never see.
                    PathRejection::FailedToDeserializePathParams(e)
                        if matches!(e.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
                    {
                        ApiError::field("path", "is not UTF-8 text once its %-escapes are decoded")
                    }
                    r => ApiError::field("path", r.body_text()),
                }
            })
    }
}

/// Parses a JSON body: 400 naming `body` when it is empty or malformed, or naming the
/// first string that holds U+0000, which no store can keep as text.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let v = parse_json_with_nul(bytes)?;
    if may_hold_nul(bytes)
        && let Some(path) = sori_domain::value::nul_path(&v, String::new())
    {
        return Err(nul_error(path));
    }
    Ok(v)
}

/// [`parse_json`] without the NUL check, for a caller that checks parts of the body on
/// their own (a Segment batch reports a NUL per item).
pub(crate) fn parse_json_with_nul(bytes: &[u8]) -> Result<Value, ApiError> {
    // RFC 8259 §8.1: a parser may ignore a leading byte order mark, and some Windows tools
    // write one; it is not part of the JSON text.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::field("body", "a JSON body is required"));
    }
    sori_domain::value::json_text(bytes)
        .map_err(|e| ApiError::field("body", format!("malformed JSON: {e}")))
}

/// JSON can only carry U+0000 as the escape `\u0000`: without it in the text there is
/// nothing to look for, and the walk (which builds a path per node) is skipped.
pub(crate) fn may_hold_nul(bytes: &[u8]) -> bool {
    memchr::memmem::find(bytes, br"\u0000").is_some()
}

/// The 400 for a NUL at `path` (one from the root of the body is named under `body`).
pub(crate) fn nul_error(path: String) -> ApiError {
    match path.is_empty() || path.starts_with('[') {
        true => ApiError::field(format!("body{path}"), NUL_RULE),
        false => ApiError::field(path, NUL_RULE),
    }
}

/// Why a NUL is refused: the words the profile checks use too.
pub(crate) const NUL_RULE: &str = sori_domain::value::NUL_REJECTED;

fn body_rejection(r: BytesRejection, limit: Option<usize>) -> ApiError {
    let limit = match limit {
        Some(n) => format!("the limit of {n} bytes here (the server's max_body_bytes"),
        None => "the server's max_body_bytes (256 KiB unless configured".to_owned(),
    };
    use crate::listen::BodyDeadline;
    if let Some(BodyDeadline::Stalled(t)) = cause(&r) {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "requestTimeout",
            format!(
                "the request body stopped arriving: no data within {} s (the server's \
                 header_timeout_secs)",
                t.as_secs()
            ),
        )
    } else if let Some(BodyDeadline::TooSlow(t)) = cause(&r) {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "requestTimeout",
            format!(
                "the request body arrived too slowly: under {} bytes per second on \
                 average after the first {} s (the server's header_timeout_secs)",
                crate::listen::MIN_BODY_RATE,
                t.as_secs()
            ),
        )
    } else if cause::<crate::ops::GzipTooLarge>(&r).is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payloadTooLarge",
            format!(
                "request body is too large: its gzip-compressed bytes alone go past \
                 {limit}; at least 1 MiB for the Segment API)"
            ),
        )
    } else if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payloadTooLarge",
            format!(
                "request body is too large: over {limit}; at least 1 MiB for the Segment \
                 API), counted after gzip decompression"
            ),
        )
    } else {
        // What failed below axum's "Failed to buffer the request body" (a gzip body that
        // is not gzip, say), in its own words.
        ApiError::field("body", format!("could not be read: {}", innermost(&r)))
    }
}

/// The errors a body rejection wraps, outermost first, however many layers
/// (decompression, limits) wrapped them.
fn causes(r: &BytesRejection) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(
        Some(r as &(dyn std::error::Error + 'static)),
        |err| match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            // An `io::Error` hides what it wraps from `source()`.
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        },
    )
}

/// The `E` reading the body failed with (a deadline, see `listen`; a gzip body too
/// large, see `ops`).
fn cause<E: std::error::Error + 'static>(r: &BytesRejection) -> Option<&E> {
    causes(r).find_map(|e| e.downcast_ref::<E>())
}

/// The innermost cause of a body rejection, in its own words.
fn innermost(r: &BytesRejection) -> String {
    causes(r).last().map(|e| e.to_string()).unwrap_or_default()
}

impl JsonBody {
    /// Deserializes a `PATCH` body into `T`, refusing one that names nothing to change
    /// (see [`require_fields`]).
    ///
    /// These settings cannot be cleared, so a `null` would be read as "not given" and the
    /// call answered 200 for changing nothing: it is refused, naming the field.
    pub fn parse_patch<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        require_fields(&self.0)?;
        let null = self
            .0
            .as_object()
            .and_then(|o| o.iter().find(|(_, v)| v.is_null()))
            .map(|(k, _)| k.clone());
        let parsed = self.parse()?;
        match null {
            Some(k) => Err(ApiError::field(
                k,
                "must not be null (this setting cannot be cleared; leave it out to keep it)",
            )),
            None => Ok(parsed),
        }
    }

    /// Deserializes into `T`, naming the path of the first offending field.
    ///
    /// Every `T` is an object with named fields, and serde would also read one from an
    /// array, field by field in declaration order (`[null, 7]` setting the second field):
    /// a body that is not an object is refused first.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        if !self.0.is_object() {
            return Err(ApiError::field(
                "body",
                sori_domain::value::not_an_object(&self.0),
            ));
        }
        serde_path_to_error::deserialize(self.0).map_err(|e| {
            let path = e.path().to_string();
            let (field, message) = plain_error(&path, &e.into_inner().to_string());
            ApiError::field(field, message)
        })
    }
}

/// Refuses a `PATCH` body that names nothing to change (`{}`) with a 400: SPEC §3.2 makes
/// an empty object in an update an error, and a 200 for a no-op hides a client's mistake.
/// Every `PATCH` (users, channel, profile fields, segments) goes through here.
pub fn require_fields(body: &Value) -> Result<(), ApiError> {
    require_fields_at("body", body)
}

/// [`require_fields`] for an update inside a larger body, named by `field`
/// (`calls[2].user`).
pub fn require_fields_at(field: &str, body: &Value) -> Result<(), ApiError> {
    if body.as_object().is_some_and(serde_json::Map::is_empty) {
        return Err(ApiError::field(
            field,
            "must name at least one field to change",
        ));
    }
    Ok(())
}

/// A serde error in the API's words: the field it is about (`body` for the whole body) and
/// the rule (`must be an integer from 0 to 4294967295, got floating point `1.5``), not
/// Rust's type names. serde_path_to_error's path ends at the unknown key of an unknown
/// field, and at the object that lacks a missing one.
fn plain_error(path: &str, message: &str) -> (String, String) {
    let field = if path == "." {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    let wanted = |w: &str| match w {
        "u8" => "an integer from 0 to 255".to_owned(),
        "u16" => "an integer from 0 to 65535".to_owned(),
        "u32" => "an integer from 0 to 4294967295".to_owned(),
        "u64" | "usize" => "a non-negative integer".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        w if w.starts_with("struct ") || w == "a map" => "an object".to_owned(),
        w if w.starts_with("enum ") => "one of the documented values".to_owned(),
        w => w.to_owned(),
    };
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some((got, want)) = message
            .strip_prefix(kind)
            .and_then(|rest| rest.split_once(", expected "))
        {
            return (field, format!("must be {}, got {got}", wanted(want)));
        }
    }
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        let at = if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        return (at, "is required".to_owned());
    }
    if let Some((_, expected)) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once("`, expected "))
    {
        return (field, format!("is not a known field (expected {expected})"));
    }
    (field, message.to_owned())
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
    /// Rows to ask the store for: one more than the page, which only tells whether a next
    /// page exists (so the last page has no `next` leading to an empty one).
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// Cuts rows fetched with [`Paging::fetch`] to the page, and gives the page's `next`
    /// cursor (from its last row) when there were more.
    pub fn split<T>(
        &self,
        mut rows: Vec<T>,
        cursor: impl Fn(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next = if more { rows.last().map(cursor) } else { None };
        (rows, next)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(body: &str) -> Option<String> {
        parse_json(body.as_bytes()).err().map(|e| format!("{e:?}"))
    }

    #[test]
    fn a_patch_naming_nothing_is_refused() {
        let e = format!("{:?}", require_fields(&serde_json::json!({})).unwrap_err());
        assert!(e.contains("\"body\""), "{e}");
        assert!(require_fields(&serde_json::json!({"blocked": false})).is_ok());
    }

    #[test]
    fn serde_errors_name_the_field_and_the_rule() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            days: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            name: String,
            inner: Option<Inner>,
        }
        for (body, field, message) in [
            (
                r#"{"name": 1.5}"#,
                "name",
                "must be a string, got floating point `1.5`",
            ),
            (
                r#"{"name": "a", "inner": {"days": 1.5}}"#,
                "inner.days",
                "must be an integer",
            ),
            (
                r#"{"name": "a", "inner": {"days": -1}}"#,
                "inner.days",
                "must be an integer",
            ),
            (r#"{"inner": null}"#, "name", "is required"),
            (r#"{"name": "a", "inner": {}}"#, "inner.days", "is required"),
            (
                r#"{"name": "a", "colour": 1}"#,
                "colour",
                "is not a known field (expected",
            ),
            // serde alone would read `["a", null]` as the fields in order.
            (r#"["a", null]"#, "body", "must be an object, got array"),
            (r#"[]"#, "body", "must be an object, got array"),
        ] {
            let e = JsonBody(serde_json::from_str(body).unwrap())
                .parse::<Body>()
                .unwrap_err();
            let e = format!("{e:?}");
            assert!(e.contains(&format!("{field:?}")), "{body}: {e}");
            assert!(e.contains(message), "{body}: {e}");
        }
    }

    #[test]
    fn a_leading_byte_order_mark_is_not_part_of_the_json() {
        assert_eq!(parse_error("\u{feff}{\"a\": 1}"), None);
        assert!(parse_error("\u{feff}").is_some_and(|e| e.contains("is required")));
        // Only at the start: elsewhere it is a stray character.
        assert!(parse_error("{\"a\": 1}\u{feff}").is_some());
    }

    #[test]
    fn nul_is_refused_naming_the_path_and_only_when_present() {
        let e = parse_error(r#"{"batch":[{"properties":{"a":"x\u0000y"}}]}"#).unwrap();
        assert!(e.contains("batch[0].properties.a"), "{e}");
        assert!(e.contains(NUL_RULE), "{e}");
        let e = parse_error(r#"{"k\u0000":1}"#).unwrap();
        assert!(e.contains(r"k\0"), "{e}");
        // An escaped backslash followed by `u0000` is six plain characters, not NUL.
        assert_eq!(parse_error(r#"{"a":"\\u0000"}"#), None);
        assert_eq!(parse_error(r#"{"a":"plain"}"#), None);
        assert!(
            parse_error("  ")
                .unwrap()
                .contains("a JSON body is required")
        );
        assert!(parse_error("{").unwrap().contains("malformed JSON"));
    }
}
