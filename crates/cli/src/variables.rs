//! `cliptune variables ...`: pipeline variables in the embedded store.

use crate::datasets::{block_on, open_store};
use crate::{output, Ctx};
use anyhow::Result;
use clap::Subcommand;
use cliptune_store::prelude::*;
use cliptune_store::{Variable, VariableUpdate};
use serde_json::Value;

#[derive(Subcommand)]
pub enum VariablesCommand {
    /// Print one variable of a pipeline, or all of them without NAME.
    ///
    /// Example: cliptune variables get --pipeline "CLIP Fine-tuning" "Newest CLIP model" --json
    Get {
        /// Pipeline id or name.
        #[arg(long)]
        pipeline: String,
        name: Option<String>,
    },
    /// Set a variable. VALUE is JSON when it parses as JSON, else a string; for Model and
    /// Dataset variables it may be an id or a name (stored as the id).
    ///
    /// Examples:
    ///   cliptune variables set --pipeline "CLIP Fine-tuning" "Model config" '{"num_epochs": 5}'
    ///   cliptune variables set --pipeline "CLIP Fine-tuning" "Newest CLIP model" my-model --require-trained
    Set {
        /// Pipeline id or name.
        #[arg(long)]
        pipeline: String,
        name: String,
        value: String,
        /// For a Model variable: refuse unless the model is trained and its artifacts are stored
        /// (checked atomically with the update).
        #[arg(long)]
        require_trained: bool,
    },
}

fn show(v: &Variable) -> String {
    format!("{} ({}) = {}", v.name, v.var_type, v.value)
}

pub fn run(ctx: &Ctx, cmd: VariablesCommand) -> Result<()> {
    let store = open_store(ctx)?;
    match cmd {
        VariablesCommand::Get { pipeline, name } => {
            let vars = block_on(async {
                let p = store.resolve_pipeline(&pipeline).await?;
                match name {
                    None => anyhow::Ok(p.variables),
                    Some(n) => match p.variable(&n) {
                        Some(v) => Ok(vec![v.clone()]),
                        None => anyhow::bail!(
                            "pipeline {} has no variable {n:?} (it has: {})",
                            p.name,
                            p.variables
                                .iter()
                                .map(|v| v.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    },
                }
            })?;
            if vars.len() == 1 {
                output::print(ctx, &vars[0], show);
            } else {
                output::print(ctx, &vars, |vs| {
                    vs.iter().map(show).collect::<Vec<_>>().join("\n")
                });
            }
        }
        VariablesCommand::Set {
            pipeline,
            name,
            value,
            require_trained,
        } => {
            let var = block_on(async {
                let p = store.resolve_pipeline(&pipeline).await?;
                let Some(current) = p.variable(&name) else {
                    anyhow::bail!("pipeline {} has no variable {name:?}", p.name);
                };
                let kind = current.var_type.to_ascii_lowercase();
                let parsed = match kind.as_str() {
                    "model" => Value::String(store.resolve_model(&value).await?.id),
                    "dataset" => Value::String(store.resolve_dataset(&value).await?.id),
                    _ => serde_json::from_str(&value).unwrap_or(Value::String(value.clone())),
                };
                if require_trained {
                    let id = parsed.as_str().unwrap_or_default().to_string();
                    return Ok(store.promote_model_variable(&p.id, &name, &id).await?);
                }
                let vars = store
                    .update_variables(
                        &p.id,
                        &[VariableUpdate {
                            name: name.clone(),
                            value: parsed,
                        }],
                    )
                    .await?;
                vars.into_iter()
                    .find(|v| v.name == name)
                    .ok_or_else(|| anyhow::anyhow!("variable {name:?} vanished"))
            })?;
            output::print(ctx, &var, show);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cliptune_store::{ModelStatus, NewModel, NewPipeline};
    use serde_json::json;

    #[test]
    fn set_resolves_names_and_require_trained_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx {
            home: dir.path().to_path_buf(),
            json: true,
        };
        let store = open_store(&ctx).unwrap();
        let (pipe, model) = block_on(async {
            let model = store
                .create_model(NewModel::new("m1", ModelStatus::Created))
                .await?;
            let var = |name: &str, t: &str, value: Value| Variable {
                id: String::new(),
                name: name.into(),
                reference: String::new(),
                var_type: t.into(),
                value,
                description: None,
            };
            let pipe = store
                .create_pipeline(NewPipeline {
                    name: "p".into(),
                    variables: vec![
                        var("Newest CLIP model", "Model", json!(null)),
                        var("Model config", "Json", json!({})),
                    ],
                    ..NewPipeline::default()
                })
                .await?;
            anyhow::Ok((pipe, model))
        })
        .unwrap();
        let set = |name: &str, value: &str, require_trained: bool| {
            run(
                &ctx,
                VariablesCommand::Set {
                    pipeline: "p".into(),
                    name: name.into(),
                    value: value.into(),
                    require_trained,
                },
            )
        };
        set("Model config", r#"{"num_epochs": 3}"#, false).unwrap();
        set("Newest CLIP model", "m1", false).unwrap();
        let err = set("Newest CLIP model", "m1", true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not trained"), "{err}");
        assert!(set("Nope", "1", false).is_err());
        let vars = block_on(store.get_variables(&pipe.id)).unwrap();
        assert_eq!(
            vars[0].value,
            json!(model.id),
            "the name was stored as the id"
        );
        assert_eq!(vars[1].value, json!({"num_epochs": 3}));
    }
}
