//! `ApiError`: the one error type of the HTTP API.
//!
//! Every failure becomes `{"error": {"code": "...", "message": "..."}}` with
//! the right status. Internal errors are logged with their detail and shown
//! to the client only as "internal error": the database's words never leak.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or unknown API key.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// 403: the key may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource for this tenant.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409: conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is too large.
    #[error("{0}")]
    TooLarge(String),
    /// 422: well-formed but invalid (schema errors, refused plugins).
    #[error("{message}")]
    Unprocessable {
        /// Summary.
        message: String,
        /// Field-level details, when there are any.
        details: Vec<FieldError>,
    },
    /// 503: the store is unavailable; retry later.
    #[error("the service is temporarily unavailable, retry later")]
    Unavailable,
    /// The tenant sent more than its limit; retry after the given seconds.
    #[error("{message}")]
    TooManyRequests {
        /// What limit, and when to retry.
        message: String,
        /// Seconds until the request would fit.
        retry_after_secs: u64,
    },
    /// 500: a bug or an unexpected failure.
    #[error("internal error")]
    Internal(String),
}

/// One field-level validation message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FieldError {
    /// JSON pointer of the field, e.g. `/rules/0/points`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ApiError {
    /// A 422 without field details.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Unprocessable { message: message.into(), details: Vec::new() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unprocessable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(detail) = &self {
            tracing::error!("internal error: {detail}");
        }
        let mut body = json!({"error": {"code": code, "message": self.to_string()}});
        if let ApiError::Unprocessable { details, .. } = &self
            && !details.is_empty()
        {
            body["error"]["details"] = json!(details);
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        if let ApiError::TooManyRequests { retry_after_secs, .. } = &self {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::TooLarge("the request body is too large".into())
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::BadRequest("expected a JSON body with `content-type: application/json`".into())
            }
            JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if is_unavailable(&e) {
            tracing::warn!("store unavailable: {e}");
            return ApiError::Unavailable;
        }
        match e {
            StoreError::UnknownContact(id) => ApiError::invalid(format!("contact `{id}` does not exist")),
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::VersionConflict { .. } | StoreError::DuplicateEmail(_) => ApiError::Conflict(e.to_string()),
            StoreError::UnknownReference { .. } | StoreError::UnknownTenant(_) => ApiError::invalid(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s (JSON error bodies).
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// Database trouble a client should retry (connection lost, pool exhausted,
/// SQLite busy), as opposed to a bug.
pub fn is_unavailable(e: &StoreError) -> bool {
    match e {
        StoreError::Locked => true,
        StoreError::Database(db) => match db {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(d) => {
                crate::store::is_lock_timeout(db) || d.message().contains("terminating connection")
            }
            _ => false,
        },
        _ => false,
    }
}
