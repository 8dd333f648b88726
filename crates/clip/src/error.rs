use std::path::PathBuf;

/// Errors of the model layer: configuration, checkpoints, devices, libtorch.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("unknown preset {0:?}; known presets: ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px")]
    UnknownPreset(String),
    #[error("invalid device {0:?}: use cpu, cuda, cuda:N or auto")]
    Device(String),
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("checkpoint {path} does not match the architecture:\n  {}", problems.join("\n  "))]
    Mismatch {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ClipError {
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ClipError> = std::result::Result<T, E>;
