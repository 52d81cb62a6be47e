//! The API's errors and their JSON form: `{"error": "<message>", "code": "<code>"}` with the
//! matching status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;
use crate::policy::Problem;
use crate::store::StoreError;

/// Why a request failed. Messages are lowercase, name the offending value and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A parameter or body is malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// No bearer token, or the wrong one.
    #[error(
        "missing or wrong admin token: send `Authorization: Bearer <token>` with the token from \
         the server's admin token file"
    )]
    Unauthorized,
    /// No such route, subject or market.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the registry's state (e.g. it would lift a revocation).
    #[error("{0}")]
    Conflict(String),
    /// The request body exceeds the limit.
    #[error("the request body is larger than {limit} bytes; send smaller batches")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A policy reload was refused: the file has problems, and the policy in force stays.
    #[error(
        "the policy file was refused ({} problem{}); the policy in force (version {kept}) is \
         unchanged: {}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.first().map(ToString::to_string).unwrap_or_default()
    )]
    PolicyRefused {
        /// Every problem, in file order.
        problems: Vec<Problem>,
        /// The version still in force.
        kept: String,
    },
    /// The engine is shutting down or overloaded.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside the server; the message says what.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The status and the machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::PolicyRefused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "policy_refused"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    code: &'a str,
    /// A refused policy's problems, one object each.
    #[serde(skip_serializing_if = "Option::is_none")]
    problems: Option<&'a [Problem]>,
    /// The policy version still in force after a refused reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "admin api request failed");
        }
        let message = self.to_string();
        let (problems, version) = match &self {
            Self::PolicyRefused { problems, kept } => {
                (Some(problems.as_slice()), Some(kept.as_str()))
            }
            _ => (None, None),
        };
        let mut response = axum::Json(Body {
            error: &message,
            code,
            problems,
            version,
        })
        .into_response();
        *response.status_mut() = status;
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(_) | Error::UnknownModel { .. } | Error::DimensionMismatch { .. } => {
                Self::BadRequest(e.to_string())
            }
            Error::Store(e) => e.into(),
            Error::Pipeline(e) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownSubject(_) => Self::NotFound(e.to_string()),
            StoreError::CredentialTaken { .. } | StoreError::Invalid { .. } => {
                Self::BadRequest(e.to_string())
            }
            StoreError::StatusLift { .. } => Self::Conflict(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewarden_protocol::SubjectId;

    #[test]
    fn store_errors_map_to_statuses() {
        let e: ApiError = StoreError::UnknownSubject(SubjectId(9)).into();
        assert_eq!(e.status_and_code().0, StatusCode::NOT_FOUND);
        assert!(e.to_string().contains('9'));
        let e: ApiError = Error::Invalid("template has 3 values".into()).into();
        assert_eq!(
            e.status_and_code(),
            (StatusCode::BAD_REQUEST, "bad_request")
        );
    }
}
