//! The one error type of the platform layer.

use std::path::PathBuf;

/// Every failure a [`crate::Platform`] call can report.
///
/// Variants are chosen so a worker can map them to HTTP status codes through
/// [`StoreError::kind`] and so the Dataloop backend can map its REST answers back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entity does not exist (`not_found`).
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// The request is malformed: bad DQL, wrong vector size, bad name... (`validation`).
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    /// The request clashes with the current state: duplicate name, finished execution,
    /// a model that is not trained yet... (`conflict`).
    #[error("conflict: {0}")]
    Conflict(String),
    /// No or bad credentials (`unauthorized`).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Credentials are fine but not allowed to do this (`forbidden`).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The backend cannot be reached or is overloaded; retrying later may work (`unavailable`).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The remote platform answered with an unexpected status (`remote`).
    #[error("remote error (HTTP {status}): {message}")]
    Remote { status: u16, message: String },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The embedded database failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// Stored data does not have the shape it must have (a bug or tampering).
    #[error("corrupt store: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// What kind of failure this is, for the `error_type` field of HTTP error bodies.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Invalid { .. } => ErrorKind::Validation,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Unauthorized(_) => ErrorKind::Unauthorized,
            Self::Forbidden(_) => ErrorKind::Forbidden,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Remote { .. } => ErrorKind::Remote,
            Self::Io { .. } => ErrorKind::Io,
            Self::Db(_) => ErrorKind::Database,
            Self::Corrupt(_) => ErrorKind::Corrupt,
        }
    }
}

/// The kinds of failure the platform reports, named by the `error_type` field of HTTP
/// error bodies. It lives here, below the worker, so that [`StoreError::kind`] and the
/// worker's errors share one vocabulary; the worker maps each kind to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input cannot work (422).
    Validation,
    /// The request body is not the JSON it must be.
    BadRequest,
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    Conflict,
    /// Stopped at a step boundary by a termination or a shutdown.
    Terminated,
    Overloaded,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    Unavailable,
    /// The remote platform answered with an unexpected status.
    Remote,
    NotImplemented,
    /// The model failed (loading or running it).
    Model,
    Training,
    Io,
    Database,
    Corrupt,
    Internal,
}

impl ErrorKind {
    /// The wire name (`error_type`); clients match on these, so they never change.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validation => "validation",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Conflict => "conflict",
            Self::Terminated => "terminated",
            Self::Overloaded => "overloaded",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unavailable => "unavailable",
            Self::Remote => "remote",
            Self::NotImplemented => "not_implemented",
            Self::Model => "model",
            Self::Training => "training",
            Self::Io => "io",
            Self::Database => "database",
            Self::Corrupt => "corrupt",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
