//! The app manifest (`dataloop.json`), installing its pipeline template into a platform,
//! and running a pipeline: one execution per node, in connection order, then the
//! embedding branches (see [`crate::template`] and [`BRANCH_ITEMS`]).
//!
//! A run is itself an execution (function `pipeline`) whose node executions carry
//! `pipeline.executionId = <run id>`. A node's inputs come, in this order, from the
//! connection into its port (the upstream node's output of that port's name), from the
//! pipeline variable the port names (read when the node starts), or from the port's
//! default value. An embedding branch reads its dataset and model variables when it
//! starts, so it embeds with the "Newest CLIP model" the update step just set.
//! A resumed run (after a restart) reuses the outputs of nodes that already succeeded.

use crate::ctx::NodeCtx;
use crate::error::{Result, WorkerError};
use crate::function::Function;
use crate::nodes::{entity_ref, object, reject_unknown, DATASET_VARIABLE, NEWEST_MODEL_VARIABLE};
use cliptune_store::{
    ExecutionPipeline, ExecutionQuery, ExecutionStatus, ItemQuery, NewPipeline, Pipeline, Platform,
    Variable, VariableUpdate,
};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

use crate::template::{node_id, node_name, plan, step_of, Step};
use crate::template::{templates, Template};

/// Result of installing a template.
#[derive(Debug, Serialize)]
pub struct Installed {
    pub pipeline: Pipeline,
    /// False when a pipeline of that name existed already (it is left as it is).
    pub created: bool,
}

/// Installs the template `name` (or the manifest's first) as a pipeline named `as_name`
/// (default: the template's name). Installing again returns the existing pipeline.
pub async fn install(
    platform: &dyn Platform,
    manifest: &Value,
    name: Option<&str>,
    as_name: Option<&str>,
) -> Result<Installed> {
    let all = templates(manifest)?;
    let t = match name {
        Some(n) => all.iter().find(|t| t.name == n).ok_or_else(|| {
            WorkerError::input(
                "template",
                format!(
                    "no template {n:?} in the manifest (it has {})",
                    all.iter()
                        .map(|t| format!("{:?}", t.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?,
        None => all
            .first()
            .ok_or_else(|| WorkerError::input("manifest", "has no pipeline template"))?,
    };
    let pipeline_name = as_name.unwrap_or(&t.name);
    match platform.pipeline_by_name(pipeline_name).await {
        Ok(p) => {
            return Ok(Installed {
                pipeline: p,
                created: false,
            })
        }
        Err(cliptune_store::StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let pipeline = platform
        .create_pipeline(NewPipeline {
            name: pipeline_name.to_string(),
            nodes: t.nodes.clone(),
            connections: t.connections.clone(),
            start_nodes: t.start_nodes.clone(),
            variables: t.variables.clone(),
        })
        .await?;
    Ok(Installed {
        pipeline,
        created: true,
    })
}

/// Sets variables by name, as `PATCH /pipelines/{id}/variables` and `--var` do. Model and
/// Dataset values may be given by name; they are stored as ids. A Json variable given as
/// a string is parsed.
pub async fn set_variables(
    platform: &dyn Platform,
    pipeline: &Pipeline,
    values: &[(String, Value)],
) -> Result<Vec<Variable>> {
    let mut updates = Vec::with_capacity(values.len());
    for (name, value) in values {
        let var = pipeline.variable(name).ok_or_else(|| {
            WorkerError::input(
                name.clone(),
                format!(
                    "pipeline {} has no such variable (it has {})",
                    pipeline.name,
                    pipeline
                        .variables
                        .iter()
                        .map(|v| format!("{:?}", v.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let value = match (var.var_type.to_ascii_lowercase().as_str(), value) {
            (_, Value::Null) => Value::Null,
            ("model", v) => {
                let r = entity_ref(v, name, &["model_id"])?;
                json!(platform.resolve_model(&r).await?.id)
            }
            ("dataset", v) => {
                let r = entity_ref(v, name, &["dataset_id"])?;
                json!(platform.resolve_dataset(&r).await?.id)
            }
            ("json", Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                WorkerError::input(name.clone(), format!("is a Json variable; {e}"))
            })?,
            (_, v) => v.clone(),
        };
        updates.push(VariableUpdate {
            name: name.clone(),
            value,
        });
    }
    Ok(platform.update_variables(&pipeline.id, &updates).await?)
}

/// The input of a pipeline run execution.
#[derive(Debug, Clone)]
pub struct RunInput {
    pub pipeline: String,
}

impl RunInput {
    pub fn parse(input: &Value) -> Result<Self> {
        let map = object(input)?;
        reject_unknown(&map, &["pipeline", "pipeline_id"])?;
        let p = map
            .get("pipeline_id")
            .or_else(|| map.get("pipeline"))
            .ok_or_else(|| WorkerError::input("pipeline_id", "missing"))?;
        Ok(Self {
            pipeline: entity_ref(p, "pipeline_id", &["pipeline_id"])?,
        })
    }
}

/// One node's part of a run.
#[derive(Debug, Clone, Serialize)]
struct NodeRun {
    node_id: String,
    name: String,
    function: &'static str,
    /// The node's execution (an embedding branch's last; none for an empty dataset).
    execution_id: Option<String>,
    status: &'static str,
    output: Value,
}

/// Items per execution of an embedding branch. Dataloop runs its Embeddings node once per
/// item; cliptune batches the items the storage node would emit into `embed-items`
/// executions of this many, so the model loads once per batch of device batches and a
/// resumed run redoes at most one of them.
pub const BRANCH_ITEMS: usize = 512;

/// Drives a run: each node as its own execution, waiting for one before the next; then
/// the embedding branches.
pub async fn run(input: RunInput, ctx: &NodeCtx) -> Result<Value> {
    let platform = ctx.env.platform().clone();
    let pipeline = platform.resolve_pipeline(&input.pipeline).await?;
    let template = Template {
        name: pipeline.name.clone(),
        nodes: pipeline.nodes.clone(),
        connections: pipeline.connections.clone(),
        start_nodes: pipeline.start_nodes.clone(),
        variables: pipeline.variables.clone(),
    };
    let plan = plan(&template)?;
    let by_id: HashMap<&str, &Value> = template
        .nodes
        .iter()
        .filter_map(|n| Some((node_id(n).ok()?, n)))
        .collect();
    let variables_before: Map<String, Value> = pipeline
        .variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    // Node executions of this run that exist already (a resumed run).
    let earlier = platform
        .list_executions(&ExecutionQuery {
            pipeline_execution_id: Some(ctx.execution_id.clone()),
            ..ExecutionQuery::default()
        })
        .await?;
    let steps = plan.main.len() + plan.branches.len();
    let mut outputs: HashMap<String, Value> = HashMap::new();
    let mut runs: Vec<NodeRun> = Vec::new();
    for (i, id) in plan.main.iter().enumerate() {
        ctx.check()?;
        let node = by_id[id.as_str()];
        let Step::Run(function) = step_of(node)? else {
            unreachable!("plan() keeps storage nodes out of the main flow")
        };
        let name = node_name(node);
        ctx.progress(
            (100 * i / steps) as u32,
            format!("node {}/{steps}: {name}", i + 1),
        );
        let existing = earlier
            .iter()
            .find(|e| e.pipeline.as_ref().and_then(|p| p.node_id.as_deref()) == Some(id));
        let execution = match existing {
            Some(e) => resume(ctx, e).await?,
            None => {
                let variables = platform.get_pipeline(&pipeline.id).await?.variables;
                let input = node_input(&template, node, &variables, &outputs)?;
                submit(ctx, &pipeline.id, id, function, input).await?
            }
        };
        runs.push(NodeRun {
            node_id: id.clone(),
            name: name.clone(),
            function: function.as_str(),
            execution_id: Some(execution.id.clone()),
            status: execution.status.as_str(),
            output: execution.output.clone(),
        });
        succeeded(&execution, &name, function)?;
        outputs.insert(id.clone(), execution.output.clone());
    }
    for (i, branch) in plan.branches.iter().enumerate() {
        ctx.check()?;
        let step = plan.main.len() + i;
        let (storage, embed) = (by_id[branch.storage.as_str()], by_id[branch.embed.as_str()]);
        ctx.progress(
            (100 * step / steps) as u32,
            format!(
                "node {}/{steps}: {} -> {}",
                step + 1,
                node_name(storage),
                node_name(embed)
            ),
        );
        let share = (100 * step / steps) as u32..(100 * (step + 1) / steps) as u32;
        runs.push(run_branch(ctx, &pipeline.id, storage, embed, &earlier, share).await?);
    }
    let after = platform.get_pipeline(&pipeline.id).await?;
    let variables_after: Map<String, Value> = after
        .variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    Ok(json!({
        "pipeline_id": pipeline.id,
        "pipeline": pipeline.name,
        "nodes": runs,
        "variables_before": variables_before,
        "variables_after": variables_after,
    }))
}

/// A node execution a resumed run finds: a finished one is reused, a running one awaited.
async fn resume(ctx: &NodeCtx, e: &cliptune_store::Execution) -> Result<cliptune_store::Execution> {
    if e.status.is_terminal() {
        Ok(e.clone())
    } else {
        wait_node(ctx, &e.id).await
    }
}

async fn submit(
    ctx: &NodeCtx,
    pipeline_id: &str,
    node_id: &str,
    function: Function,
    input: Value,
) -> Result<cliptune_store::Execution> {
    let e = ctx
        .queue()?
        .submit(
            function,
            input,
            Some(ExecutionPipeline {
                id: pipeline_id.to_string(),
                node_id: Some(node_id.to_string()),
                execution_id: Some(ctx.execution_id.clone()),
            }),
        )
        .await?;
    wait_node(ctx, &e.id).await
}

/// A node that did not succeed ends the run, naming the node and its execution.
fn succeeded(execution: &cliptune_store::Execution, name: &str, function: Function) -> Result<()> {
    match execution.status {
        ExecutionStatus::Success => Ok(()),
        ExecutionStatus::Aborted | ExecutionStatus::Canceled => Err(WorkerError::Terminated(
            format!("node {name:?} was terminated (execution {})", execution.id),
        )),
        status => {
            let why = execution
                .latest_status
                .error
                .clone()
                .or(execution.latest_status.message.clone())
                .unwrap_or_default();
            Err(WorkerError::Internal(format!(
                "node {name:?} ({}) ended {}: {why} (execution {})",
                function.as_str(),
                status.as_str(),
                execution.id
            )))
        }
    }
}

/// The entity a node's metadata variable (`variableDataset`, `variableModel`) holds now.
fn variable_ref(
    variables: &[Variable],
    node: &Value,
    key: &str,
    default: &str,
    field: &str,
) -> Result<String> {
    let var = node
        .pointer(&format!("/metadata/{key}"))
        .and_then(Value::as_str)
        .unwrap_or(default);
    let value = variables
        .iter()
        .find(|v| v.name == var)
        .map(|v| v.value.clone())
        .unwrap_or(Value::Null);
    entity_ref(&value, field, &[field]).map_err(|_| {
        WorkerError::input(
            var,
            format!(
                "node {:?} reads this variable, which holds no {} (value {value})",
                node_name(node),
                field.trim_end_matches("_id")
            ),
        )
    })
}

/// An embedding branch: the storage node's dataset (its variable, read now), every item
/// it would emit (Dataloop's default item filter: files, not hidden), embedded in
/// [`BRANCH_ITEMS`]-item `embed-items` executions with the model the embedding node's
/// variable holds now ("Newest CLIP model", set by the update step of this run).
async fn run_branch(
    ctx: &NodeCtx,
    pipeline_id: &str,
    storage: &Value,
    embed: &Value,
    earlier: &[cliptune_store::Execution],
    share: std::ops::Range<u32>,
) -> Result<NodeRun> {
    let platform = ctx.env.platform().clone();
    let variables = platform.get_pipeline(pipeline_id).await?.variables;
    let dataset = variable_ref(
        &variables,
        storage,
        "variableDataset",
        DATASET_VARIABLE,
        "dataset_id",
    )?;
    let model = variable_ref(
        &variables,
        embed,
        "variableModel",
        NEWEST_MODEL_VARIABLE,
        "model_id",
    )?;
    let dataset = platform.resolve_dataset(&dataset).await?;
    let model = platform.resolve_model(&model).await?;
    let mut ids = Vec::new();
    let mut query = ItemQuery {
        filter: None,
        page: 0,
        page_size: cliptune_store::rules::MAX_PAGE_SIZE,
    };
    loop {
        let page = platform.query_items(&dataset.id, &query).await?;
        ids.extend(page.items.into_iter().map(|i| i.id));
        if !page.has_next_page {
            break;
        }
        query.page += 1;
    }
    let (embed_id, name) = (node_id(embed)?, node_name(embed));
    let function = Function::EmbedItems;
    let (mut embedded, mut already, mut failed) = (0u64, 0u64, Vec::new());
    let (mut executions, mut feature_set) = (Vec::new(), Value::Null);
    let chunks = ids.len().div_ceil(BRANCH_ITEMS);
    for (k, chunk) in ids.chunks(BRANCH_ITEMS).enumerate() {
        ctx.check()?;
        let items: Vec<Value> = chunk.iter().map(|id| json!({"item_id": id})).collect();
        let existing = earlier.iter().find(|e| {
            e.pipeline.as_ref().and_then(|p| p.node_id.as_deref()) == Some(embed_id)
                && e.input.get("items") == Some(&Value::Array(items.clone()))
                && e.status != ExecutionStatus::Failed
        });
        let execution = match existing {
            Some(e) => resume(ctx, e).await?,
            None => {
                let input = json!({"items": items, "model": {"model_id": model.id}});
                submit(ctx, pipeline_id, embed_id, function, input).await?
            }
        };
        succeeded(&execution, &name, function)?;
        let out = &execution.output;
        embedded += out["embedded"].as_u64().unwrap_or(0);
        already += out["already_embedded"].as_u64().unwrap_or(0);
        failed.extend(out["failed"].as_array().cloned().unwrap_or_default());
        feature_set = out["feature_set_id"].clone();
        executions.push(execution.id.clone());
        let done = (share.end - share.start) as usize * (k + 1) / chunks;
        ctx.progress(
            share.start + done as u32,
            format!(
                "{name}: {} of {} items ({} executions)",
                ((k + 1) * BRANCH_ITEMS).min(ids.len()),
                ids.len(),
                k + 1
            ),
        );
    }
    Ok(NodeRun {
        node_id: embed_id.to_string(),
        name,
        function: function.as_str(),
        execution_id: executions.last().cloned(),
        status: ExecutionStatus::Success.as_str(),
        output: json!({
            "model": {"model_id": model.id},
            "dataset": {"dataset_id": dataset.id},
            "feature_set_id": feature_set,
            "items": ids.len(),
            "embedded": embedded,
            "already_embedded": already,
            "failed": failed,
            "executions": executions,
        }),
    })
}

/// Waits for a node execution; terminating the run terminates the node.
async fn wait_node(ctx: &NodeCtx, id: &str) -> Result<cliptune_store::Execution> {
    tokio::select! {
        e = ctx.queue()?.wait(id) => e,
        _ = ctx.cancelled() => {
            if ctx.stop_reason() == Some(crate::ctx::StopReason::Terminate) {
                let _ = ctx.queue()?.terminate(id).await;
                let _ = ctx.queue()?.wait(id).await;
            }
            ctx.check()?;
            unreachable!("cancelled() resolves only once a stop was requested")
        }
    }
}

/// A node's input object: connections, then variables, then defaults, keyed by port name.
/// The built-in `updateVariable` node's one port is named after the variable it sets.
fn node_input(
    t: &Template,
    node: &Value,
    variables: &[Variable],
    outputs: &HashMap<String, Value>,
) -> Result<Value> {
    let id = node_id(node)?;
    let mut input = Map::new();
    for port in node
        .get("inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let pid = port
            .get("portId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
        let connected = t.connections.iter().find(|c| {
            c.pointer("/tgt/nodeId").and_then(Value::as_str) == Some(id)
                && c.pointer("/tgt/portId").and_then(Value::as_str) == Some(pid)
        });
        let value = if let Some(c) = connected {
            let src = c
                .pointer("/src/nodeId")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let src_port = c
                .pointer("/src/portId")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let src_name = t
                .nodes
                .iter()
                .find(|n| node_id(n).ok() == Some(src))
                .and_then(|n| {
                    n.get("outputs")?
                        .as_array()?
                        .iter()
                        .find(|p| p.get("portId").and_then(Value::as_str) == Some(src_port))
                })
                .and_then(|p| p.get("name")?.as_str())
                .unwrap_or(name);
            outputs
                .get(src)
                .and_then(|o| o.get(src_name))
                .cloned()
                .unwrap_or(Value::Null)
        } else if let Some(var) = port.get("variableName").and_then(Value::as_str) {
            variables
                .iter()
                .find(|v| v.name == var)
                .map(|v| v.value.clone())
                .unwrap_or(Value::Null)
        } else {
            port.get("defaultValue").cloned().unwrap_or(Value::Null)
        };
        if node.get("type").and_then(Value::as_str) == Some("updateVariable") {
            return Ok(json!({"model": value, "variable": name}));
        }
        if !value.is_null() {
            input.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::read_manifest;

    fn node<'a>(t: &'a Template, id: &str) -> &'a Value {
        t.nodes.iter().find(|n| node_id(n).unwrap() == id).unwrap()
    }

    #[test]
    fn inputs_follow_connections_then_variables_then_defaults() {
        let manifest = read_manifest(None).unwrap();
        let t = &templates(&manifest).unwrap()[0];
        let mut vars = t.variables.clone();
        for v in &mut vars {
            v.value = json!(format!("value of {}", v.name));
        }
        let main = plan(t).unwrap().main;
        let first = node(t, &main[0]);
        let input = node_input(t, first, &vars, &HashMap::new()).unwrap();
        assert_eq!(input["base_model"], json!("value of Base CLIP model"));
        assert_eq!(input["dataset"], json!("value of Dataset with captions"));
        assert_eq!(input["model_configuration"], json!("value of Model config"));
        assert!(
            input["train_subset"]["filter"]["$and"].is_array(),
            "{input}"
        );
        let mut outs = HashMap::new();
        outs.insert(
            main[0].clone(),
            json!({"new_model": {"model_id": "new"}, "base_model": {"model_id": "base"}}),
        );
        let input = node_input(t, node(t, &main[1]), &vars, &outs).unwrap();
        assert_eq!(input, json!({"model": {"model_id": "new"}}));
        outs.insert(main[1].clone(), json!({"model": {"model_id": "trained"}}));
        let input = node_input(t, node(t, &main[2]), &vars, &outs).unwrap();
        assert_eq!(
            input,
            json!({"model": {"model_id": "trained"}, "variable": NEWEST_MODEL_VARIABLE})
        );
    }
}
