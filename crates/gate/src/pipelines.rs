//! Pipelines, their variables and pipeline executions.

use crate::http::{bad, err, ok, Req, R};
use crate::shape::*;
use crate::{now, GateState};
use axum::response::Response;
use serde_json::{json, Map, Value};

pub(crate) fn route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<R> {
    let r = match (req.method.as_str(), segs) {
        ("POST", ["pipelines"]) => req.json().and_then(|v| create_pipeline(st, v)),
        ("POST", ["pipelines", "query"]) => req.json().and_then(|v| {
            let q = dql(st, v, "pipeline", false, false)?;
            let rows = filter_rows(st.pipelines.values(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }),
        ("GET", ["pipelines", id]) => req.no_body().and_then(|_| {
            st.pipelines
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "pipeline not found"))
        }),
        ("PATCH", ["pipelines", id]) => req.json().and_then(|v| patch_pipeline(st, id, v)),
        ("PATCH", ["pipelines", id, "variables"]) => {
            req.json().and_then(|v| patch_variables(st, id, v))
        }
        ("POST", ["pipelines", id, "execute"]) => {
            req.json().and_then(|v| execute_pipeline(st, id, v))
        }
        _ => return None,
    };
    Some(r)
}

fn check_variable(v: &Value, pipeline_id: Option<&str>) -> Result<Map<String, Value>, Response> {
    let m = shape(
        v,
        "variable",
        &["id", "name", "type", "value", "reference", "description"],
        &["name", "type"],
    )?;
    nonempty_str(&m, "name", "variable")?;
    nonempty_str(&m, "type", "variable")?;
    if let (Some(r), Some(p)) = (m.get("reference"), pipeline_id) {
        if r != &json!(p) {
            return Err(bad("variable: reference must be the pipeline id"));
        }
    }
    Ok(m)
}

pub(crate) fn create_pipeline(st: &mut GateState, v: Value) -> R {
    let what = "create pipeline";
    let m = shape(
        &v,
        what,
        &[
            "name",
            "projectId",
            "nodes",
            "connections",
            "startNodes",
            "variables",
        ],
        &["name", "projectId"],
    )?;
    check_project(st, &m, "projectId", what)?;
    let name = nonempty_str(&m, "name", what)?.to_string();
    if st.pipelines.values().any(|p| p["name"] == json!(name)) {
        return Err(err(409, format!("pipeline {name:?} already exists")));
    }
    let id = st.id();
    let mut vars = Vec::new();
    for var in m
        .get("variables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let mut vm = check_variable(&var, None)?;
        if vm.contains_key("id") || vm.contains_key("reference") {
            return Err(bad(
                "create pipeline: new variables carry no id or reference",
            ));
        }
        vm.insert("id".into(), json!(st.id()));
        vm.insert("reference".into(), json!(id));
        vars.push(Value::Object(vm));
    }
    let p = json!({"id": id, "name": name, "projectId": st.project_id,
        "nodes": m.get("nodes").cloned().unwrap_or(json!([])),
        "connections": m.get("connections").cloned().unwrap_or(json!([])),
        "startNodes": m.get("startNodes").cloned().unwrap_or(json!([])),
        "variables": vars, "createdAt": now(), "updatedAt": now()});
    st.pipelines.insert(id, p.clone());
    Ok(ok(p))
}

/// Accepts the SDK's `{"variables": [...]}` and the spec's bare array.
fn patch_variables(st: &mut GateState, id: &str, v: Value) -> R {
    if !st.pipelines.contains_key(id) {
        return Err(err(404, "pipeline not found"));
    }
    let list = match &v {
        Value::Array(a) => a.clone(),
        Value::Object(_) => {
            let m = shape(&v, "variables", &["variables"], &["variables"])?;
            m["variables"]
                .as_array()
                .cloned()
                .ok_or_else(|| bad("variables must be an array"))?
        }
        _ => {
            return Err(bad(
                "PATCH variables: expected {\"variables\": [...]} or an array",
            ))
        }
    };
    let mut out = Vec::new();
    for var in &list {
        let mut vm = check_variable(var, Some(id))?;
        if !vm.contains_key("id") {
            vm.insert("id".into(), json!(st.id()));
        }
        vm.insert("reference".into(), json!(id));
        out.push(Value::Object(vm));
    }
    let p = st.pipelines.get_mut(id).unwrap();
    p["variables"] = Value::Array(out);
    p["updatedAt"] = json!(now());
    Ok(ok(p.clone()))
}

/// dtlpy's `pipeline.update()` sends the whole pipeline as `Pipeline.to_json` writes it, after
/// it PATCHed changed variables through `/variables`. The gate takes name, description,
/// nodes, connections and startNodes from it; the variables must be the stored ones (they
/// change only through `/variables`); read-only fields must match or be null.
fn patch_pipeline(st: &mut GateState, id: &str, v: Value) -> R {
    let what = "patch pipeline";
    let current = st
        .pipelines
        .get(id)
        .cloned()
        .ok_or_else(|| err(404, "pipeline not found"))?;
    let m = shape(
        &v,
        what,
        &[
            "id",
            "name",
            "description",
            "creator",
            "status",
            "projectId",
            "orgId",
            "compositionId",
            "createdAt",
            "updatedAt",
            "updatedBy",
            "url",
            "nodes",
            "connections",
            "startNodes",
            "variables",
            "settings",
            "preview",
            "revisions",
            "templateKind",
        ],
        &["id"],
    )?;
    if m["id"] != json!(id) {
        return Err(bad("patch pipeline: id differs from the path"));
    }
    if m.get("projectId")
        .is_some_and(|p| p != &json!(st.project_id))
    {
        return Err(bad(
            "patch pipeline: projectId is not the pipeline's project",
        ));
    }
    for k in ["nodes", "connections", "startNodes"] {
        if m.get(k).is_some_and(|x| !x.is_array()) {
            return Err(bad(format!("{what}: {k} must be an array")));
        }
    }
    if let Some(vars) = m.get("variables") {
        let list = vars
            .as_array()
            .ok_or_else(|| bad("patch pipeline: variables must be an array"))?;
        for var in list {
            check_variable(var, Some(id))?;
        }
        if vars != &current["variables"] {
            return Err(bad(
                "patch pipeline: variables differ from the stored ones (PATCH /pipelines/{id}/variables changes them)",
            ));
        }
    }
    let mut next = current;
    if let Some(name) = m.get("name") {
        let name = name
            .as_str()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| bad("patch pipeline: bad name"))?;
        if st
            .pipelines
            .values()
            .any(|p| p["name"] == json!(name) && p["id"] != json!(id))
        {
            return Err(err(409, format!("pipeline {name:?} already exists")));
        }
        next["name"] = json!(name);
    }
    for k in ["description", "nodes", "connections", "startNodes"] {
        if let Some(x) = m.get(k) {
            next[k] = x.clone();
        }
    }
    next["updatedAt"] = json!(now());
    st.pipelines.insert(id.to_string(), next.clone());
    Ok(ok(next))
}

fn execute_pipeline(st: &mut GateState, id: &str, v: Value) -> R {
    if !st.pipelines.contains_key(id) {
        return Err(err(404, "pipeline not found"));
    }
    let m = shape(&v, "execute pipeline", &["pipeline"], &["pipeline"])?;
    let p = shape(&m["pipeline"], "execute pipeline", &["input"], &[])?;
    opt_obj(&p, "input", "execute pipeline")?;
    let run = st.id();
    let out = json!({"id": run, "pipelineId": id, "status": "pending",
        "input": p.get("input").cloned().unwrap_or(json!({})), "createdAt": now()});
    st.pipeline_runs.insert(run, out.clone());
    Ok(ok(out))
}
