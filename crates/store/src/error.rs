//! The one error type of the platform layer.

use std::path::PathBuf;

/// Every failure a [`crate::Platform`] call can report.
///
/// Variants are chosen so a worker can map them to HTTP status codes with
/// [`StoreError::http_status`] and so the Dataloop backend can map its REST answers back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entity does not exist (HTTP 404).
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// The request is malformed: bad DQL, wrong vector size, bad name... (HTTP 400).
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    /// The request clashes with the current state: duplicate name, finished execution,
    /// a model that is not trained yet... (HTTP 409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// No or bad credentials (HTTP 401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Credentials are fine but not allowed to do this (HTTP 403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The backend cannot be reached or is overloaded; retrying later may work (HTTP 503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The remote platform answered with an unexpected status (HTTP 502).
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

    /// The HTTP status a server should answer for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::Invalid { .. } => 400,
            Self::Conflict(_) => 409,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::Unavailable(_) => 503,
            Self::Remote { .. } => 502,
            Self::Io { .. } | Self::Db(_) | Self::Corrupt(_) => 500,
        }
    }

    /// A short stable name for the `error_type` field of HTTP error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Invalid { .. } => "validation",
            Self::Conflict(_) => "conflict",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable(_) => "unavailable",
            Self::Remote { .. } => "remote",
            Self::Io { .. } => "io",
            Self::Db(_) => "database",
            Self::Corrupt(_) => "corrupt",
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
