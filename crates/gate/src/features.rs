//! Feature sets and vectors, and the `$euclid` ranking they share with item queries.

use crate::http::{bad, err, ok, Req, R};
use crate::shape::Dql;
use crate::shape::*;
use crate::{now, GateState};
use axum::response::Response;
use serde_json::{json, Value};

pub(crate) fn route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<R> {
    let r = match (req.method.as_str(), segs) {
        ("POST", ["features", "sets"]) => req.json().and_then(|v| create_feature_set(st, v)),
        ("POST", ["features", "sets", "query"]) => req.json().and_then(|v| {
            let q = dql(st, v, "feature_sets", false, true)?;
            let rows = filter_rows(st.feature_sets.values(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }),
        ("GET", ["features", "sets", id]) => req.no_body().and_then(|_| {
            st.feature_sets
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "feature set not found"))
        }),
        ("POST", ["features", "vectors"]) => req.json().and_then(|v| create_vectors(st, v)),
        ("POST", ["features", "vectors", "query"]) => req.json().and_then(|v| query_vectors(st, v)),
        ("DELETE", ["features", "vectors", id]) => req.no_body().and_then(|_| {
            st.vectors
                .remove(*id)
                .ok_or_else(|| err(404, "feature vector not found"))?;
            Ok(ok(json!({})))
        }),
        _ => return None,
    };
    Some(r)
}

pub(crate) fn euclid(a: &[f64], v: &Value) -> f64 {
    let b: Vec<f64> = v
        .as_array()
        .map(|x| x.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// The `$euclid` object: `{input: [...], $euclidSort: {eu_dist: "ascending"}}`.
fn euclid_spec(st: &GateState, value: &Value, fs_id: &str) -> Result<Vec<f64>, Response> {
    let e = shape(value, "value filter", &["$euclid"], &["$euclid"])?;
    let spec = shape(
        &e["$euclid"],
        "$euclid",
        &["input", "$euclidSort"],
        &["input", "$euclidSort"],
    )?;
    if spec["$euclidSort"] != json!({"eu_dist": "ascending"}) {
        return Err(bad(
            "$euclid: $euclidSort must be {\"eu_dist\": \"ascending\"}",
        ));
    }
    let input: Vec<f64> = spec["input"]
        .as_array()
        .ok_or_else(|| bad("$euclid: input must be an array of numbers"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| bad("$euclid: input must be an array of numbers"))
        })
        .collect::<Result<_, _>>()?;
    let fs = st
        .feature_sets
        .get(fs_id)
        .ok_or_else(|| err(404, "feature set not found"))?;
    if fs["size"].as_u64() != Some(input.len() as u64) {
        return Err(bad(format!(
            "$euclid: input has {} values, feature set size is {}",
            input.len(),
            fs["size"]
        )));
    }
    Ok(input)
}

pub(crate) fn euclid_join(
    st: &GateState,
    join: &Value,
) -> Result<(String, Vec<f64>, Option<String>), Response> {
    let j = shape(join, "join", &["on", "filter"], &["on", "filter"])?;
    if j["on"] != json!({"resource": "feature_vectors", "local": "entityId", "forigen": "id"}) {
        return Err(bad(format!(
            "join: on must be the feature_vectors join, got {}",
            j["on"]
        )));
    }
    let f = shape(
        &j["filter"],
        "join filter",
        &["value", "featureSetId", "datasetId"],
        &["value", "featureSetId"],
    )?;
    let fs_id = str_field(&f, "featureSetId", "join filter")?.to_string();
    let input = euclid_spec(st, &f["value"], &fs_id)?;
    let ds = match f.get("datasetId") {
        Some(d) => Some(
            d.as_str()
                .ok_or_else(|| bad("join filter: datasetId must be a string"))?
                .to_string(),
        ),
        None => None,
    };
    Ok((fs_id, input, ds))
}

fn create_feature_set(st: &mut GateState, v: Value) -> R {
    let what = "create feature set";
    let fields = ["name", "size", "type", "project", "modelId", "entityType"];
    let m = shape(&v, what, &fields, &fields)?;
    check_project(st, &m, "project", what)?;
    nonempty_str(&m, "name", what)?;
    nonempty_str(&m, "type", what)?;
    if m["entityType"] != json!("item") {
        return Err(bad("create feature set: entityType must be \"item\""));
    }
    if m["size"].as_u64().is_none_or(|s| s == 0) {
        return Err(bad("create feature set: size must be a positive integer"));
    }
    let model = str_field(&m, "modelId", what)?;
    if !st.models.contains_key(model) {
        return Err(err(404, "model not found"));
    }
    let id = st.id();
    let mut fs = Value::Object(m);
    fs["id"] = json!(id);
    fs["createdAt"] = json!(now());
    st.feature_sets.insert(id, fs.clone());
    // Dataloop answers this POST with an array.
    Ok(ok(json!([fs])))
}

fn create_vectors(st: &mut GateState, v: Value) -> R {
    let list = v
        .as_array()
        .ok_or_else(|| bad("vectors: expected an array"))?;
    let mut created = Vec::new();
    for x in list {
        let fields = ["entityId", "value", "featureSetId", "datasetId", "project"];
        let m = shape(
            x,
            "feature vector",
            &fields,
            &["entityId", "value", "featureSetId", "project"],
        )?;
        check_project(st, &m, "project", "feature vector")?;
        let fs_id = str_field(&m, "featureSetId", "feature vector")?;
        let fs = st
            .feature_sets
            .get(fs_id)
            .ok_or_else(|| err(404, "feature set not found"))?;
        let value = m["value"]
            .as_array()
            .ok_or_else(|| bad("feature vector: value must be an array"))?;
        if value.len() as u64 != fs["size"].as_u64().unwrap() || !value.iter().all(Value::is_number)
        {
            return Err(bad(format!(
                "feature vector: value must be {} numbers",
                fs["size"]
            )));
        }
        nonempty_str(&m, "entityId", "feature vector")?;
        created.push(m);
    }
    let mut out = Vec::new();
    for m in created {
        let id = st.id();
        let mut vec = Value::Object(m);
        vec["id"] = json!(id);
        vec["createdAt"] = json!(now());
        st.vectors.insert(id, vec.clone());
        out.push(vec);
    }
    Ok(ok(Value::Array(out)))
}

fn query_vectors(st: &mut GateState, v: Value) -> R {
    let q = dql(st, v, "feature_vectors", false, true)?;
    let mut filter = q.filter.clone();
    // `value: {$euclid: ...}` ranks by distance; everything else filters.
    let euclid_value = filter.as_object_mut().and_then(|f| f.remove("value"));
    let rows = filter_rows(st.vectors.values(), &filter)?;
    match euclid_value {
        None => Ok(ok(paginate(rows, &q))),
        Some(val) => {
            let fs_id = filter
                .get("featureSetId")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("$euclid query: filter needs featureSetId next to value"))?
                .to_string();
            let input = euclid_spec(st, &val, &fs_id)?;
            let mut scored: Vec<(f64, Value)> = rows
                .into_iter()
                .map(|r| (euclid(&input, &r["value"]), r))
                .collect();
            scored.sort_by(|a, b| a.0.total_cmp(&b.0));
            let q2 = Dql { sort: None, ..q };
            Ok(ok(paginate(
                scored.into_iter().map(|(_, r)| r).collect(),
                &q2,
            )))
        }
    }
}
