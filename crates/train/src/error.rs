use std::path::PathBuf;

/// Errors of the training engine.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A training-config value that cannot work; `key` is the config key at fault.
    #[error("config key `{key}`: {message}")]
    Config { key: String, message: String },
    /// The data cannot be trained or evaluated on (missing files, too few pairs, ...).
    #[error("data: {0}")]
    Data(String),
    /// More bad pairs than `max_bad_fraction` allows; the list names each one.
    #[error("{bad} of {total} pairs are unusable (more than max_bad_fraction {max_fraction}):\n  {}", list.join("\n  "))]
    TooManyBad {
        bad: usize,
        total: usize,
        max_fraction: f64,
        list: Vec<String>,
    },
    /// A checkpoint that cannot be resumed from.
    #[error("resume: {0}")]
    Resume(String),
    /// The caller's cancel flag was set; the last completed epoch's checkpoint remains.
    #[error("training cancelled")]
    Cancelled,
    /// A non-finite loss: the run would only produce garbage from here.
    #[error("loss became {loss} at epoch {epoch}, step {step}: lower learning_rate or use precision fp32")]
    NonFinite { loss: f64, epoch: usize, step: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Clip(#[from] cliptune_clip::ClipError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl TrainError {
    pub(crate) fn config(key: &str, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.to_string(),
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

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
