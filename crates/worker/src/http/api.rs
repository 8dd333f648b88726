//! Request and response bodies of the HTTP API (their schemas go into `openapi.json`).

use crate::executions::Function;
use cliptune_store::{Execution, StatusEntry};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub ready: bool,
    /// `local` or `dataloop`.
    pub backend: String,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// One entry per check (`accepting`, `device`, `store`): `ok` or what is wrong.
    #[schema(value_type = Object)]
    pub checks: Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Executions that may wait per lane before submissions get 429.
    pub max_queue: usize,
    pub embed_batch_size: usize,
    pub drain_seconds: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub backend: String,
    pub device: String,
    /// Whether a bearer token is required.
    pub auth: bool,
    pub functions: Vec<Function>,
    pub limits: Limits,
    pub uptime_seconds: f64,
    pub queue_depth: usize,
}

/// Dataloop's execution request: a function and its named inputs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRequest {
    /// `create-model`, `train`, `update-variable`, `embed` or `pipeline` (Dataloop's names
    /// such as `train_model` and `embed_dataset` work too).
    pub function_name: String,
    /// Named inputs, e.g. `{"model": {"model_id": "..."}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Value,
    /// Ignored (Dataloop sends it); the worker serves one project.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub project_id: Option<String>,
}

/// One entry of an execution's status log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    /// created, in-progress, success, failed, aborted, canceled, rerun, system-failure.
    pub status: String,
    pub percent_complete: u32,
    pub message: Option<String>,
    pub error: Option<String>,
    pub timestamp: String,
}

impl From<StatusEntry> for StatusView {
    fn from(s: StatusEntry) -> Self {
        Self {
            status: s.status.as_str().into(),
            percent_complete: s.percent_complete,
            message: s.message,
            error: s.error,
            timestamp: s.timestamp,
        }
    }
}

/// An execution: Dataloop's shape, plus the latest status's fields at the top level.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionView {
    pub id: String,
    pub function_name: String,
    pub status: String,
    pub percent_complete: u32,
    pub message: Option<String>,
    pub error: Option<String>,
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Object)]
    pub output: Value,
    /// `{id, nodeId, executionId}` for executions of a pipeline run.
    #[schema(value_type = Option<Object>)]
    pub pipeline: Option<Value>,
    pub latest_status: StatusView,
    pub status_log: Vec<StatusView>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Execution> for ExecutionView {
    fn from(e: Execution) -> Self {
        Self {
            id: e.id,
            function_name: e.function_name,
            status: e.status.as_str().into(),
            percent_complete: e.latest_status.percent_complete,
            message: e.latest_status.message.clone(),
            error: e.latest_status.error.clone(),
            input: e.input,
            output: e.output,
            pipeline: e.pipeline.and_then(|p| serde_json::to_value(p).ok()),
            latest_status: e.latest_status.into(),
            status_log: e.status_log.into_iter().map(Into::into).collect(),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// Only executions with this status.
    pub status: Option<String>,
    /// Only executions of this function.
    pub function: Option<String>,
    pub pipeline_id: Option<String>,
    /// Only the node executions of this pipeline run.
    pub pipeline_execution_id: Option<String>,
    /// At most this many, newest first (default 100; 0: all).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PipelineInput {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Map<String, Value>,
}

/// Variable values to set before the run: Dataloop's `{"pipeline": {"input": {...}}}`,
/// or `{"variables": {...}}`. Keys are variable names; Model/Dataset values may be ids or names.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct PipelineExecuteRequest {
    #[serde(default)]
    pub pipeline: Option<PipelineInput>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub variables: Option<Map<String, Value>>,
}

impl PipelineExecuteRequest {
    pub fn values(self) -> Vec<(String, Value)> {
        self.pipeline
            .map(|p| p.input)
            .unwrap_or_default()
            .into_iter()
            .chain(self.variables.unwrap_or_default())
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VariableValue {
    pub name: String,
    #[schema(value_type = Object)]
    pub value: Value,
}

/// The body of `POST /embed`: an execution (a dataset or items) or the online form.
// A schema only (the OpenAPI document): the handler reads the two forms itself.
#[allow(dead_code)]
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbedBody {
    Execution(crate::nodes::EmbedRequest),
    Online(OnlineEmbedRequest),
}

/// Online embedding: vectors for texts and images in the request, in input order.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnlineEmbedRequest {
    #[serde(default)]
    pub texts: Vec<String>,
    /// Base64-encoded image files (JPEG, PNG, WebP, GIF, BMP).
    #[serde(default)]
    pub images: Vec<String>,
    /// Items of the store: their stored vector for the model when they have one, else
    /// their content embedded now.
    #[serde(default)]
    pub item_ids: Vec<String>,
    /// Model id or name; default: the pipeline's "Newest CLIP model".
    #[serde(default)]
    pub model_id: Option<String>,
    /// Pipeline (id or name) whose "Newest CLIP model" is the default model.
    #[serde(default)]
    pub pipeline: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OnlineEmbedResponse {
    pub model_id: String,
    /// L2-normalised text vectors, in the order of `texts`.
    pub texts: Vec<Vec<f32>>,
    /// L2-normalised image vectors, in the order of `images`.
    pub images: Vec<Vec<f32>>,
    /// Vectors of `item_ids`, in their order: the stored vector when the model has one,
    /// else computed from the item's image (image items) or caption (text, prompt items).
    #[serde(default)]
    pub items: Vec<Vec<f32>>,
}
