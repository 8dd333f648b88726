//! *Update Variable*: points a Model variable (by default "Newest CLIP model") at a trained
//! model, in one atomic platform step that refuses models without stored weights.

use super::{entity_ref, object, reject_unknown, NEWEST_MODEL_VARIABLE};
use crate::ctx::NodeCtx;
use crate::error::{Result, WorkerError};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct UpdateVariableInput {
    pub model: String,
    pub variable: String,
    /// Pipeline id or name; defaults to the pipeline the execution runs in.
    pub pipeline: Option<String>,
}

impl UpdateVariableInput {
    pub fn parse(input: &Value) -> Result<Self> {
        let map = object(input)?;
        reject_unknown(&map, &["model", "variable", "pipeline", "pipeline_id"])?;
        let model = map
            .get("model")
            .ok_or_else(|| WorkerError::input("model", "missing"))?;
        let variable = match map.get("variable") {
            None | Some(Value::Null) => NEWEST_MODEL_VARIABLE.to_string(),
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(other) => {
                return Err(WorkerError::input(
                    "variable",
                    format!("must be a variable name, got {other}"),
                ))
            }
        };
        let pipeline = match map.get("pipeline").or_else(|| map.get("pipeline_id")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(entity_ref(v, "pipeline", &["pipeline_id"])?),
        };
        Ok(Self {
            model: entity_ref(model, "model", &["model_id"])?,
            variable,
            pipeline,
        })
    }
}

pub async fn run(input: UpdateVariableInput, ctx: &NodeCtx) -> Result<Value> {
    let platform = ctx.env.platform();
    let pipeline = match (&input.pipeline, &ctx.pipeline) {
        (Some(p), _) => platform.resolve_pipeline(p).await?,
        (None, Some(p)) => platform.get_pipeline(&p.id).await?,
        (None, None) => {
            return Err(WorkerError::input(
                "pipeline",
                "missing: give `pipeline` when not running inside a pipeline",
            ))
        }
    };
    let model = platform.resolve_model(&input.model).await?;
    let old = pipeline
        .variable(&input.variable)
        .map(|v| v.value.clone())
        .ok_or_else(|| {
            WorkerError::input(
                "variable",
                format!(
                    "pipeline {} has no variable {:?}",
                    pipeline.name, input.variable
                ),
            )
        })?;
    ctx.check()?;
    let updated = platform
        .promote_model_variable(&pipeline.id, &input.variable, &model.id)
        .await?;
    ctx.progress(
        100,
        format!("{:?}: {} -> {}", input.variable, old, updated.value),
    );
    let mut out = json!({
        "pipeline_id": pipeline.id,
        "variable": input.variable,
        "old_value": old,
        "new_value": updated.value,
        "model": {"model_id": model.id},
    });
    // The template's built-in node names its output port after the variable.
    out[&input.variable] = json!({"model_id": model.id});
    Ok(out)
}
