//! The cliptune worker: the pipeline's nodes as functions, executions with one owner per
//! resource, the pipeline runner and the HTTP API.
//!
//! - [`Worker`]: the shared state (platform, device thread, queues, metrics). Start one with
//!   [`Worker::start`]; it recovers executions a previous process left behind.
//! - [`executions`]: submit / wait / terminate, lanes and recovery.
//! - [`nodes`]: `create-model`, `train`, `update-variable`, `embed`.
//! - [`pipeline`]: the `dataloop.json` manifest, installing its template, running it.
//! - [`http`]: the axum router (`cliptune serve`); its online side (dynamic batching,
//!   search, the page) is [`batcher`], [`search`] and `http::online`.

pub mod attached;
pub mod batcher;
pub mod config;
pub mod ctx;
pub mod demo;
pub mod device;
pub mod dispatch;
pub mod error;
pub mod executions;
pub mod function;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod nodes;
pub mod pipeline;
pub(crate) mod run;
pub mod search;
pub mod template;

pub use config::{Backend, WorkerConfig};
pub use error::{Result, WorkerError};
pub use executions::{Function, Worker, SERVICE_NAME};
