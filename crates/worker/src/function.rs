//! The functions a worker serves, by the names every caller uses for them.

use crate::error::{Result, WorkerError};
use serde::Serialize;

/// The functions a worker serves: the template's nodes, the model adapter's functions
/// (`train_model` is [`Function::Train`]; `embed_items`, `embed_dataset`), pipeline runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    CreateModel,
    Train,
    UpdateVariable,
    /// cliptune's own embedding node: a dataset (`filter`) or a list of items, counts out.
    Embed,
    /// The adapter's `embed_items(items)`: the items and their vectors out.
    EmbedItems,
    /// The adapter's `embed_dataset(dataset, filters)`.
    EmbedDataset,
    /// A pipeline run: drives the node executions in order.
    Pipeline,
}

impl Function {
    pub const ALL: [Function; 7] = [
        Self::CreateModel,
        Self::Train,
        Self::UpdateVariable,
        Self::Embed,
        Self::EmbedItems,
        Self::EmbedDataset,
        Self::Pipeline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateModel => "create-model",
            Self::Train => "train",
            Self::UpdateVariable => "update-variable",
            Self::Embed => "embed",
            Self::EmbedItems => "embed-items",
            Self::EmbedDataset => "embed-dataset",
            Self::Pipeline => "pipeline",
        }
    }

    /// Our names, plus the ones dataloop.json's modules, Dataloop's CLIP adapter and its
    /// template use (`create_model`, `train_model`, `embed_items`, `embed_dataset`, ...).
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match n.as_str() {
            "create-model" | "create-new-model" | "clone-model" => Self::CreateModel,
            "train" | "train-model" => Self::Train,
            "update-variable" | "update-newest-model" | "update-model-variable" => {
                Self::UpdateVariable
            }
            "embed" | "extract-features" => Self::Embed,
            "embed-items" => Self::EmbedItems,
            "embed-dataset" => Self::EmbedDataset,
            "pipeline" | "run-pipeline" | "execute-pipeline" => Self::Pipeline,
            _ => return Err(WorkerError::UnknownFunction(name.to_string())),
        })
    }

    /// Running it again after an interruption gives the same result without duplicates:
    /// training resumes from its last completed epoch (its run directory is per model),
    /// embedding skips items that have a vector, a pipeline run reuses finished nodes.
    pub fn idempotent(self) -> bool {
        matches!(
            self,
            Self::Train
                | Self::UpdateVariable
                | Self::Embed
                | Self::EmbedItems
                | Self::EmbedDataset
                | Self::Pipeline
        )
    }
}
