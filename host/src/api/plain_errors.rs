//! Axum's own rejections as JSON errors.
//!
//! Handlers answer failures through [`ApiError`](crate::api::error::ApiError)
//! (`{"error":{"code","message"}}`), but some rejections happen before a
//! handler runs: a method the path does not have (405, empty body), a path
//! segment that is not UTF-8 or not a number, a query string that does not
//! parse, a raw body over its limit. Axum writes those as plain text. This
//! layer rewrites any error response that is not JSON into the API's error
//! shape, keeping the status and axum's words, so every client sees one
//! format whatever failed. Found by the fuzz run (`tests/fuzz_api.rs`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The longest plain-text error kept as the message.
const MAX_MESSAGE: usize = 4096;

/// The API's code for an error status.
fn code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        429 => "rate_limited",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// Rewrite a non-JSON error response as `{"error":{"code","message"}}`.
pub async fn as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_MESSAGE).await.map(|b| String::from_utf8_lossy(&b).into_owned());
    let message = match text {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut rewritten =
        (status, axum::Json(json!({"error": {"code": code(status), "message": message}}))).into_response();
    // Keep what the client needs from the original (Allow on a 405,
    // Retry-After), not its content headers.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rewritten
}
