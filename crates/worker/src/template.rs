//! The app manifest (`dataloop.json`) and its pipeline templates: reading, checking, and
//! the plan a run follows. Nodes are mapped by their type, as Dataloop does ([`Step`]);
//! the storage -> Embeddings branch runs after the start node's flow ([`Plan`]).

use crate::error::{Result, WorkerError};
use crate::executions::Function;
use cliptune_store::Variable;
use serde_json::Value;
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

/// Every node runs a known step; connections and start nodes name existing nodes and
/// ports; ports name existing variables; every node is run (see [`plan`]); no cycle.
pub(crate) fn check(t: &Template) -> Result<()> {
    let names: HashSet<&str> = t.variables.iter().map(|v| v.name.as_str()).collect();
    let mut ports: HashSet<(String, String)> = HashSet::new();
    for node in &t.nodes {
        let id = node_id(node)?;
        step_of(node)?;
        for key in ["variableDataset", "variableModel"] {
            if let Some(var) = node
                .pointer(&format!("/metadata/{key}"))
                .and_then(Value::as_str)
            {
                if !names.contains(var) {
                    return Err(WorkerError::input(
                        format!("node {id}"),
                        format!("metadata.{key} names variable {var:?}, which the template does not declare"),
                    ));
                }
            }
        }
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
    plan(t)?;
    Ok(())
}

pub(crate) fn node_id(node: &Value) -> Result<&str> {
    node.get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| WorkerError::input("nodes[].id", "missing"))
}

pub(crate) fn node_name(node: &Value) -> String {
    node.get("name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| node_id(node).unwrap_or("?"))
        .to_string()
}

/// What cliptune runs for a node, by the node's type (as Dataloop does): the built-in
/// `updateVariable` node is update-variable; an `ml` node trains or embeds with the model;
/// a `storage` node emits its dataset's items; custom and code nodes run the function their
/// namespace names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Run(Function),
    Storage,
}

pub(crate) fn step_of(node: &Value) -> Result<Step> {
    let id = node_id(node).unwrap_or("?");
    let kind = node.get("type").and_then(Value::as_str).unwrap_or("custom");
    match kind {
        "storage" => return Ok(Step::Storage),
        "updateVariable" => return Ok(Step::Run(Function::UpdateVariable)),
        _ => {}
    }
    let name = node
        .pointer("/namespace/functionName")
        .and_then(Value::as_str)
        .ok_or_else(|| WorkerError::input(format!("node {id}"), "has no namespace.functionName"))?;
    let function = Function::parse(name)?;
    if kind != "ml" {
        return Ok(Step::Run(function));
    }
    match function {
        Function::Train => Ok(Step::Run(Function::Train)),
        Function::Embed | Function::EmbedItems => Ok(Step::Run(Function::EmbedItems)),
        other => Err(WorkerError::input(
            format!("node {id}"),
            format!(
                "is an ml node running {:?}: cliptune's ml nodes train or embed",
                other.as_str()
            ),
        )),
    }
}

/// A storage node feeding an embedding node: every item of the storage node's dataset is
/// embedded with the model the embedding node reads from its variable.
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub storage: String,
    pub embed: String,
}

/// The order a run follows: the nodes reachable from the start nodes, each after all its
/// upstream nodes; then the embedding branches (a storage node with nothing upstream
/// feeding `ml` embedding nodes), which read "Newest CLIP model" only when they start.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub main: Vec<String>,
    pub branches: Vec<Branch>,
}

fn edges(t: &Template) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for c in &t.connections {
        let s = c.pointer("/src/nodeId").and_then(Value::as_str);
        let d = c.pointer("/tgt/nodeId").and_then(Value::as_str);
        if let (Some(s), Some(d)) = (s, d) {
            if seen.insert((s, d)) {
                out.push((s.to_string(), d.to_string()));
            }
        }
    }
    out
}

pub(crate) fn plan(t: &Template) -> Result<Plan> {
    let steps: HashMap<&str, Step> = t
        .nodes
        .iter()
        .map(|n| Ok((node_id(n)?, step_of(n)?)))
        .collect::<Result<_>>()?;
    let edges = edges(t);
    let downstream = |n: &str| -> Vec<String> {
        edges
            .iter()
            .filter(|(s, _)| s == n)
            .map(|(_, d)| d.clone())
            .collect()
    };
    let starts: Vec<String> = t
        .start_nodes
        .iter()
        .filter_map(|s| s.get("nodeId").and_then(Value::as_str))
        .map(String::from)
        .collect();
    for s in &starts {
        if !steps.contains_key(s.as_str()) {
            return Err(WorkerError::input("startNodes", format!("no node {s:?}")));
        }
    }
    // Reachable from the start nodes.
    let mut reachable: HashSet<String> = HashSet::new();
    let mut stack = starts.clone();
    while let Some(n) = stack.pop() {
        if reachable.insert(n.clone()) {
            stack.extend(downstream(&n));
        }
    }
    let mut indegree: HashMap<&str, usize> = reachable.iter().map(|n| (n.as_str(), 0)).collect();
    for (_, d) in edges.iter().filter(|(s, _)| reachable.contains(s)) {
        *indegree.get_mut(d.as_str()).expect("reachable") += 1;
    }
    let mut queue: VecDeque<String> = starts
        .iter()
        .filter(|s| indegree[s.as_str()] == 0)
        .cloned()
        .collect();
    let mut main = Vec::new();
    while let Some(n) = queue.pop_front() {
        if main.contains(&n) {
            continue;
        }
        main.push(n.clone());
        for d in downstream(&n) {
            let e = indegree.get_mut(d.as_str()).expect("reachable");
            *e -= 1;
            if *e == 0 {
                queue.push_back(d);
            }
        }
    }
    if main.len() < reachable.len() {
        return Err(WorkerError::input(
            format!("{}.connections", t.name),
            "form a cycle (or a node waits on one that never runs)",
        ));
    }
    if let Some(n) = main.iter().find(|n| steps[n.as_str()] == Step::Storage) {
        return Err(WorkerError::input(
            format!("node {n}"),
            "a storage node downstream of the start nodes: cliptune runs storage nodes only \
             as the source of an embedding branch",
        ));
    }
    let mut branches = Vec::new();
    for node in &t.nodes {
        let id = node_id(node)?;
        if reachable.contains(id) || steps[id] != Step::Storage {
            continue;
        }
        for embed in downstream(id) {
            if steps[embed.as_str()] != Step::Run(Function::EmbedItems)
                || !downstream(&embed).is_empty()
            {
                return Err(WorkerError::input(
                    format!("node {embed}"),
                    "follows a storage node: cliptune runs a storage node's branch only as \
                     storage -> ml embedding node, with nothing after it",
                ));
            }
            branches.push(Branch {
                storage: id.to_string(),
                embed,
            });
        }
    }
    for node in &t.nodes {
        let id = node_id(node)?;
        let in_branch = branches.iter().any(|b| b.storage == id || b.embed == id);
        if !reachable.contains(id) && !in_branch {
            return Err(WorkerError::input(
                format!("node {id}"),
                format!(
                    "{:?} never runs: it is neither reachable from startNodes nor in a storage \
                     node's embedding branch",
                    node_name(node)
                ),
            ));
        }
    }
    Ok(Plan { main, branches })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::{BASE_MODEL_VARIABLE, DATASET_VARIABLE, NEWEST_MODEL_VARIABLE};
    use serde_json::json;

    fn node<'a>(t: &'a Template, id: &str) -> &'a Value {
        t.nodes.iter().find(|n| node_id(n).unwrap() == id).unwrap()
    }

    #[test]
    fn the_committed_manifest_plans_the_template() {
        let manifest = read_manifest(None).unwrap();
        let t = &templates(&manifest).unwrap()[0];
        let vars: Vec<&str> = t.variables.iter().map(|v| v.name.as_str()).collect();
        for v in [
            DATASET_VARIABLE,
            BASE_MODEL_VARIABLE,
            NEWEST_MODEL_VARIABLE,
            crate::nodes::CONFIG_VARIABLE,
        ] {
            assert!(vars.contains(&v), "template lacks variable {v:?}: {vars:?}");
        }
        let plan = plan(t).unwrap();
        let functions: Vec<&str> = plan
            .main
            .iter()
            .map(|id| match step_of(node(t, id)).unwrap() {
                Step::Run(f) => f.as_str(),
                Step::Storage => "storage",
            })
            .collect();
        assert_eq!(functions, ["create-model", "train", "update-variable"]);
        assert_eq!(plan.branches.len(), 1);
        let b = &plan.branches[0];
        assert_eq!(node_name(node(t, &b.storage)), "Dataset with captions");
        assert_eq!(node_name(node(t, &b.embed)), "Embeddings");
        assert_eq!(
            step_of(node(t, &b.embed)).unwrap(),
            Step::Run(Function::EmbedItems)
        );
    }

    #[test]
    fn broken_templates_are_rejected_with_the_culprit() {
        let mut manifest = read_manifest(None).unwrap();
        let t = &mut manifest["components"]["pipelineTemplates"][0];
        t["connections"][0]["tgt"]["portId"] = json!("nope");
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(err.contains("connections"), "{err}");
        let named = |m: &mut Value, name: &str| -> usize {
            m["components"]["pipelineTemplates"][0]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .position(|n| n["name"] == name)
                .unwrap()
        };
        let mut manifest = read_manifest(None).unwrap();
        let i = named(&mut manifest, "Create New Model");
        manifest["components"]["pipelineTemplates"][0]["nodes"][i]["namespace"]["functionName"] =
            json!("fly");
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(err.contains("fly"), "{err}");
        // An ml node that neither trains nor embeds.
        let mut manifest = read_manifest(None).unwrap();
        let i = named(&mut manifest, "OpenAI CLIP");
        manifest["components"]["pipelineTemplates"][0]["nodes"][i]["namespace"]["functionName"] =
            json!("create_model");
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(err.contains("ml node"), "{err}");
        // A branch without its storage node's connection never runs.
        let mut manifest = read_manifest(None).unwrap();
        let i = named(&mut manifest, "Dataset with captions");
        let storage = manifest["components"]["pipelineTemplates"][0]["nodes"][i]["id"].clone();
        let t = &mut manifest["components"]["pipelineTemplates"][0];
        t["connections"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c["src"]["nodeId"] != storage);
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(err.contains("never runs"), "{err}");
    }
}
