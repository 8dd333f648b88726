//! The app manifest (`dataloop.json`) and its pipeline templates: reading, checking, and
//! the plan a run follows. Nodes are mapped by their type, as Dataloop does ([`Step`]);
//! the storage -> Embeddings branch runs after the start node's flow ([`Plan`]).
//!
//! A template's nodes, connections and start nodes are kept as the JSON they came as: they
//! are stored and sent to Dataloop as given, with every field of its format cliptune does
//! not read. What cliptune reads of them is typed ([`Node`], [`Connection`], [`StartNode`])
//! and read from that JSON where it is checked and planned.

use crate::error::{Result, WorkerError};
use crate::function::Function;
use cliptune_store::Variable;
use serde::Deserialize;
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

/// The part of a manifest cliptune reads (its other components are the app's, for Dataloop).
#[derive(Deserialize)]
struct Manifest {
    components: Components,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Components {
    pipeline_templates: Vec<TemplateSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TemplateSpec {
    name: String,
    #[serde(default)]
    nodes: Vec<Value>,
    #[serde(default)]
    connections: Vec<Value>,
    #[serde(default)]
    start_nodes: Vec<Value>,
    #[serde(default)]
    variables: Vec<Variable>,
}

/// What cliptune reads of a template node.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Node {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: NodeType,
    #[serde(default)]
    pub namespace: Namespace,
    #[serde(default)]
    pub metadata: NodeMetadata,
    #[serde(default)]
    pub inputs: Vec<Port>,
    #[serde(default)]
    pub outputs: Vec<Port>,
}

/// Dataloop's node types cliptune tells apart; code and custom nodes run their function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum NodeType {
    Storage,
    UpdateVariable,
    Ml,
    #[default]
    #[serde(other)]
    Custom,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Namespace {
    #[serde(default)]
    pub function_name: Option<String>,
}

/// The variables a storage node (`variableDataset`) or an ml node (`variableModel`) reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeMetadata {
    #[serde(default)]
    pub variable_dataset: Option<String>,
    #[serde(default)]
    pub variable_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Port {
    pub port_id: String,
    /// Not read (ports are matched by id), but Dataloop has no port without one.
    #[allow(dead_code)]
    pub name: String,
    /// The variable an input port reads when nothing is connected to it.
    #[serde(default)]
    pub variable_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Connection {
    pub src: End,
    pub tgt: End,
}

/// One end of a connection: a node's port.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct End {
    pub node_id: String,
    pub port_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StartNode {
    pub node_id: String,
}

/// Reads `what` from `json`; the error names the place (`inputs[1]`) and what is wrong.
fn typed<'a, T: Deserialize<'a>>(json: &'a Value, culprit: impl FnOnce() -> String) -> Result<T> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner();
        let message = if path == "." {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        WorkerError::input(culprit(), message)
    })
}

impl Node {
    pub fn of(json: &Value) -> Result<Self> {
        let id = node_id(json)?;
        typed(json, || format!("node {id}"))
    }

    /// What cliptune runs for this node, by its type (as Dataloop does): the built-in
    /// `updateVariable` node is update-variable; an `ml` node trains or embeds with the
    /// model; a `storage` node emits its dataset's items; custom and code nodes run the
    /// function their namespace names.
    pub fn step(&self) -> Result<Step> {
        let id = &self.id;
        match self.kind {
            NodeType::Storage => return Ok(Step::Storage),
            NodeType::UpdateVariable => return Ok(Step::Run(Function::UpdateVariable)),
            NodeType::Ml | NodeType::Custom => {}
        }
        let name = self.namespace.function_name.as_deref().ok_or_else(|| {
            WorkerError::input(format!("node {id}"), "has no namespace.functionName")
        })?;
        let function = Function::parse(name)?;
        if self.kind != NodeType::Ml {
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
}

/// A template's nodes, connections and start nodes as cliptune reads them.
struct Graph {
    nodes: Vec<Node>,
    connections: Vec<Connection>,
    starts: Vec<StartNode>,
}

impl Graph {
    fn of(t: &Template) -> Result<Self> {
        Ok(Self {
            nodes: t.nodes.iter().map(Node::of).collect::<Result<_>>()?,
            connections: t
                .connections
                .iter()
                .map(|c| typed(c, || "connections".into()))
                .collect::<Result<_>>()?,
            starts: t
                .start_nodes
                .iter()
                .map(|s| typed(s, || format!("{}.startNodes", t.name)))
                .collect::<Result<_>>()?,
        })
    }
}

/// Reads `components.pipelineTemplates[]` of a manifest and checks each template.
pub fn templates(manifest: &Value) -> Result<Vec<Template>> {
    if manifest
        .pointer("/components/pipelineTemplates")
        .and_then(Value::as_array)
        .is_none()
    {
        return Err(WorkerError::input(
            "manifest",
            "has no components.pipelineTemplates list",
        ));
    }
    let manifest: Manifest = typed(manifest, || "manifest".into())?;
    manifest
        .components
        .pipeline_templates
        .into_iter()
        .map(|t| {
            let template = Template {
                name: t.name,
                nodes: t.nodes,
                connections: t.connections,
                start_nodes: t.start_nodes,
                variables: t.variables,
            };
            check(&template)?;
            Ok(template)
        })
        .collect()
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

/// Every node runs a known step; connections and start nodes name existing nodes and
/// ports; ports name existing variables; every node is run (see [`plan`]); no cycle.
pub(crate) fn check(t: &Template) -> Result<()> {
    let graph = Graph::of(t)?;
    let names: HashSet<&str> = t.variables.iter().map(|v| v.name.as_str()).collect();
    let mut ports: HashSet<(&str, &str)> = HashSet::new();
    for node in &graph.nodes {
        let id = &node.id;
        node.step()?;
        let meta = &node.metadata;
        for (key, var) in [
            ("variableDataset", &meta.variable_dataset),
            ("variableModel", &meta.variable_model),
        ] {
            if let Some(var) = var.as_deref().filter(|v| !names.contains(v)) {
                return Err(WorkerError::input(
                    format!("node {id}"),
                    format!("metadata.{key} names variable {var:?}, which the template does not declare"),
                ));
            }
        }
        for port in node.inputs.iter().chain(&node.outputs) {
            let pid = &port.port_id;
            if let Some(var) = port.variable_name.as_deref().filter(|v| !names.contains(v)) {
                return Err(WorkerError::input(
                    format!("node {id}"),
                    format!(
                        "port {pid} reads variable {var:?}, which the template does not declare"
                    ),
                ));
            }
            ports.insert((id, pid));
        }
    }
    for (c, json) in graph.connections.iter().zip(&t.connections) {
        for (end, e) in [("src", &c.src), ("tgt", &c.tgt)] {
            if !ports.contains(&(e.node_id.as_str(), e.port_id.as_str())) {
                return Err(WorkerError::input(
                    "connections",
                    format!("{end} of {json} does not name an existing node port"),
                ));
            }
        }
    }
    if graph.starts.is_empty() {
        return Err(WorkerError::input(
            format!("{}.startNodes", t.name),
            "is empty",
        ));
    }
    plan_graph(&t.name, &graph)?;
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

/// What cliptune runs for a node (see [`Node::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Run(Function),
    Storage,
}

pub(crate) fn step_of(node: &Value) -> Result<Step> {
    Node::of(node)?.step()
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

fn edges(g: &Graph) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for c in &g.connections {
        let (s, d) = (c.src.node_id.as_str(), c.tgt.node_id.as_str());
        if seen.insert((s, d)) {
            out.push((s.to_string(), d.to_string()));
        }
    }
    out
}

pub(crate) fn plan(t: &Template) -> Result<Plan> {
    plan_graph(&t.name, &Graph::of(t)?)
}

fn plan_graph(template: &str, g: &Graph) -> Result<Plan> {
    let steps: HashMap<&str, Step> = g
        .nodes
        .iter()
        .map(|n| Ok((n.id.as_str(), n.step()?)))
        .collect::<Result<_>>()?;
    let edges = edges(g);
    let downstream = |n: &str| -> Vec<String> {
        edges
            .iter()
            .filter(|(s, _)| s == n)
            .map(|(_, d)| d.clone())
            .collect()
    };
    let starts: Vec<String> = g.starts.iter().map(|s| s.node_id.clone()).collect();
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
            format!("{template}.connections"),
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
    for node in &g.nodes {
        let id = node.id.as_str();
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
    for node in &g.nodes {
        let id = node.id.as_str();
        let in_branch = branches.iter().any(|b| b.storage == id || b.embed == id);
        if !reachable.contains(id) && !in_branch {
            return Err(WorkerError::input(
                format!("node {id}"),
                format!(
                    "{:?} never runs: it is neither reachable from startNodes nor in a storage \
                     node's embedding branch",
                    node.name.as_deref().unwrap_or(id)
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

    #[test]
    fn malformed_nodes_name_the_node_and_the_place() {
        let mut manifest = read_manifest(None).unwrap();
        let t = &mut manifest["components"]["pipelineTemplates"][0];
        let id = t["nodes"][0]["id"].as_str().unwrap().to_string();
        t["nodes"][0]["outputs"][0]
            .as_object_mut()
            .unwrap()
            .remove("portId");
        t["nodes"][0]["someNewDataloopField"] = json!({"kept": true});
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(err.contains(&format!("node {id}")), "{err}");
        assert!(
            err.contains("outputs[0]") && err.contains("portId"),
            "{err}"
        );

        let mut manifest = read_manifest(None).unwrap();
        manifest["components"]["pipelineTemplates"][0]["startNodes"][0]
            .as_object_mut()
            .unwrap()
            .remove("nodeId");
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(
            err.contains("startNodes") && err.contains("nodeId"),
            "{err}"
        );

        let mut manifest = read_manifest(None).unwrap();
        manifest["components"]["pipelineTemplates"][0]["nodes"] = json!({});
        let err = templates(&manifest).unwrap_err().to_string();
        assert!(err.contains("pipelineTemplates[0].nodes"), "{err}");
    }
}
