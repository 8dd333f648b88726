//! The app manifest (`dataloop.json`), installing its pipeline template into a platform,
//! and running a pipeline: one execution per node, in connection order.
//!
//! A run is itself an execution (function `pipeline`) whose node executions carry
//! `pipeline.executionId = <run id>`. A node's inputs come, in this order, from the
//! connection into its port (the upstream node's output of that name), from the pipeline
//! variable the port names (read when the node starts, so the embed node sees the
//! "Newest CLIP model" the update step just set), or from the port's default value.
//! A resumed run (after a restart) reuses the outputs of nodes that already succeeded.

use crate::error::{Result, WorkerError};
use crate::executions::{Function, NodeCtx, Worker};
use crate::nodes::{
    entity_ref, object, reject_unknown, BASE_MODEL_VARIABLE, DATASET_VARIABLE,
    NEWEST_MODEL_VARIABLE,
};
use cliptune_store::{
    ExecutionPipeline, ExecutionQuery, ExecutionStatus, NewPipeline, Pipeline, Platform, Variable,
    VariableUpdate,
};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;

/// The committed manifest, so that `pipeline install` works without a file at hand.
pub const BUILTIN_MANIFEST: &str = include_str!("../../../dataloop.json");

/// A pipeline template of the manifest, checked.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub nodes: Vec<Value>,
    pub connections: Vec<Value>,
    pub start_nodes: Vec<Value>,
    pub variables: Vec<Variable>,
}

/// Reads `components.pipelineTemplates[]` of a manifest and checks each template.
pub fn templates(manifest: &Value) -> Result<Vec<Template>> {
    let list = manifest
        .pointer("/components/pipelineTemplates")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            WorkerError::input("manifest", "has no components.pipelineTemplates list")
        })?;
    list.iter().map(template).collect()
}

/// Reads a manifest file (or the built-in one for `None`).
pub fn read_manifest(path: Option<&Path>) -> Result<Value> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| WorkerError::input("manifest", format!("{}: {e}", p.display())))?,
        None => BUILTIN_MANIFEST.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| {
        WorkerError::input(
            "manifest",
            format!(
                "{} is not JSON: {e}",
                path.map_or("the built-in manifest".into(), |p| p.display().to_string())
            ),
        )
    })
}

fn template(t: &Value) -> Result<Template> {
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| WorkerError::input("pipelineTemplates[].name", "missing"))?
        .to_string();
    let field = |k: &str| -> Result<Vec<Value>> {
        match t.get(k) {
            Some(Value::Array(a)) => Ok(a.clone()),
            None => Ok(Vec::new()),
            Some(_) => Err(WorkerError::input(format!("{name}.{k}"), "must be a list")),
        }
    };
    let nodes = field("nodes")?;
    let connections = field("connections")?;
    let start_nodes = field("startNodes")?;
    let variables: Vec<Variable> = serde_json::from_value(Value::Array(field("variables")?))
        .map_err(|e| WorkerError::input(format!("{name}.variables"), e.to_string()))?;
    let template = Template {
        name,
        nodes,
        connections,
        start_nodes,
        variables,
    };
    check(&template)?;
    Ok(template)
}

/// Every node runs a known function; connections and start nodes name existing nodes and
/// ports; ports name existing variables; the graph has no cycle.
fn check(t: &Template) -> Result<()> {
    let names: HashSet<&str> = t.variables.iter().map(|v| v.name.as_str()).collect();
    let mut ports: HashSet<(String, String)> = HashSet::new();
    for node in &t.nodes {
        let id = node_id(node)?;
        function_of(node)?;
        for io in ["inputs", "outputs"] {
            for port in node.get(io).and_then(Value::as_array).into_iter().flatten() {
                let pid = port.get("portId").and_then(Value::as_str).ok_or_else(|| {
                    WorkerError::input(
                        format!("node {id}"),
                        format!("an entry of {io} has no portId"),
                    )
                })?;
                port.get("name").and_then(Value::as_str).ok_or_else(|| {
                    WorkerError::input(format!("node {id}"), format!("port {pid} has no name"))
                })?;
                if let Some(var) = port.get("variableName").and_then(Value::as_str) {
                    if !names.contains(var) {
                        return Err(WorkerError::input(
                            format!("node {id}"),
                            format!("port {pid} reads variable {var:?}, which the template does not declare"),
                        ));
                    }
                }
                ports.insert((id.to_string(), pid.to_string()));
            }
        }
    }
    for c in &t.connections {
        for end in ["src", "tgt"] {
            let n = c.pointer(&format!("/{end}/nodeId")).and_then(Value::as_str);
            let p = c.pointer(&format!("/{end}/portId")).and_then(Value::as_str);
            match (n, p) {
                (Some(n), Some(p)) if ports.contains(&(n.to_string(), p.to_string())) => {}
                _ => {
                    return Err(WorkerError::input(
                        "connections",
                        format!("{end} of {c} does not name an existing node port"),
                    ))
                }
            }
        }
    }
    if t.start_nodes.is_empty() {
        return Err(WorkerError::input(
            format!("{}.startNodes", t.name),
            "is empty",
        ));
    }
    order(t)?;
    Ok(())
}

fn node_id(node: &Value) -> Result<&str> {
    node.get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| WorkerError::input("nodes[].id", "missing"))
}

fn node_name(node: &Value) -> String {
    node.get("name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| node_id(node).unwrap_or("?"))
        .to_string()
}

fn function_of(node: &Value) -> Result<Function> {
    let name = node
        .pointer("/namespace/functionName")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            WorkerError::input(
                format!("node {}", node_id(node).unwrap_or("?")),
                "has no namespace.functionName",
            )
        })?;
    Function::parse(name)
}

/// Node ids reachable from the start nodes, each after all its upstream nodes.
fn order(t: &Template) -> Result<Vec<String>> {
    let mut downstream: HashMap<String, Vec<String>> = HashMap::new();
    let mut indegree: HashMap<String, usize> = HashMap::new();
    for node in &t.nodes {
        indegree.insert(node_id(node)?.to_string(), 0);
    }
    let mut edges = HashSet::new();
    for c in &t.connections {
        let s = c
            .pointer("/src/nodeId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let d = c
            .pointer("/tgt/nodeId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if edges.insert((s.to_string(), d.to_string())) {
            downstream.entry(s.into()).or_default().push(d.into());
            *indegree.entry(d.into()).or_default() += 1;
        }
    }
    let mut queue: VecDeque<String> = t
        .start_nodes
        .iter()
        .filter_map(|s| s.get("nodeId").and_then(Value::as_str))
        .map(String::from)
        .collect();
    for s in &queue {
        if !indegree.contains_key(s) {
            return Err(WorkerError::input("startNodes", format!("no node {s:?}")));
        }
    }
    let mut out = Vec::new();
    while let Some(n) = queue.pop_front() {
        out.push(n.clone());
        for d in downstream.get(&n).cloned().unwrap_or_default() {
            let e = indegree.get_mut(&d).expect("known node");
            *e -= 1;
            if *e == 0 {
                queue.push_back(d);
            }
        }
    }
    let reachable_unrun = indegree.iter().any(|(n, d)| *d > 0 && !out.contains(n));
    if reachable_unrun && out.len() < t.nodes.len() {
        return Err(WorkerError::input(
            format!("{}.connections", t.name),
            "form a cycle (or a node waits on one that never runs)",
        ));
    }
    Ok(out)
}

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

/// Starts a run of `pipeline` after writing `values` into its variables. On the first run
/// an empty "Newest CLIP model" takes the base model's id, as the template does.
pub async fn execute(
    worker: &Worker,
    pipeline: &str,
    values: &[(String, Value)],
) -> Result<cliptune_store::Execution> {
    let platform = worker.platform();
    let p = platform.resolve_pipeline(pipeline).await?;
    // Checked before anything is written, so a bad template changes nothing.
    check(&Template {
        name: p.name.clone(),
        nodes: p.nodes.clone(),
        connections: p.connections.clone(),
        start_nodes: p.start_nodes.clone(),
        variables: p.variables.clone(),
    })?;
    if !values.is_empty() {
        set_variables(&**platform, &p, values).await?;
    }
    let p = platform.get_pipeline(&p.id).await?;
    let newest = p.variable(NEWEST_MODEL_VARIABLE).map(|v| v.value.clone());
    let base = p.variable(BASE_MODEL_VARIABLE).map(|v| v.value.clone());
    if let (Some(Value::Null), Some(base @ Value::String(_))) = (newest, base) {
        platform
            .update_variables(
                &p.id,
                &[VariableUpdate {
                    name: NEWEST_MODEL_VARIABLE.into(),
                    value: base,
                }],
            )
            .await?;
    }
    for (var, kind) in [
        (DATASET_VARIABLE, "dataset"),
        (BASE_MODEL_VARIABLE, "model"),
    ] {
        if p.variable(var).is_some_and(|v| v.value.is_null()) {
            return Err(WorkerError::input(
                var,
                format!("the pipeline's {kind} variable is empty: set it (--var \"{var}=...\")"),
            ));
        }
    }
    worker
        .submit(
            Function::Pipeline,
            json!({"pipeline_id": p.id}),
            Some(ExecutionPipeline {
                id: p.id.clone(),
                node_id: None,
                execution_id: None,
            }),
        )
        .await
}

/// One node's part of a run.
#[derive(Debug, Clone, Serialize)]
struct NodeRun {
    node_id: String,
    name: String,
    function: &'static str,
    execution_id: String,
    status: &'static str,
    output: Value,
}

/// Drives a run: each node as its own execution, waiting for one before the next.
pub async fn run(input: RunInput, ctx: &NodeCtx) -> Result<Value> {
    let worker = &ctx.worker;
    let platform = worker.platform().clone();
    let pipeline = platform.resolve_pipeline(&input.pipeline).await?;
    let template = Template {
        name: pipeline.name.clone(),
        nodes: pipeline.nodes.clone(),
        connections: pipeline.connections.clone(),
        start_nodes: pipeline.start_nodes.clone(),
        variables: pipeline.variables.clone(),
    };
    let order = order(&template)?;
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
    let mut outputs: HashMap<String, Value> = HashMap::new();
    let mut runs: Vec<NodeRun> = Vec::new();
    for (i, id) in order.iter().enumerate() {
        ctx.check()?;
        let node = by_id[id.as_str()];
        let function = function_of(node)?;
        let name = node_name(node);
        ctx.progress(
            (100 * i / order.len()) as u32,
            format!("node {}/{}: {name}", i + 1, order.len()),
        );
        let existing = earlier
            .iter()
            .find(|e| e.pipeline.as_ref().and_then(|p| p.node_id.as_deref()) == Some(id));
        let execution = match existing {
            Some(e) if e.status == ExecutionStatus::Success => e.clone(),
            Some(e) if !e.status.is_terminal() => wait_node(ctx, &e.id).await?,
            Some(e) => e.clone(),
            None => {
                let variables = platform.get_pipeline(&pipeline.id).await?.variables;
                let input = node_input(&template, node, &variables, &outputs)?;
                let e = worker
                    .submit(
                        function,
                        input,
                        Some(ExecutionPipeline {
                            id: pipeline.id.clone(),
                            node_id: Some(id.clone()),
                            execution_id: Some(ctx.execution_id.clone()),
                        }),
                    )
                    .await?;
                wait_node(ctx, &e.id).await?
            }
        };
        runs.push(NodeRun {
            node_id: id.clone(),
            name: name.clone(),
            function: function.as_str(),
            execution_id: execution.id.clone(),
            status: execution.status.as_str(),
            output: execution.output.clone(),
        });
        if execution.status != ExecutionStatus::Success {
            let why = execution
                .latest_status
                .error
                .clone()
                .or(execution.latest_status.message.clone())
                .unwrap_or_default();
            if execution.status == ExecutionStatus::Aborted
                || execution.status == ExecutionStatus::Canceled
            {
                return Err(WorkerError::Terminated(format!(
                    "node {name:?} was terminated (execution {})",
                    execution.id
                )));
            }
            return Err(WorkerError::Internal(format!(
                "node {name:?} ({}) ended {}: {why} (execution {})",
                function.as_str(),
                execution.status.as_str(),
                execution.id
            )));
        }
        outputs.insert(id.clone(), execution.output.clone());
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

/// Waits for a node execution; terminating the run terminates the node.
async fn wait_node(ctx: &NodeCtx, id: &str) -> Result<cliptune_store::Execution> {
    tokio::select! {
        e = ctx.worker.wait(id) => e,
        _ = ctx.cancelled() => {
            if ctx.stop_reason() == Some(crate::executions::StopReason::Terminate) {
                let _ = ctx.worker.terminate(id).await;
                let _ = ctx.worker.wait(id).await;
            }
            ctx.check()?;
            unreachable!("cancelled() resolves only once a stop was requested")
        }
    }
}

/// A node's input object: connections, then variables, then defaults.
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
        if !value.is_null() {
            input.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_manifest_is_a_complete_template() {
        let manifest = read_manifest(None).unwrap();
        let all = templates(&manifest).unwrap();
        let t = &all[0];
        let vars: Vec<&str> = t.variables.iter().map(|v| v.name.as_str()).collect();
        for v in [
            DATASET_VARIABLE,
            BASE_MODEL_VARIABLE,
            NEWEST_MODEL_VARIABLE,
            crate::nodes::CONFIG_VARIABLE,
        ] {
            assert!(vars.contains(&v), "template lacks variable {v:?}: {vars:?}");
        }
        let functions: Vec<&str> = order(t)
            .unwrap()
            .iter()
            .map(|id| {
                let n = t.nodes.iter().find(|n| node_id(n).unwrap() == id).unwrap();
                function_of(n).unwrap().as_str()
            })
            .collect();
        assert_eq!(
            functions,
            ["create-model", "train", "update-variable", "embed"]
        );
        for module_fn in ["train", "embed", "create-model", "update-variable"] {
            let found = manifest["components"]["modules"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|m| m["functions"].as_array().unwrap().iter())
                .any(|f| {
                    Function::parse(f["name"].as_str().unwrap())
                        .unwrap()
                        .as_str()
                        == module_fn
                });
            assert!(found, "no module function for {module_fn}");
        }
        let gpu = manifest["components"]["computeConfigs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| {
                c["runtime"]["podType"]
                    .as_str()
                    .is_some_and(|p| p.contains("gpu"))
            });
        assert!(gpu, "no GPU compute config");
    }

    #[test]
    fn inputs_follow_connections_then_variables_then_defaults() {
        let manifest = read_manifest(None).unwrap();
        let t = &templates(&manifest).unwrap()[0];
        let mut vars = t.variables.clone();
        for v in &mut vars {
            v.value = json!(format!("value of {}", v.name));
        }
        let order = order(t).unwrap();
        let first = t
            .nodes
            .iter()
            .find(|n| node_id(n).unwrap() == order[0])
            .unwrap();
        let input = node_input(t, first, &vars, &HashMap::new()).unwrap();
        assert_eq!(input["base_model"], json!("value of Base CLIP model"));
        assert_eq!(input["dataset"], json!("value of Dataset with captions"));
        let second = t
            .nodes
            .iter()
            .find(|n| node_id(n).unwrap() == order[1])
            .unwrap();
        let mut outs = HashMap::new();
        outs.insert(order[0].clone(), json!({"model": {"model_id": "new"}}));
        let input = node_input(t, second, &vars, &outs).unwrap();
        assert_eq!(input["model"], json!({"model_id": "new"}));
    }

    #[test]
    fn broken_templates_are_rejected_with_the_culprit() {
        let mut manifest = read_manifest(None).unwrap();
        let t = &mut manifest["components"]["pipelineTemplates"][0];
        t["connections"][0]["tgt"]["portId"] = json!("nope");
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(err.contains("connections"), "{err}");
        let mut manifest = read_manifest(None).unwrap();
        manifest["components"]["pipelineTemplates"][0]["nodes"][0]["namespace"]["functionName"] =
            json!("fly");
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(err.contains("fly"), "{err}");
    }
}
