//! cliptune's platform layer.
//!
//! - [`entities`]: Dataloop-shaped datasets, items, annotations, models, pipelines,
//!   executions, feature sets and vectors.
//! - [`Platform`]: what the pipeline nodes and the CLI code against, the sum of five async,
//!   object-safe traits by entity: [`Datasets`], [`Models`], [`Pipelines`], [`Executions`],
//!   [`Vectors`]; [`prelude`] brings them into scope.
//! - [`dql`]: Dataloop's filter language, evaluated in memory or compiled to SQL.
//! - [`LocalStore`]: the embedded backend (SQLite + content-addressed blobs in one folder).
//! - [`import`]: dataset import from captioned folders and Dataloop exports.
//! - [`rules`]: the validation both backends apply (names, limits, shapes).
//!
//! Backends implement the five traits (and so [`Platform`]); callers hold an
//! `Arc<dyn Platform>`; `use cliptune_store::prelude::*;` to call the methods on a concrete
//! backend.

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
pub use platform::{
    is_id, item_id_from_url, Datasets, Executions, Models, Pipelines, Platform, PromptContent,
    Vectors,
};
pub use rules::normalize_filename;
pub use util::{guess_mimetype, name_timestamp, new_id, now_rfc3339, parse_rfc3339};

/// The store traits, for `use cliptune_store::prelude::*;`: a method called on a concrete
/// backend (`LocalStore`, `DataloopBackend`) needs the trait that declares it in scope (on a
/// `dyn Platform` or a `P: Platform` they all resolve as is).
pub mod prelude {
    pub use crate::platform::{Datasets, Executions, Models, Pipelines, Platform, Vectors};
}
