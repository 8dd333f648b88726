//! Datasets, items (upload, stream, PATCH, DQL queries with the vector join) and annotations.

use crate::features::{euclid, euclid_join};
use crate::http::{bad, err, ok, Req, R};
use crate::http::{MPart, ReqBody};
use crate::shape::*;
use crate::{now, GateState, BOT_USER};
use axum::body::Body;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use cliptune_store::dql::Filter;
use serde_json::{json, Value};
use std::collections::HashMap;

pub(crate) fn route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<R> {
    let r = match (req.method.as_str(), segs) {
        ("POST", ["datasets"]) => req.json().and_then(|v| create_dataset(st, v)),
        ("POST", ["datasets", "query"]) => req.json().and_then(|v| query_datasets(st, v)),
        ("GET", ["datasets", id]) => req.no_body().and_then(|_| dataset_json(st, id).map(ok)),
        ("POST", ["datasets", id, "query"]) => req.json().and_then(|v| query_items(st, id, v)),
        ("POST", ["datasets", id, "items"]) => {
            let q = req.query.clone();
            upload(st, id, &q, req.body())
        }
        ("GET", ["items", id]) => req.no_body().and_then(|_| {
            st.items
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "item not found"))
        }),
        ("PATCH", ["items", id]) => {
            let q = req.query.clone();
            req.json().and_then(|v| patch_item(st, id, &q, v))
        }
        ("DELETE", ["items", id]) => req.no_body().and_then(|_| {
            st.items
                .remove(*id)
                .ok_or_else(|| err(404, "item not found"))?;
            st.blobs.remove(*id);
            Ok(ok(json!({})))
        }),
        ("GET", ["items", id, "stream"]) => req.no_body().and_then(|_| {
            let (bytes, mime) = st
                .blobs
                .get(*id)
                .cloned()
                .ok_or_else(|| err(404, "item not found"))?;
            Ok(([(header::CONTENT_TYPE, mime)], Body::from(bytes)).into_response())
        }),
        ("GET", ["items", id, "annotations"]) => req.no_body().and_then(|_| {
            if !st.items.contains_key(*id) {
                return Err(err(404, "item not found"));
            }
            Ok(ok(Value::Array(
                st.annotations.get(*id).cloned().unwrap_or_default(),
            )))
        }),
        ("POST", ["items", id, "annotations"]) => {
            req.json().and_then(|v| add_annotations(st, id, v))
        }
        ("GET", ["recipes", id]) => req.no_body().and_then(|_| {
            st.recipes
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "recipe not found"))
        }),
        ("GET", ["ontologies", id]) => req.no_body().and_then(|_| {
            st.ontologies
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "ontology not found"))
        }),
        _ => return None,
    };
    Some(r)
}

fn dataset_json(st: &GateState, id: &str) -> Result<Value, Response> {
    let mut d = st
        .datasets
        .get(id)
        .cloned()
        .ok_or_else(|| err(404, "dataset not found"))?;
    let n = st
        .items
        .values()
        .filter(|i| i["datasetId"] == json!(id))
        .count();
    d["itemsCount"] = json!(n);
    Ok(d)
}

fn create_dataset(st: &mut GateState, v: Value) -> R {
    // dtlpy's datasets.create always sends createDefaultRecipe (recipes are not modelled
    // here); driver / indexDriver / expirationOptions only when asked for.
    let m = shape(
        &v,
        "create dataset",
        &[
            "name",
            "projects",
            "createDefaultRecipe",
            "driver",
            "indexDriver",
            "expirationOptions",
        ],
        &["name", "projects"],
    )?;
    if m.get("createDefaultRecipe")
        .is_some_and(|b| !b.is_boolean())
    {
        return Err(bad("create dataset: createDefaultRecipe must be a boolean"));
    }
    for k in ["driver", "indexDriver"] {
        if m.get(k).is_some_and(|d| !d.is_string()) {
            return Err(bad(format!("create dataset: {k} must be a string")));
        }
    }
    opt_obj(&m, "expirationOptions", "create dataset")?;
    let name = nonempty_str(&m, "name", "create dataset")?.to_string();
    if m["projects"] != json!([st.project_id]) {
        return Err(bad("create dataset: projects must be [<project id>]"));
    }
    if st.datasets.values().any(|d| d["name"] == json!(name)) {
        return Err(err(409, format!("dataset {name:?} already exists")));
    }
    let id = st.id();
    let pid = st.project_id.clone();
    let mut metadata = json!({});
    // Dataloop gives such a dataset a recipe with an empty ontology; dtlpy reads both when
    // it needs the dataset's labels (e.g. model.clone with a dataset and no labels).
    if m.get("createDefaultRecipe") == Some(&json!(true)) {
        let (recipe, ontology) = (st.id(), st.id());
        st.ontologies.insert(
            ontology.clone(),
            json!({"id": ontology, "roots": [], "attributes": [], "metadata": {"system": {"projectIds": [pid]}},
                   "creator": BOT_USER, "createdAt": now(), "updatedAt": now()}),
        );
        st.recipes.insert(
            recipe.clone(),
            json!({"id": recipe, "title": format!("{name} default recipe"), "projectIds": [pid],
                   "ontologyIds": [ontology], "creator": BOT_USER, "createdAt": now(), "updatedAt": now()}),
        );
        metadata = json!({"system": {"recipes": [recipe]}});
    }
    st.datasets.insert(
        id.clone(),
        json!({"id": id, "name": name, "projects": [pid], "metadata": metadata, "createdAt": now(), "updatedAt": now()}),
    );
    dataset_json(st, &id).map(ok)
}

fn query_datasets(st: &mut GateState, v: Value) -> R {
    let q = dql(st, v, "datasets", false, true)?;
    let all: Vec<Value> = st
        .datasets
        .keys()
        .filter_map(|id| dataset_json(st, id).ok())
        .filter(|d| q.system_space || d.get("system").is_none())
        .collect();
    let rows = filter_rows(all.iter(), &q.filter)?;
    Ok(ok(paginate(rows, &q)))
}

fn upload(st: &mut GateState, ds: &str, query: &str, body: ReqBody) -> R {
    if !st.datasets.contains_key(ds) {
        return Err(err(404, "dataset not found"));
    }
    let mode = match query {
        "mode=overwrite" => "overwrite",
        "mode=skip" => "skip",
        _ => {
            return Err(bad(format!(
                "upload: query must be mode=overwrite|skip, got {query:?}"
            )))
        }
    };
    let ReqBody::Multipart(parts) = body else {
        return Err(bad("upload: expected a multipart/form-data body"));
    };
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut file: Option<MPart> = None;
    for p in parts {
        match p.name.as_str() {
            "file" => {
                if p.file_name.is_none() {
                    return Err(bad("upload: the file part needs a filename"));
                }
                file = Some(p);
            }
            "type" | "path" | "metadata" | "description" => {
                if p.file_name.is_some() {
                    return Err(bad(format!("upload: {} must be a text field", p.name)));
                }
                fields.insert(
                    p.name.clone(),
                    String::from_utf8(p.bytes).map_err(|_| bad("upload: field is not UTF-8"))?,
                );
            }
            other => return Err(bad(format!("upload: unexpected form field {other:?}"))),
        }
    }
    let file = file.ok_or_else(|| bad("upload: missing file part"))?;
    if fields.get("type").map(String::as_str) != Some("file") {
        return Err(bad("upload: type must be \"file\""));
    }
    let path = fields
        .get("path")
        .ok_or_else(|| bad("upload: missing path"))?
        .clone();
    if !path.starts_with('/') || path.ends_with('/') || path.contains("//") {
        return Err(bad(format!(
            "upload: path {path:?} must be an absolute file path"
        )));
    }
    let user_meta: Value = match fields.get("metadata") {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| bad(format!("upload: metadata is not JSON: {e}")))?,
        None => json!({}),
    };
    if !user_meta.is_object() {
        return Err(bad("upload: metadata must be a JSON object"));
    }
    let mime = file
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let existing = st
        .items
        .values()
        .find(|i| i["datasetId"] == json!(ds) && i["filename"] == json!(path))
        .and_then(|i| i["id"].as_str().map(String::from));
    if let (Some(id), "skip") = (&existing, mode) {
        return Ok(ok(st.items[id].clone()));
    }
    let id = existing.clone().unwrap_or_else(|| st.id());
    let name = path.rsplit('/').next().unwrap().to_string();
    let dir = match path.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => path[..i].to_string(),
        None => "/".to_string(),
    };
    let mut metadata = json!({"system": {}});
    merge(&mut metadata, &user_meta);
    metadata["system"]["mimetype"] = json!(mime);
    metadata["system"]["size"] = json!(file.bytes.len());
    metadata["system"]["originalname"] = json!(file.file_name);
    // Dataloop marks JSON items that carry a shebang (prompt items).
    if let Ok(content) = serde_json::from_slice::<Value>(&file.bytes) {
        if content.get("shebang") == Some(&json!("dataloop")) {
            if let Some(dltype) = content.get("metadata").and_then(|m| m.get("dltype")) {
                metadata["system"]["shebang"] = json!({"dltype": dltype});
            }
        }
    }
    let created = existing
        .as_ref()
        .and_then(|e| st.items[e].get("createdAt").cloned())
        .unwrap_or(json!(now()));
    let mut item = json!({
        "id": id, "datasetId": ds, "filename": path, "name": name, "dir": dir, "type": "file",
        "hidden": false, "metadata": metadata, "annotationsCount": st.annotations.get(&id).map_or(0, Vec::len),
        "stream": format!("{}/items/{id}/stream", st.base),
        "createdAt": created, "updatedAt": now(),
    });
    if let Some(d) = fields.get("description") {
        item["description"] = json!(d);
    }
    st.items.insert(id.clone(), item.clone());
    st.blobs.insert(id, (file.bytes, mime));
    Ok(ok(item))
}

/// dtlpy's `items.update` sends only what changed (its `DictDiffer` diff), members merged
/// into the item; `metadata.system` changes need `?system=true` (without it dtlpy warns
/// "system metadata will not be updated": refused here, so a backend that forgets it fails).
fn patch_item(st: &mut GateState, id: &str, query: &str, v: Value) -> R {
    let system = match query {
        "" => false,
        "system=true" => true,
        other => return Err(bad(format!("PATCH /items/{{id}}: unknown query {other:?}"))),
    };
    let m = shape(
        &v,
        "patch item",
        &["description", "metadata", "hidden"],
        &[],
    )?;
    if m.is_empty() {
        return Err(bad("patch item: empty patch"));
    }
    let item = st
        .items
        .get_mut(id)
        .ok_or_else(|| err(404, "item not found"))?;
    let mut next = item.clone();
    if let Some(d) = m.get("description") {
        match d {
            Value::Null => {
                next.as_object_mut().unwrap().remove("description");
            }
            Value::String(_) => next["description"] = d.clone(),
            _ => return Err(bad("patch item: description must be a string or null")),
        }
    }
    if let Some(md) = m.get("metadata") {
        if !md.is_object() {
            return Err(bad("patch item: metadata must be an object"));
        }
        if !next["metadata"].is_object() {
            next["metadata"] = json!({});
        }
        merge(&mut next["metadata"], md);
        if !system && next["metadata"].get("system") != item["metadata"].get("system") {
            return Err(bad(
                "patch item: changing metadata.system needs ?system=true",
            ));
        }
    }
    if let Some(h) = m.get("hidden") {
        if !h.is_boolean() {
            return Err(bad("patch item: hidden must be a boolean"));
        }
        next["hidden"] = h.clone();
    }
    next["updatedAt"] = json!(now());
    *item = next;
    Ok(ok(item.clone()))
}

fn add_annotations(st: &mut GateState, item_id: &str, v: Value) -> R {
    let ds = st
        .items
        .get(item_id)
        .map(|i| i["datasetId"].clone())
        .ok_or_else(|| err(404, "item not found"))?;
    let list = v
        .as_array()
        .ok_or_else(|| bad("annotations: expected an array"))?;
    let mut out = Vec::new();
    for a in list {
        let m = shape(
            a,
            "annotation",
            &["type", "label", "coordinates", "metadata"],
            &["type", "label", "coordinates"],
        )?;
        nonempty_str(&m, "type", "annotation")?;
        str_field(&m, "label", "annotation")?;
        opt_obj(&m, "metadata", "annotation")?;
        let id = st.id();
        let mut ann = json!({"id": id, "itemId": item_id, "datasetId": ds, "type": m["type"],
            "label": m["label"], "coordinates": m["coordinates"], "createdAt": now()});
        if let Some(md) = m.get("metadata") {
            ann["metadata"] = md.clone();
        }
        out.push(ann);
    }
    let entry = st.annotations.entry(item_id.to_string()).or_default();
    entry.extend(out.iter().cloned());
    let n = entry.len();
    st.items.get_mut(item_id).unwrap()["annotationsCount"] = json!(n);
    Ok(ok(Value::Array(out)))
}

fn query_items(st: &mut GateState, ds: &str, v: Value) -> R {
    if !st.datasets.contains_key(ds) {
        return Err(err(404, "dataset not found"));
    }
    let q = dql(st, v, "items", true, false)?;
    let filter = Filter::parse(&q.filter).map_err(|e| bad(e.to_string()))?;
    let mut rows: Vec<Value> = st
        .items
        .values()
        .filter(|i| i["datasetId"] == json!(ds) && filter.matches_json(i))
        .cloned()
        .collect();
    if let Some(join) = q.join.clone() {
        let (fs_id, input, ds_filter) = euclid_join(st, &join)?;
        if let Some(d) = &ds_filter {
            if d != ds {
                return Err(bad("join: datasetId differs from the queried dataset"));
            }
        }
        let mut scored: Vec<(f64, Value)> =
            rows.drain(..)
                .filter_map(|it| {
                    let vec =
                        st.vectors.values().rev().find(|v| {
                            v["featureSetId"] == json!(fs_id) && v["entityId"] == it["id"]
                        })?;
                    Some((euclid(&input, &vec["value"]), it))
                })
                .collect();
        // The real gate orders joined results by distance; so does this one.
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        rows = scored.into_iter().map(|(_, it)| it).collect();
        let q2 = Dql { sort: None, ..q };
        return Ok(ok(paginate(rows, &q2)));
    }
    Ok(ok(paginate(rows, &q)))
}
