//! Models (create, PATCH, clone with its `cloning` latency) and metrics.

use crate::http::{bad, err, ok, Req, R};
use crate::shape::*;
use crate::{now, GateState};
use axum::response::Response;
use serde_json::{json, Map, Value};

pub(crate) fn route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<R> {
    let r = match (req.method.as_str(), segs) {
        ("POST", ["ml", "models"]) => req.json().and_then(|v| create_model(st, v)),
        ("POST", ["ml", "models", "query"]) => req.json().and_then(|v| {
            let q = dql(st, v, "models", false, false)?;
            let rows = filter_rows(st.models.values(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }),
        ("GET", ["ml", "models", id]) => req.no_body().and_then(|_| get_model(st, id).map(ok)),
        ("PATCH", ["ml", "models", id]) => {
            let q = req.query.clone();
            req.json().and_then(|v| patch_model(st, id, &q, v))
        }
        ("POST", ["ml", "models", id, "clone"]) => req.json().and_then(|v| clone_model(st, id, v)),
        ("POST", ["ml", "metrics", "publish"]) => req.json().and_then(|v| publish(st, v)),
        ("POST", ["ml", "metrics", "query"]) => req.json().and_then(|v| {
            let q = dql(st, v, "metrics", false, false)?;
            let rows = filter_rows(st.metrics.iter(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }),
        _ => return None,
    };
    Some(r)
}

const MODEL_STATUSES: &[&str] = &[
    "created",
    "pre-trained",
    "pending",
    "training",
    "trained",
    "deployed",
    "failed",
    "cloning",
];

fn get_model(st: &mut GateState, id: &str) -> Result<Value, Response> {
    if let Some((left, target)) = st.cloning.get_mut(id) {
        if *left > 0 {
            *left -= 1;
        } else {
            let target = target.clone();
            st.cloning.remove(id);
            st.models.get_mut(id).unwrap()["status"] = json!(target);
        }
    }
    st.models
        .get(id)
        .cloned()
        .ok_or_else(|| err(404, "model not found"))
}

fn check_model_fields(m: &Map<String, Value>, what: &str) -> Result<(), Response> {
    if let Some(s) = m.get("status") {
        if !s.as_str().is_some_and(|s| MODEL_STATUSES.contains(&s)) {
            return Err(bad(format!("{what}: unknown status {s}")));
        }
    }
    opt_obj(m, "configuration", what)?;
    opt_obj(m, "metadata", what)?;
    for k in ["labels", "tags"] {
        if m.get(k).is_some_and(|v| !v.is_array()) {
            return Err(bad(format!("{what}: {k} must be an array")));
        }
    }
    if m.get("datasetId")
        .is_some_and(|v| !(v.is_string() || v.is_null()))
    {
        return Err(bad(format!("{what}: datasetId must be a string")));
    }
    Ok(())
}

fn name_taken(st: &GateState, name: &str, except: Option<&str>) -> bool {
    st.models
        .values()
        .any(|m| m["name"] == json!(name) && m["id"].as_str() != except)
}

fn create_model(st: &mut GateState, v: Value) -> R {
    let what = "create model";
    let m = shape(
        &v,
        what,
        &[
            "name",
            "projectId",
            "status",
            "configuration",
            "metadata",
            "labels",
            "tags",
            "datasetId",
            "description",
            "scope",
            "version",
            "artifacts",
            "packageId",
            "moduleName",
            "app",
            "outputType",
            "inputType",
        ],
        // dtlpy's models.create always sends the types.
        &["name", "projectId", "outputType", "inputType"],
    )?;
    check_project(st, &m, "projectId", what)?;
    let name = nonempty_str(&m, "name", what)?.to_string();
    check_model_fields(&m, what)?;
    check_package_fields(&m, what)?;
    if m.get("artifacts").is_some_and(|a| a != &json!([])) {
        return Err(bad("create model: artifacts are added by a PATCH here"));
    }
    if m.contains_key("packageId") != m.contains_key("moduleName") {
        return Err(bad("create model: packageId and moduleName go together"));
    }
    if name_taken(st, &name, None) {
        return Err(err(409, format!("model {name:?} already exists")));
    }
    let id = st.id();
    let pid = st.project_id.clone();
    let mut model = json!({
        "id": id, "name": name, "status": m.get("status").cloned().unwrap_or(json!("created")),
        "configuration": m.get("configuration").cloned().unwrap_or(json!({})),
        "metadata": m.get("metadata").cloned().unwrap_or(json!({"system": {}})),
        "datasetId": m.get("datasetId").cloned().unwrap_or(Value::Null),
        "description": m.get("description").cloned().unwrap_or(Value::Null),
        "labels": m.get("labels").cloned().unwrap_or(json!([])),
        "tags": m.get("tags").cloned().unwrap_or(json!([])),
        "artifacts": [], "projectId": pid, "context": {"project": pid},
        "createdAt": now(), "updatedAt": now(),
    });
    for k in PACKAGE_FIELDS.iter().chain(&["scope", "version"]) {
        if let Some(v) = m.get(*k) {
            model[*k] = v.clone();
        }
    }
    st.models.insert(id, model.clone());
    Ok(ok(model))
}

/// What ties a model to its app, as dtlpy's `models.create` / `model.clone` send it.
const PACKAGE_FIELDS: &[&str] = &["packageId", "moduleName", "app", "outputType", "inputType"];

fn check_package_fields(m: &Map<String, Value>, what: &str) -> Result<(), Response> {
    for k in [
        "packageId",
        "moduleName",
        "outputType",
        "inputType",
        "scope",
        "version",
    ] {
        if m.get(k)
            .is_some_and(|v| v.as_str().is_none_or(str::is_empty))
        {
            return Err(bad(format!("{what}: {k} must be a non-empty string")));
        }
    }
    if let Some(app) = m.get("app") {
        let am = app
            .as_object()
            .ok_or_else(|| bad(format!("{what}: app must be an object")))?;
        for k in ["id", "componentName"] {
            if !am.get(k).is_some_and(Value::is_string) {
                return Err(bad(format!("{what}: app.{k} must be a string")));
            }
        }
    }
    Ok(())
}

fn patch_model(st: &mut GateState, id: &str, query: &str, v: Value) -> R {
    let what = "patch model";
    let system = match query {
        "" => false,
        "system=true" => true,
        other => {
            return Err(bad(format!(
                "PATCH /ml/models/{{id}}: unknown query {other:?}"
            )))
        }
    };
    if !st.models.contains_key(id) {
        return Err(err(404, "model not found"));
    }
    let m = shape(
        &v,
        what,
        &[
            "id",
            "name",
            "status",
            "configuration",
            "metadata",
            "labels",
            "tags",
            "datasetId",
            "description",
            "artifacts",
            "projectId",
            "context",
            "packageId",
            "createdAt",
            "updatedAt",
            "moduleName",
            "app",
            "outputType",
            "inputType",
            "scope",
            "version",
        ],
        &[],
    )?;
    if m.get("id").is_some_and(|x| x != &json!(id)) {
        return Err(bad("patch model: id differs from the path"));
    }
    check_model_fields(&m, what)?;
    if !system {
        if let Some(md) = m.get("metadata") {
            if md.get("system") != st.models[id]["metadata"].get("system") {
                return Err(bad(
                    "patch model: changing metadata.system needs ?system=true",
                ));
            }
        }
    }
    if let Some(name) = m.get("name") {
        let name = name
            .as_str()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| bad("patch model: bad name"))?;
        if name_taken(st, name, Some(id)) {
            return Err(err(409, format!("model {name:?} already exists")));
        }
    }
    if let Some(arts) = m.get("artifacts") {
        let arts = arts
            .as_array()
            .ok_or_else(|| bad("patch model: artifacts must be an array"))?;
        for a in arts {
            let am = shape(a, "artifact", &["type", "itemId"], &["type", "itemId"])?;
            if am["type"] != json!("item") {
                return Err(bad("artifact: type must be \"item\""));
            }
            let item = str_field(&am, "itemId", "artifact")?;
            if !st.items.contains_key(item) {
                return Err(bad(format!("artifact: item {item} does not exist")));
            }
        }
    }
    let model = st.models.get_mut(id).unwrap();
    for (k, val) in m {
        if ![
            "id",
            "projectId",
            "context",
            "packageId",
            "createdAt",
            "updatedAt",
        ]
        .contains(&k.as_str())
        {
            model[k.as_str()] = val;
        }
    }
    model["updatedAt"] = json!(now());
    Ok(ok(model.clone()))
}

fn clone_model(st: &mut GateState, src: &str, v: Value) -> R {
    let what = "clone model";
    let source = st
        .models
        .get(src)
        .cloned()
        .ok_or_else(|| err(404, "model not found"))?;
    let m = shape(
        &v,
        what,
        &[
            "name",
            "projectId",
            "datasetId",
            "configuration",
            "status",
            "metadata",
            "description",
            "packageId",
            "outputType",
            "inputType",
            // dtlpy's model.clone: labels (the dataset's, when one is given), tags, scope.
            "labels",
            "tags",
            "scope",
        ],
        &["name", "projectId"],
    )?;
    check_project(st, &m, "projectId", what)?;
    let name = nonempty_str(&m, "name", what)?.to_string();
    check_model_fields(&m, what)?;
    check_package_fields(&m, what)?;
    // dtlpy sends these from the source model; anything else is a backend bug.
    for k in ["packageId", "outputType", "inputType"] {
        let theirs = source.get(k).filter(|v| !v.is_null());
        if m.get(k) != theirs {
            return Err(bad(format!(
                "clone model: {k} must be the source model's ({}), got {}",
                theirs.map_or("absent".to_string(), Value::to_string),
                m.get(k).map_or("absent".to_string(), Value::to_string),
            )));
        }
    }
    if let Some(md) = m.get("metadata") {
        let subsets = md.get("system").and_then(|s| s.get("subsets"));
        if !subsets.is_some_and(|s| {
            s.get("train").is_some_and(Value::is_object)
                && s.get("validation").is_some_and(Value::is_object)
        }) {
            return Err(bad(
                "clone model: metadata.system.subsets needs train and validation filters",
            ));
        }
    }
    if name_taken(st, &name, None) {
        return Err(err(409, format!("model {name:?} already exists")));
    }
    let id = st.id();
    let mut model = source.clone();
    model["id"] = json!(id);
    model["name"] = json!(name);
    for k in [
        "datasetId",
        "configuration",
        "description",
        "labels",
        "tags",
        "scope",
    ] {
        if let Some(x) = m.get(k) {
            model[k] = x.clone();
        }
    }
    if let Some(md) = m.get("metadata") {
        let subsets = md["system"]["subsets"].clone();
        merge(&mut model["metadata"], md);
        // Each subset is one DQL body: taken as sent, never merged into the source's.
        model["metadata"]["system"]["subsets"] = subsets;
    }
    // Like Dataloop, the clone references the source's artifacts and is `cloning` for a while.
    let target = m
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("created")
        .to_string();
    model["createdAt"] = json!(now());
    model["updatedAt"] = json!(now());
    if st.clone_polls > 0 {
        model["status"] = json!("cloning");
        st.cloning.insert(id.clone(), (st.clone_polls, target));
    } else {
        model["status"] = json!(target);
    }
    st.models.insert(id, model.clone());
    Ok(ok(model))
}

fn publish(st: &mut GateState, v: Value) -> R {
    let list = v
        .as_array()
        .ok_or_else(|| bad("metrics publish: expected an array of samples"))?;
    let mut n = 0;
    for s in list {
        let m = shape(
            s,
            "metric sample",
            &["modelId", "datasetId", "figure", "legend", "data"],
            &["modelId", "figure", "legend", "data"],
        )?;
        let model = str_field(&m, "modelId", "metric sample")?;
        if !st.models.contains_key(model) {
            return Err(err(404, format!("model {model} not found")));
        }
        nonempty_str(&m, "figure", "metric sample")?;
        str_field(&m, "legend", "metric sample")?;
        let d = shape(&m["data"], "metric data", &["x", "y"], &["x", "y"])?;
        if !(d["x"].is_number() && d["y"].is_number()) {
            return Err(bad("metric data: x and y must be numbers"));
        }
        let mut sample = Value::Object(m);
        sample["createdAt"] = json!(now());
        st.metrics.push(sample);
        n += 1;
    }
    Ok(ok(json!({"succeeded": n, "failed": 0})))
}
