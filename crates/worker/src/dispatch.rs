//! From a function name to its node: input checks at submission and the one dispatch of a
//! run. It sits above `nodes` and `pipeline` (the runner is a node too), so neither of them
//! imports the other's caller.

use crate::ctx::NodeCtx;
use crate::error::Result;
use crate::function::Function;
use crate::nodes::{
    self, CreateModelInput, EmbedDatasetInput, EmbedInput, EmbedItemsInput, EmbedTarget,
    TrainInput, UpdateVariableInput,
};
use crate::pipeline::{self, RunInput};
use serde_json::Value;

/// Checks `input` against what `function` needs.
pub fn validate_input(function: Function, input: &Value) -> Result<()> {
    match function {
        Function::CreateModel => CreateModelInput::parse(input).map(drop),
        Function::Train => TrainInput::parse(input).map(drop),
        Function::UpdateVariable => UpdateVariableInput::parse(input).map(drop),
        Function::Embed => EmbedInput::parse(input).map(drop),
        Function::EmbedItems => EmbedItemsInput::parse(input).map(drop),
        Function::EmbedDataset => EmbedDatasetInput::parse(input).map(drop),
        Function::Pipeline => RunInput::parse(input).map(drop),
    }
}

/// Resolves the models, datasets and pipelines `input` names, so that an unknown one is a
/// 404 at submission instead of an execution that fails later. (Item lists are checked
/// item by item as the node reads them.)
pub async fn check_refs(
    function: Function,
    input: &Value,
    platform: &dyn cliptune_store::Platform,
) -> Result<()> {
    match function {
        Function::CreateModel => {
            let i = CreateModelInput::parse(input)?;
            platform.resolve_model(&i.base_model).await?;
            platform.resolve_dataset(&i.dataset).await?;
        }
        Function::Train => {
            platform
                .resolve_model(&TrainInput::parse(input)?.model)
                .await?;
        }
        Function::UpdateVariable => {
            let i = UpdateVariableInput::parse(input)?;
            platform.resolve_model(&i.model).await?;
            if let Some(p) = &i.pipeline {
                platform.resolve_pipeline(p).await?;
            }
        }
        Function::Embed | Function::EmbedItems | Function::EmbedDataset => {
            let i = match function {
                Function::EmbedItems => EmbedItemsInput::parse(input)?.into(),
                Function::EmbedDataset => EmbedDatasetInput::parse(input)?.into(),
                _ => EmbedInput::parse(input)?,
            };
            if let EmbedTarget::Dataset { id, .. } = &i.target {
                platform.resolve_dataset(id).await?;
            }
            if let Some(m) = &i.model {
                platform.resolve_model(m).await?;
            }
            if let Some(p) = &i.pipeline {
                platform.resolve_pipeline(p).await?;
            }
        }
        Function::Pipeline => {}
    }
    Ok(())
}

/// Runs one node to its output.
pub async fn run(function: Function, input: &Value, ctx: &NodeCtx) -> Result<Value> {
    match function {
        Function::CreateModel => {
            nodes::create_model::run(CreateModelInput::parse(input)?, ctx).await
        }
        Function::Train => nodes::train::run(TrainInput::parse(input)?, ctx).await,
        Function::UpdateVariable => {
            nodes::update_variable::run(UpdateVariableInput::parse(input)?, ctx).await
        }
        Function::Embed => nodes::embed::run(EmbedInput::parse(input)?, ctx).await,
        Function::EmbedItems => {
            nodes::adapter::embed_items(EmbedItemsInput::parse(input)?, ctx).await
        }
        Function::EmbedDataset => {
            nodes::adapter::embed_dataset(EmbedDatasetInput::parse(input)?, ctx).await
        }
        Function::Pipeline => pipeline::run(RunInput::parse(input)?, ctx).await,
    }
}
