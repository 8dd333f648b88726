//! Contrastive fine-tuning of CLIP: the training config, symmetric InfoNCE, AdamW, data
//! loading with bounded prefetch, evaluation (loss, recall, caption accuracy), early
//! stopping, atomic checkpoints with exact resume, WiSE-FT, and run reports.
//!
//! Entry points: [`trainer::run`] (a whole run, with a progress observer and a cancel flag)
//! and [`trainer::evaluate_pairs`]. Data comes as [`data::Pair`]s from a folder
//! ([`data::read_folder`]) or from any caller (a platform dataset).

pub mod config;
pub mod data;
mod error;
pub mod evaluate;
pub mod feed;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod precision;
pub mod report;
pub mod state;
pub mod trainer;

pub use config::{LrSchedule, Precision, TrainConfig};
pub use data::{BadPair, ImageFetcher, ImageSource, Pair, Source};
pub use error::{Result, TrainError};
pub use metrics::Metrics;
pub use trainer::{run, Event, Job, Outcome, Phase, Progress, Stage, Stages};
