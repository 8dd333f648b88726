//! The worker's one error type and its one mapping to HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
pub use cliptune_store::ErrorKind;
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

    /// What kind of failure this is: the `error_type` of error bodies and the HTTP status.
    pub fn kind(&self) -> ErrorKind {
        use cliptune_clip::ClipError;
        use cliptune_train::TrainError;
        match self {
            Self::Store(StoreError::Invalid { .. }) => ErrorKind::Validation,
            Self::Store(e) => e.kind(),
            Self::Clip(ClipError::Config(_) | ClipError::Device(_)) => ErrorKind::Validation,
            Self::Clip(_) => ErrorKind::Model,
            Self::Train(
                TrainError::Config { .. } | TrainError::Data(_) | TrainError::TooManyBad { .. },
            ) => ErrorKind::Validation,
            Self::Train(TrainError::Cancelled) => ErrorKind::Terminated,
            Self::Train(_) => ErrorKind::Training,
            Self::Prep(_) | Self::Input { .. } => ErrorKind::Validation,
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::UnknownFunction(_) | Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Overloaded(_) => ErrorKind::Overloaded,
            Self::Unauthorized(_) => ErrorKind::Unauthorized,
            Self::PayloadTooLarge(_) => ErrorKind::PayloadTooLarge,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Terminated(_) => ErrorKind::Terminated,
            Self::NotImplemented(_) => ErrorKind::NotImplemented,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The wire name of [`Self::kind`] (`error_type` of error bodies).
    pub fn error_type(&self) -> &'static str {
        self.kind().as_str()
    }

    /// True for a cooperative stop (termination or shutdown), as opposed to a failure.
    pub fn is_termination(&self) -> bool {
        matches!(
            self,
            Self::Terminated(_) | Self::Train(cliptune_train::TrainError::Cancelled)
        )
    }
}

/// The one place where error kinds become HTTP status codes.
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Conflict | ErrorKind::Terminated => StatusCode::CONFLICT,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Remote => StatusCode::BAD_GATEWAY,
        ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Model
        | ErrorKind::Training
        | ErrorKind::Io
        | ErrorKind::Database
        | ErrorKind::Corrupt
        | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<&WorkerError> for StatusCode {
    fn from(err: &WorkerError) -> Self {
        status(err.kind())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_statuses() {
        let cases = [
            (StoreError::not_found("model", "m"), "not_found", 404),
            (StoreError::invalid("dql", "bad"), "validation", 422),
            (StoreError::Conflict("c".into()), "conflict", 409),
            (StoreError::Unauthorized("u".into()), "unauthorized", 401),
            (StoreError::Forbidden("f".into()), "forbidden", 403),
            (StoreError::Unavailable("u".into()), "unavailable", 503),
            (
                StoreError::Remote {
                    status: 500,
                    message: "m".into(),
                },
                "remote",
                502,
            ),
            (StoreError::Corrupt("c".into()), "corrupt", 500),
        ];
        for (e, kind, code) in cases {
            let e = WorkerError::from(e);
            assert_eq!(e.error_type(), kind, "{e}");
            assert_eq!(StatusCode::from(&e).as_u16(), code, "{e}");
        }
    }

    #[test]
    fn worker_errors_keep_their_statuses() {
        let cases = [
            (WorkerError::input("f", "m"), "validation", 422),
            (WorkerError::BadRequest("b".into()), "bad_request", 400),
            (WorkerError::UnknownFunction("f".into()), "not_found", 404),
            (WorkerError::Terminated("t".into()), "terminated", 409),
            (WorkerError::Overloaded("o".into()), "overloaded", 429),
            (
                WorkerError::PayloadTooLarge("p".into()),
                "payload_too_large",
                413,
            ),
            (
                WorkerError::NotImplemented("n".into()),
                "not_implemented",
                501,
            ),
            (WorkerError::Internal("i".into()), "internal", 500),
        ];
        for (e, kind, code) in cases {
            assert_eq!(e.error_type(), kind, "{e}");
            assert_eq!(StatusCode::from(&e).as_u16(), code, "{e}");
        }
    }
}
