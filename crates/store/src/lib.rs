//! cliptune's platform layer.
//!
//! - [`entities`]: Dataloop-shaped datasets, items, annotations, models, pipelines,
//!   executions, feature sets and vectors.
//! - [`Platform`]: the async, object-safe trait the pipeline nodes and the CLI code against.
//! - [`dql`]: Dataloop's filter language, evaluated in memory or compiled to SQL.
//! - [`LocalStore`]: the embedded backend (SQLite + content-addressed blobs in one folder).
//! - [`import`]: dataset import from captioned folders and Dataloop exports.
//! - [`rules`]: the validation both backends apply (names, limits, shapes).
//!
//! Backends implement [`Platform`]; callers hold an `Arc<dyn Platform>`.

mod blobs;
pub mod dataloop;
mod db;
pub mod dql;
pub mod entities;
pub mod error;
pub mod import;
mod local;
pub mod platform;
pub mod rules;
mod util;
pub mod vectors;

pub use dataloop::{DataloopAuth, DataloopBackend, DataloopConfig};
pub use entities::*;
pub use error::{ErrorKind, Result, StoreError};
pub use local::LocalStore;
pub use platform::{is_id, item_id_from_url, Platform, PromptContent};
pub use rules::normalize_filename;
pub use util::{guess_mimetype, name_timestamp, new_id, now_rfc3339, parse_rfc3339};
