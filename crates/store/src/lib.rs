//! cliptune's platform layer.
//!
//! - [`entities`]: Dataloop-shaped datasets, items, annotations, models, pipelines,
//!   executions, feature sets and vectors.
//! - [`Platform`]: the async, object-safe trait the pipeline nodes and the CLI code against.
//!
//! Backends implement [`Platform`]; callers hold an `Arc<dyn Platform>`.

pub mod entities;
pub mod error;
pub mod platform;

pub use entities::*;
pub use error::{Result, StoreError};
pub use platform::{is_id, item_id_from_url, Platform, PromptContent};
