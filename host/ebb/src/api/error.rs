//! One error type for the whole API, mapped to status codes with a stable JSON body:
//! `{"error": {"code": "...", "message": "..."}}`. Client mistakes get a 4xx that
//! says what is wrong; internal failures get a generic 500 body and are logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ebb_engine::lifecycle;
use serde::Serialize;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, for programs: `unauthenticated`, `forbidden`, `not-found`,
    /// `bad-request`, `conflict`, `downstream-failed`, `unavailable`, `internal`.
    pub code: String,
    /// For people: what is wrong and, where it helps, what to do.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: String) -> Self {
        Self {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller ran up too many refusals; it may try again later.
    #[error("too many refused requests from this client; try again later")]
    TooManyRequests,
    /// The request body is larger than the API reads.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The host cannot serve now (e.g. its store does not answer).
    #[error("{0}")]
    Unavailable(String),
    /// The downstream system or connector failed; the grant is being made safe.
    #[error("{0}")]
    Downstream(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The status the API answers this with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            Self::Downstream(_) => (StatusCode::BAD_GATEWAY, "downstream-failed"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error serving a request");
        }
        let mut response = (status, Json(ErrorBody::new(code, self.to_string()))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<lifecycle::Error> for ApiError {
    fn from(e: lifecycle::Error) -> Self {
        use lifecycle::Error as E;
        match e {
            E::NotFound(_) => Self::NotFound(e.to_string()),
            E::Invalid(_) | E::UnknownConnector(_) => Self::BadRequest(e.to_string()),
            E::Illegal(_) | E::Draining(_) | E::AlreadyApproved(_) => Self::Conflict(e.to_string()),
            E::SelfApproval => Self::Forbidden(e.to_string()),
            E::Issue(_) | E::VerifyIssued(_) | E::Validate(_) => Self::Downstream(e.to_string()),
            E::Store(ebb_core::store::Error::Conflict(_)) => Self::Conflict(e.to_string()),
            // The store cannot write (a full or failing disk, a stopped flusher): the
            // host cannot serve this now, and says so rather than "internal".
            E::Store(ref s)
                if s.io_kind().is_some() || matches!(s, ebb_core::store::Error::FlusherStopped) =>
            {
                Self::Unavailable(ebb_core::error_chain(&e))
            }
            // Background work only; should a caller meet it, it is "not now".
            E::ConnectorBusy(_) => Self::Unavailable(e.to_string()),
            E::Store(_) | E::Seal(_) | E::Extension { .. } => Self::Internal(e.to_string()),
        }
    }
}

impl From<ebb_core::store::Error> for ApiError {
    fn from(e: ebb_core::store::Error) -> Self {
        lifecycle::Error::Store(e).into()
    }
}

/// Turns a JSON body rejection into our error body, keeping its status where it is
/// not the caller's syntax (a body over the limit is 413, not 400).
pub(crate) fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(e.body_text())
    } else {
        ApiError::BadRequest(e.body_text())
    }
}

/// Turns axum's JSON/path/query rejections into our error body.
pub(crate) fn rejection(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(e.to_string())
}
