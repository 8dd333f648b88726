//! *Create New Model*: clones the base model into a new `created` model that points at the
//! dataset, with the shallowly merged config and the train/validation subset filters.
//! Outputs `new_model` and `base_model`, the template node's ports.

use super::{entity_ref, optional_object};
use crate::ctx::NodeCtx;
use crate::error::{Result, WorkerError};
use cliptune_store::{CloneModel, Subsets};
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
pub struct CreateModelInput {
    pub base_model: String,
    pub dataset: String,
    pub config: Option<Map<String, Value>>,
    pub train_subset: Option<Value>,
    pub validation_subset: Option<Value>,
    pub name: Option<String>,
    pub description: Option<String>,
}

/// The ports of the template's *Create New Model* node (`model_configuration`), plus the
/// names cliptune used before (`model_config`, `config`, `model`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(alias = "model")]
    base_model: Option<Value>,
    dataset: Option<Value>,
    #[serde(default, alias = "model_config", alias = "config")]
    model_configuration: Option<Value>,
    #[serde(default)]
    train_subset: Option<Value>,
    #[serde(default)]
    validation_subset: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    description: Option<Value>,
}

impl CreateModelInput {
    pub fn parse(input: &Value) -> Result<Self> {
        let input = match input {
            Value::Null => json!({}),
            v => v.clone(),
        };
        let raw: Raw = serde_json::from_value(input)
            .map_err(|e| WorkerError::input("input", e.to_string()))?;
        let base = raw
            .base_model
            .ok_or_else(|| WorkerError::input("base_model", "missing"))?;
        let dataset = raw
            .dataset
            .ok_or_else(|| WorkerError::input("dataset", "missing"))?;
        let filter = |name: &str, given: Option<Value>| -> Result<Option<Value>> {
            let subset = match given {
                None | Some(Value::Null) => return Ok(None),
                Some(v @ Value::Object(_)) => v,
                Some(Value::String(s)) => serde_json::from_str::<Value>(&s)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| WorkerError::input(name, "must be a DQL filter object"))?,
                Some(other) => {
                    return Err(WorkerError::input(
                        name,
                        format!("must be a DQL filter object, got {other}"),
                    ))
                }
            };
            // A bad subset is refused here, not when training reads it; it is stored as
            // given (a bare filter or a whole DQL body, as the template's defaults are).
            cliptune_store::dql::Filter::parse_given(Some(&subset))
                .map_err(|e| WorkerError::input(name, e.to_string()))?;
            Ok(Some(subset))
        };
        let text = |name: &str, given: Option<Value>| -> Result<Option<String>> {
            match given {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                Some(other) => Err(WorkerError::input(
                    name,
                    format!("must be a non-empty string, got {other}"),
                )),
            }
        };
        let mut config = Map::new();
        if let Some(c) = raw.model_configuration {
            config.insert("model_configuration".into(), c);
        }
        let config = optional_object(&config, &["model_configuration"])?;
        // The adapter file is written into the model's folder: a path is refused before a
        // model exists (the other keys are checked when training reads the merged config).
        if let Some(c) = &config {
            cliptune_train::config::check_weights_filename(c)?;
        }
        Ok(Self {
            base_model: entity_ref(&base, "base_model", &["model_id"])?,
            dataset: entity_ref(&dataset, "dataset", &["dataset_id"])?,
            config,
            train_subset: filter("train_subset", raw.train_subset)?,
            validation_subset: filter("validation_subset", raw.validation_subset)?,
            name: text("name", raw.name)?,
            description: text("description", raw.description)?,
        })
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
        train: input.train_subset.unwrap_or(defaults.train),
        validation: input.validation_subset.unwrap_or(defaults.validation),
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
