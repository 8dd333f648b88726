//! *Update Variable*: points a Model variable (by default "Newest CLIP model") at a trained
//! model, in one atomic platform step that refuses models without stored weights.

use super::input::{non_blank, parse, ModelRef, PipelineRef};
use super::NEWEST_MODEL_VARIABLE;
use crate::ctx::NodeCtx;
use crate::error::{Result, WorkerError};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

/// *Update Variable*'s inputs.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVariableInput {
    /// The trained model the variable will point at.
    pub model: ModelRef,
    /// The Model variable to update.
    #[serde(default = "newest", deserialize_with = "variable")]
    #[schema(default = "Newest CLIP model")]
    pub variable: String,
    /// Pipeline id or name; defaults to the pipeline the execution runs in.
    #[serde(default, alias = "pipeline_id")]
    pub pipeline: Option<PipelineRef>,
}

fn newest() -> String {
    NEWEST_MODEL_VARIABLE.to_string()
}

/// `null` is the default variable too.
fn variable<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(non_blank(d)?.unwrap_or_else(newest))
}

impl UpdateVariableInput {
    pub fn parse(input: &Value) -> Result<Self> {
        parse(input)
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
