//! The template's nodes as functions of a Dataloop-style input object.
//!
//! Entity inputs come the way Dataloop's FaaS delivers them: `{"model_id": ...}`,
//! `{"dataset_id": ...}`, `{"item_id": ...}`, or a bare id (or name) string. Every node
//! checks its whole input before doing anything ([`validate_input`]), so a bad input is a
//! 422 at submission rather than a failed execution.

pub mod adapter;
pub(crate) mod create_model;
pub mod embed;
pub(crate) mod feed;
pub mod input;
pub mod train;
pub(crate) mod update_variable;

use crate::ctx::NodeCtx;
use crate::error::{Result, WorkerError};
use cliptune_store::{Model, ModelStatus, Platform};
use serde_json::{Map, Value};
use std::path::Path;

pub use adapter::{EmbedDatasetInput, EmbedItemsInput};
pub use create_model::CreateModelInput;
pub use embed::{EmbedInput, EmbedRequest, EmbedTarget};
pub use train::TrainInput;
pub use update_variable::UpdateVariableInput;

/// The variable the template points at the newest trained model.
pub const NEWEST_MODEL_VARIABLE: &str = "Newest CLIP model";
pub const BASE_MODEL_VARIABLE: &str = "Base CLIP model";
pub const DATASET_VARIABLE: &str = "Dataset with captions";
#[cfg(test)] // the template test checks the manifest declares it
pub const CONFIG_VARIABLE: &str = "Model config";

/// The input object (`null` counts as empty).
pub(crate) fn object(input: &Value) -> Result<Map<String, Value>> {
    match input {
        Value::Object(m) => Ok(m.clone()),
        Value::Null => Ok(Map::new()),
        other => Err(WorkerError::input(
            "input",
            format!("must be a JSON object of named inputs, got {other}"),
        )),
    }
}

/// An entity reference: a bare id/name string, or an object with one of `keys` (or `id`).
pub(crate) fn entity_ref(value: &Value, field: &str, keys: &[&str]) -> Result<String> {
    input::ref_id(value, keys).map_err(|m| WorkerError::input(field, m))
}

/// Stores the native checkpoint folder `dir` (weights, config, a run's report files) as
/// `model_id`'s artifacts, then applies `edit` and sets `status`: the status moves on only
/// once the artifacts are stored. How the train node and the CLI (`cliptune models
/// import/create`, `cliptune train`) register a model's weights.
pub async fn store_weights(
    platform: &dyn Platform,
    model_id: &str,
    dir: &Path,
    status: ModelStatus,
    edit: impl FnOnce(&mut Model),
) -> Result<Model> {
    platform.upload_artifacts(model_id, dir).await?;
    let mut model = platform.get_model(model_id).await?;
    edit(&mut model);
    model.status = status;
    Ok(platform.update_model(&model).await?)
}

/// The model named by input `field` (`{"model_id"}` or a string).
pub fn model_input(input: &Value, field: &str) -> Result<String> {
    let map = object(input)?;
    let v = map
        .get(field)
        .ok_or_else(|| WorkerError::input(field, "missing"))?;
    entity_ref(v, field, &["model_id"])
}

/// Rejects input names a node does not know, so that typos are not silently ignored.
pub(crate) fn reject_unknown(map: &Map<String, Value>, known: &[&str]) -> Result<()> {
    for k in map.keys() {
        if !known.contains(&k.as_str()) {
            return Err(WorkerError::input(
                k.clone(),
                format!(
                    "unknown input; this node takes {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The model's weights as a local native checkpoint directory ([`crate::infer::weights`]).
pub(crate) async fn local_weights(
    ctx: &NodeCtx,
    model: &cliptune_store::Model,
) -> Result<std::path::PathBuf> {
    local_weights_for(&ctx.env, model).await
}

/// The checkpoint of a model that carries no artifacts, from `--weights-dir`
/// ([`crate::infer::weights::named`]).
pub(crate) fn named_weights(
    config: &crate::WorkerConfig,
    model: &cliptune_store::Model,
) -> std::result::Result<std::path::PathBuf, String> {
    crate::infer::weights::named(config.weights_dir.as_deref(), model)
}

pub(crate) async fn local_weights_for(
    worker: &crate::ctx::Env,
    model: &cliptune_store::Model,
) -> Result<std::path::PathBuf> {
    crate::infer::weights::local(
        &**worker.platform(),
        &worker.work_dir,
        worker.config.weights_dir.as_deref(),
        model,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::validate_input;
    use crate::Function;
    use serde_json::json;

    #[test]
    fn entity_refs_in_every_dataloop_form() {
        let id = "0123456789abcdef01234567";
        for v in [json!(id), json!({"model_id": id}), json!({"id": id})] {
            assert_eq!(entity_ref(&v, "model", &["model_id"]).unwrap(), id);
        }
        let err = entity_ref(&json!(3), "model", &["model_id"]).unwrap_err();
        assert!(err.to_string().contains("`model`"), "{err}");
        assert!(entity_ref(&json!({"dataset_id": id}), "model", &["model_id"]).is_err());
        assert!(entity_ref(&json!(""), "model", &["model_id"]).is_err());
    }

    #[test]
    fn inputs_are_checked_before_running() {
        assert!(validate_input(Function::Train, &json!({})).is_err());
        assert!(validate_input(Function::Train, &json!({"model": {"model_id": "m"}})).is_ok());
        let err = validate_input(Function::Train, &json!({"model": "m", "modle": 1})).unwrap_err();
        assert_eq!(err.error_type(), "validation");
        assert!(err.to_string().contains("modle"), "{err}");
        assert!(validate_input(Function::Embed, &json!({"dataset_id": "d"})).is_ok());
        assert!(validate_input(Function::Embed, &json!({"items": [{"item_id": "i"}]})).is_ok());
        assert!(validate_input(Function::Embed, &json!({"items": []})).is_err());
        assert!(validate_input(
            Function::CreateModel,
            &json!({"base_model": "b", "dataset": "d", "model_config": "not json"})
        )
        .is_err());
    }
}
