//! The worker's one error type and its one mapping to HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cliptune_store::StoreError;
use serde::Serialize;

/// Every failure of the worker: node execution, the execution queue and the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Clip(#[from] cliptune_clip::ClipError),
    #[error(transparent)]
    Train(#[from] cliptune_train::TrainError),
    #[error(transparent)]
    Prep(#[from] cliptune_prep::PrepError),
    /// An input that cannot work, naming the field at fault.
    #[error("input `{field}`: {message}")]
    Input { field: String, message: String },
    /// A request body that is not the JSON it must be.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(
        "unknown function {0:?}: expected create-model, train, update-variable, embed or pipeline"
    )]
    UnknownFunction(String),
    #[error("{0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The queue is full: retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("request body too large: {0}")]
    PayloadTooLarge(String),
    /// The worker cannot serve this now (shutting down, device gone).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The execution was terminated at a step boundary.
    #[error("terminated: {0}")]
    Terminated(String),
    #[error("not implemented: {0}")]
    NotImplemented(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl WorkerError {
    pub fn input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Input {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A short stable name for the `error_type` field of error bodies.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Store(StoreError::Invalid { .. }) => "validation",
            Self::Store(e) => e.kind(),
            Self::Clip(
                cliptune_clip::ClipError::Config(_) | cliptune_clip::ClipError::Device(_),
            ) => "validation",
            Self::Clip(_) => "model",
            Self::Train(cliptune_train::TrainError::Config { .. })
            | Self::Train(cliptune_train::TrainError::Data(_))
            | Self::Train(cliptune_train::TrainError::TooManyBad { .. }) => "validation",
            Self::Train(cliptune_train::TrainError::Cancelled) => "terminated",
            Self::Train(_) => "training",
            Self::Prep(_) => "validation",
            Self::Input { .. } => "validation",
            Self::BadRequest(_) => "bad_request",
            Self::UnknownFunction(_) | Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Overloaded(_) => "overloaded",
            Self::Unauthorized(_) => "unauthorized",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Unavailable(_) => "unavailable",
            Self::Terminated(_) => "terminated",
            Self::NotImplemented(_) => "not_implemented",
            Self::Internal(_) => "internal",
        }
    }

    /// True for a cooperative stop (termination or shutdown), as opposed to a failure.
    pub fn is_termination(&self) -> bool {
        matches!(
            self,
            Self::Terminated(_) | Self::Train(cliptune_train::TrainError::Cancelled)
        )
    }
}

/// The one place where worker errors become HTTP status codes.
impl From<&WorkerError> for StatusCode {
    fn from(err: &WorkerError) -> Self {
        match err.error_type() {
            "validation" => StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request" => StatusCode::BAD_REQUEST,
            "not_found" => StatusCode::NOT_FOUND,
            "conflict" | "terminated" => StatusCode::CONFLICT,
            "overloaded" => StatusCode::TOO_MANY_REQUESTS,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "remote" => StatusCode::BAD_GATEWAY,
            "not_implemented" => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// A stable machine-readable kind: validation, bad_request, not_found, conflict,
    /// terminated, overloaded, unauthorized, payload_too_large, unavailable, internal, ...
    pub error_type: String,
}

impl IntoResponse for WorkerError {
    fn into_response(self) -> Response {
        let status = StatusCode::from(&self);
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            error_type: self.error_type().to_string(),
        };
        (status, axum::Json(body)).into_response()
    }
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;
