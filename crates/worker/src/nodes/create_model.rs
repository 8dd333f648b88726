//! *Create New Model*: clones the base model into a new `created` model that points at the
//! dataset, with the shallowly merged config and the train/validation subset filters.
//! Outputs `new_model` and `base_model`, the template node's ports.

use super::input::{json_object, non_blank, parse, DatasetRef, ModelRef};
use crate::ctx::NodeCtx;
use crate::error::{Result, WorkerError};
use cliptune_store::{CloneModel, Subsets};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The ports of the template's *Create New Model* node (`model_configuration`), plus the
/// names cliptune used before (`model_config`, `config`, `model`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModelInput {
    /// The model to clone.
    #[serde(alias = "model")]
    pub base_model: ModelRef,
    /// The dataset the new model trains on.
    pub dataset: DatasetRef,
    /// Keys merged (shallowly) over the base model's configuration.
    #[serde(
        default,
        rename = "model_configuration",
        alias = "model_config",
        alias = "config",
        deserialize_with = "json_object"
    )]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Map<String, Value>>,
    /// The train subset's DQL filter (a bare filter or a whole DQL body); default: items
    /// tagged `train`.
    #[serde(default, deserialize_with = "json_object")]
    #[schema(value_type = Option<Object>)]
    pub train_subset: Option<Map<String, Value>>,
    /// The validation subset's DQL filter; default: items tagged `validation`.
    #[serde(default, deserialize_with = "json_object")]
    #[schema(value_type = Option<Object>)]
    pub validation_subset: Option<Map<String, Value>>,
    /// The new model's name; default: derived from the base model's.
    #[serde(default, deserialize_with = "non_blank")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "non_blank")]
    pub description: Option<String>,
}

impl CreateModelInput {
    pub fn parse(input: &Value) -> Result<Self> {
        let mut input: Self = parse(input)?;
        // A bad subset is refused here, not when training reads it; it is stored as given
        // (a bare filter or a whole DQL body, as the template's defaults are).
        for (name, subset) in [
            ("train_subset", &input.train_subset),
            ("validation_subset", &input.validation_subset),
        ] {
            if let Some(s) = subset {
                cliptune_store::dql::Filter::parse_given(Some(&Value::Object(s.clone())))
                    .map_err(|e| WorkerError::input(name, e.to_string()))?;
            }
        }
        // The adapter file is written into the model's folder: a path is refused before a
        // model exists (the other keys are checked when training reads the merged config).
        if let Some(c) = &input.config {
            cliptune_train::config::check_weights_filename(c)?;
        }
        for text in [&mut input.name, &mut input.description] {
            *text = text.take().map(|t| t.trim().to_string());
        }
        Ok(input)
    }
}

pub async fn run(input: CreateModelInput, ctx: &NodeCtx) -> Result<Value> {
    let platform = ctx.env.platform();
    ctx.progress(10, "resolving the base model and the dataset");
    let base = platform.resolve_model(&input.base_model).await?;
    let dataset = platform.resolve_dataset(&input.dataset).await?;
    if base.artifacts.is_empty() {
        // A marketplace model: its weights come by name from the weights directory.
        super::named_weights(&ctx.env.config, &base)
            .map_err(|m| WorkerError::input("base_model", m))?;
    }
    let defaults = Subsets::default_filters();
    let subsets = Subsets {
        train: input.train_subset.map_or(defaults.train, Value::Object),
        validation: input
            .validation_subset
            .map_or(defaults.validation, Value::Object),
    };
    ctx.check()?;
    let model = platform
        .clone_model(
            &base.id,
            CloneModel {
                name: input.name,
                configuration: input.config,
                dataset_id: Some(dataset.id.clone()),
                subsets: Some(subsets),
                status: None,
                description: input.description,
            },
        )
        .await?;
    ctx.progress(100, format!("created model {} ({})", model.name, model.id));
    // Keyed by the node's output ports.
    Ok(json!({
        "new_model": {"model_id": model.id},
        "base_model": {"model_id": base.id},
    }))
}
