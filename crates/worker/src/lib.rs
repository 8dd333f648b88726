//! The cliptune worker: the pipeline's nodes as functions, executions with one owner per
//! resource, the pipeline runner and the HTTP API.
//!
//! Its modules are private (docs/architecture.md, "Inside the worker"); what the CLI, the
//! examples and the integration tests use is this facade:
//!
//! - Running: [`Worker`] (the shared state: platform, device thread, queues, metrics; start
//!   one with [`Worker::start`], which recovers executions a previous process left behind),
//!   [`WorkerConfig`], [`Backend`], [`Function`], [`AttachRequest`], [`SERVICE_NAME`].
//! - Serving: [`serve`] (the axum router of `cliptune serve`), [`openapi_document`].
//! - Pipelines: [`read_manifest`], [`install_pipeline`], [`set_pipeline_variables`],
//!   [`NEWEST_MODEL_VARIABLE`].
//! - Inference in-process (`cliptune embed`, `cliptune search`): [`local_weights`],
//!   [`Prepared`], [`Input`], [`LocalEncoder`].
//! - Search: [`search`] (a model's feature set, top-k, a text query on a worker).
//! - Models and training data: [`store_weights`], [`dataset_source`].
//! - Demo data: [`demo`].

mod attached;
mod batcher;
mod config;
mod ctx;
pub mod demo;
mod device;
mod dispatch;
mod error;
mod executions;
mod function;
mod http;
mod infer;
mod metrics;
mod nodes;
mod pipeline;
mod run;
pub mod search;
mod template;

pub use attached::AttachRequest;
pub use config::{Backend, WorkerConfig};
pub use error::{Result, WorkerError};
pub use executions::{Function, Worker, SERVICE_NAME};
pub use http::{openapi_document, serve};
pub use infer::weights::local as local_weights;
pub use infer::{Input, LocalEncoder, Prepared};
pub use nodes::train::dataset_source;
pub use nodes::{store_weights, NEWEST_MODEL_VARIABLE};
pub use pipeline::{
    install as install_pipeline, set_variables as set_pipeline_variables, Installed,
};
pub use template::read_manifest;

#[doc(hidden)]
pub use http::online::embed_batched;
