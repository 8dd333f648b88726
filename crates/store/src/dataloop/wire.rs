//! Dataloop JSON <-> cliptune entities. Dataloop answers may omit fields or send `null`
//! where the entities have defaults; these functions fill the gaps instead of failing.

use crate::entities::*;
use crate::error::{Result, StoreError};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Where cliptune keeps the clone source of a model inside its metadata (Dataloop has no
/// documented field for it).
pub(crate) const CLIPTUNE_KEY: &str = "cliptune";
const BASE_MODEL_KEY: &str = "baseModelId";

pub(crate) fn bad_answer(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        status: 200,
        message: format!("unexpected {what} JSON from Dataloop: {detail}"),
    }
}

fn object(v: Value, what: &str) -> Result<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(bad_answer(
            what,
            format!("expected an object, got {}", kind_of(&other)),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Drops `null` members, so `#[serde(default)]` applies to them.
fn denull(m: &mut Map<String, Value>) {
    m.retain(|_, v| !v.is_null());
}

fn decode<T: DeserializeOwned>(m: Map<String, Value>, what: &str) -> Result<T> {
    serde_json::from_value(Value::Object(m)).map_err(|e| bad_answer(what, e))
}

/// Turns a numeric (epoch milliseconds) timestamp into RFC 3339; strings pass through.
fn fix_time(m: &mut Map<String, Value>, key: &str) {
    if let Some(v) = m.get(key) {
        if let Some(ms) = v.as_f64() {
            m.insert(key.into(), Value::String(ms_rfc3339(ms)));
        }
    }
}

pub(crate) fn dataset(v: Value) -> Result<Dataset> {
    let mut m = object(v, "dataset")?;
    denull(&mut m);
    fix_time(&mut m, "createdAt");
    fix_time(&mut m, "updatedAt");
    decode(m, "dataset")
}

pub(crate) fn item(v: Value) -> Result<Item> {
    let mut m = object(v, "item")?;
    denull(&mut m);
    let filename = m
        .get("filename")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            m.get("name")
                .and_then(Value::as_str)
                .map(|n| format!("/{n}"))
        })
        .ok_or_else(|| bad_answer("item", "no filename"))?;
    let filename = if filename.starts_with('/') {
        filename
    } else {
        format!("/{filename}")
    };
    if !m.contains_key("name") {
        let name = filename.rsplit('/').next().unwrap_or("").to_string();
        m.insert("name".into(), Value::String(name));
    }
    if !m.contains_key("dir") {
        m.insert("dir".into(), Value::String(parent_dir(&filename)));
    }
    m.insert("filename".into(), Value::String(filename));
    m.entry("datasetId").or_insert(Value::String(String::new()));
    fix_time(&mut m, "createdAt");
    fix_time(&mut m, "updatedAt");
    decode(m, "item")
}

/// `/a/b/c.jpg` -> `/a/b`; `/c.jpg` -> `/`.
pub(crate) fn parent_dir(filename: &str) -> String {
    match filename.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => filename[..i].to_string(),
    }
}

pub(crate) fn annotation(v: Value, item_id: &str) -> Result<Annotation> {
    let mut m = object(v, "annotation")?;
    denull(&mut m);
    m.entry("itemId")
        .or_insert_with(|| Value::String(item_id.to_string()));
    m.entry("datasetId").or_insert(Value::String(String::new()));
    m.entry("coordinates").or_insert(Value::Null);
    fix_time(&mut m, "createdAt");
    decode(m, "annotation")
}

/// One entry of a model's `artifacts` as Dataloop stores it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ArtifactRef {
    /// The SDK's form `{type: "item", itemId}`: path, size and hash live on the item.
    Item(Id),
    /// An artifact that already carries cliptune's fields.
    Inline(Artifact),
}

/// A model as Dataloop sent it, before its artifact items are resolved.
pub(crate) struct WireModel {
    pub model: Model,
    pub artifacts: Vec<ArtifactRef>,
}

pub(crate) fn model(v: Value) -> Result<WireModel> {
    let mut m = object(v, "model")?;
    denull(&mut m);
    let raw_artifacts = m.remove("artifacts").unwrap_or(Value::Array(vec![]));
    let mut artifacts = Vec::new();
    for a in raw_artifacts.as_array().into_iter().flatten() {
        if let Ok(inline) = serde_json::from_value::<Artifact>(a.clone()) {
            artifacts.push(ArtifactRef::Inline(inline));
        } else if let Some(id) = a
            .get("itemId")
            .or_else(|| a.get("id"))
            .and_then(Value::as_str)
        {
            artifacts.push(ArtifactRef::Item(id.to_string()));
        }
        // Other artifact kinds (`local`, `link`) are not produced by cliptune; skipped.
    }
    let base = take_base_model_id(&mut m);
    for key in ["labels", "tags"] {
        if !m.get(key).is_some_and(Value::is_array) {
            m.insert(key.into(), Value::Array(vec![]));
        }
    }
    if !m.get("configuration").is_some_and(Value::is_object) {
        m.insert("configuration".into(), Value::Object(Map::new()));
    }
    fix_time(&mut m, "createdAt");
    fix_time(&mut m, "updatedAt");
    let mut model: Model = decode(m, "model")?;
    model.base_model_id = base;
    Ok(WireModel { model, artifacts })
}

/// Reads and removes cliptune's base-model marker (also accepting a top-level `baseModelId`).
fn take_base_model_id(m: &mut Map<String, Value>) -> Option<Id> {
    let top = m
        .remove("baseModelId")
        .and_then(|v| v.as_str().map(String::from));
    let meta = m.get_mut("metadata").and_then(Value::as_object_mut);
    let mut nested = None;
    if let Some(meta) = meta {
        if let Some(Value::Object(ct)) = meta.get_mut(CLIPTUNE_KEY) {
            nested = ct
                .remove(BASE_MODEL_KEY)
                .and_then(|v| v.as_str().map(String::from));
            if ct.is_empty() {
                meta.remove(CLIPTUNE_KEY);
            }
        }
    }
    nested.or(top)
}

/// `metadata` to send for a model: the user's metadata plus cliptune's base-model marker.
pub(crate) fn model_metadata_out(metadata: &Value, base_model_id: Option<&str>) -> Value {
    let mut meta = match metadata {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    if let Some(base) = base_model_id {
        let ct = meta
            .entry(CLIPTUNE_KEY)
            .or_insert_with(|| Value::Object(Map::new()));
        if !ct.is_object() {
            *ct = Value::Object(Map::new());
        }
        if let Some(ct) = ct.as_object_mut() {
            ct.insert(BASE_MODEL_KEY.into(), Value::String(base.to_string()));
        }
    }
    Value::Object(meta)
}

/// What turns `old` into `new`, as the nested patch dtlpy's `DictDiffer` sends: objects are
/// compared key by key, a changed or added member carries its new value, a removed one
/// `null`, and anything else (arrays, scalars, a change of type) is sent whole. `None` when
/// nothing differs.
pub(crate) fn diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = diff(ov, nv) {
                            out.insert(k.clone(), d);
                        }
                    }
                    None => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for (k, ov) in o {
                if !n.contains_key(k) && !ov.is_null() {
                    out.insert(k.clone(), Value::Null);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        _ => (old != new).then(|| new.clone()),
    }
}

pub(crate) fn metric(v: Value) -> Result<MetricSample> {
    let mut m = object(v, "metric sample")?;
    denull(&mut m);
    fix_time(&mut m, "createdAt");
    decode(m, "metric sample")
}

pub(crate) fn variable(v: Value, pipeline_id: &str) -> Result<Variable> {
    let mut m = object(v, "pipeline variable")?;
    denull(&mut m);
    m.entry("reference")
        .or_insert_with(|| Value::String(pipeline_id.to_string()));
    decode(m, "pipeline variable")
}

pub(crate) fn pipeline(v: Value) -> Result<Pipeline> {
    let mut m = object(v, "pipeline")?;
    denull(&mut m);
    let id = m
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_answer("pipeline", "no id"))?
        .to_string();
    let vars = match m.remove("variables") {
        Some(Value::Array(a)) => a,
        _ => vec![],
    };
    for key in ["nodes", "connections", "startNodes"] {
        if !m.get(key).is_some_and(Value::is_array) {
            m.insert(key.into(), Value::Array(vec![]));
        }
    }
    fix_time(&mut m, "createdAt");
    fix_time(&mut m, "updatedAt");
    let mut p: Pipeline = decode(m, "pipeline")?;
    p.variables = vars
        .into_iter()
        .map(|v| variable(v, &id))
        .collect::<Result<_>>()?;
    Ok(p)
}

/// Dataloop's execution statuses, including the progress endpoint's camelCase forms.
pub(crate) fn execution_status(s: &str) -> Option<ExecutionStatus> {
    ExecutionStatus::parse(s).or(match s {
        "inProgress" | "in_progress" => Some(ExecutionStatus::InProgress),
        "completed" | "complete" => Some(ExecutionStatus::Success),
        "systemFailure" | "system_failure" => Some(ExecutionStatus::SystemFailure),
        "cancelled" => Some(ExecutionStatus::Canceled),
        _ => None,
    })
}

fn status_entry(v: &Value, fallback_time: &str) -> Option<StatusEntry> {
    let status = execution_status(v.get("status")?.as_str()?)?;
    let percent = v
        .get("percentComplete")
        .and_then(|p| p.as_f64())
        .map(|p| p.clamp(0.0, 100.0).round() as u32)
        .unwrap_or(if status == ExecutionStatus::Success {
            100
        } else {
            0
        });
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    let message = text("message");
    // The progress endpoint has no error field: a failure's message is its error.
    let error = text("error").or_else(|| {
        matches!(
            status,
            ExecutionStatus::Failed | ExecutionStatus::SystemFailure
        )
        .then(|| message.clone())
        .flatten()
    });
    let timestamp = match v.get("timestamp").or_else(|| v.get("createdAt")) {
        Some(Value::String(s)) => s.clone(),
        Some(n) if n.is_number() => ms_rfc3339(n.as_f64().unwrap_or(0.0)),
        _ => fallback_time.to_string(),
    };
    Some(StatusEntry {
        status,
        percent_complete: percent,
        message,
        error,
        timestamp,
    })
}

pub(crate) fn execution(v: Value) -> Result<Execution> {
    let mut m = object(v, "execution")?;
    denull(&mut m);
    fix_time(&mut m, "createdAt");
    fix_time(&mut m, "updatedAt");
    let created = m
        .get("createdAt")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let latest = m
        .remove("latestStatus")
        .and_then(|l| status_entry(&l, &created))
        .or_else(|| {
            let s = m.get("status")?.as_str()?;
            status_entry(&serde_json::json!({"status": s}), &created)
        })
        .ok_or_else(|| bad_answer("execution", "no readable latestStatus or status"))?;
    let log: Vec<StatusEntry> = match m.remove("statusLog") {
        Some(Value::Array(a)) => a.iter().filter_map(|e| status_entry(e, &created)).collect(),
        _ => vec![],
    };
    m.insert(
        "status".into(),
        Value::String(latest.status.as_str().to_string()),
    );
    m.insert(
        "latestStatus".into(),
        serde_json::to_value(&latest).map_err(|e| bad_answer("execution", e))?,
    );
    m.insert(
        "statusLog".into(),
        serde_json::to_value(&log).map_err(|e| bad_answer("execution", e))?,
    );
    if m.get("pipeline").is_some_and(|p| p.get("id").is_none()) {
        m.remove("pipeline");
    }
    m.entry("functionName")
        .or_insert(Value::String(String::new()));
    decode(m, "execution")
}

pub(crate) fn feature_set(v: Value) -> Result<FeatureSet> {
    let mut m = object(v, "feature set")?;
    denull(&mut m);
    m.entry("type")
        .or_insert(Value::String("embeddings".into()));
    m.entry("entityType")
        .or_insert(Value::String("item".into()));
    fix_time(&mut m, "createdAt");
    decode(m, "feature set")
}

pub(crate) fn feature_vector(v: Value) -> Result<FeatureVector> {
    let mut m = object(v, "feature vector")?;
    denull(&mut m);
    m.entry("datasetId").or_insert(Value::String(String::new()));
    decode(m, "feature vector")
}

/// A list answer: a bare array, or a page `{items: [...]}`.
pub(crate) fn list(v: Value, what: &str) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Object(mut m) => match m.remove("items") {
            Some(Value::Array(a)) => Ok(a),
            _ => Err(bad_answer(what, "expected an array or a page with items")),
        },
        Value::Null => Ok(vec![]),
        other => Err(bad_answer(
            what,
            format!("expected an array, got {}", kind_of(&other)),
        )),
    }
}

/// A single entity that some endpoints wrap in an array (`POST /features/sets`).
pub(crate) fn first(v: Value, what: &str) -> Result<Value> {
    match v {
        Value::Array(a) => a
            .into_iter()
            .next()
            .ok_or_else(|| bad_answer(what, "empty array")),
        Value::Object(_) => Ok(v),
        other => Err(bad_answer(
            what,
            format!("expected an object, got {}", kind_of(&other)),
        )),
    }
}

/// One page of a DQL query answer.
pub(crate) struct Page {
    pub items: Vec<Value>,
    pub total: u64,
    pub has_next: bool,
}

pub(crate) fn page(v: Value, page: u32, page_size: u32, what: &str) -> Result<Page> {
    let mut m = object(v, what)?;
    let items = match m.remove("items") {
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => vec![],
        Some(other) => {
            return Err(bad_answer(
                what,
                format!("items is {}, not an array", kind_of(&other)),
            ))
        }
    };
    let total = m
        .get("totalItemsCount")
        .and_then(Value::as_u64)
        .unwrap_or(items.len() as u64);
    let has_next = m
        .get("hasNextPage")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| (u64::from(page) + 1) * u64::from(page_size) < total);
    Ok(Page {
        items,
        total,
        has_next,
    })
}

/// Percent-encodes one URL path segment (ids and names come from callers).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- time ----

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Epoch milliseconds (Dataloop's numeric timestamps) as RFC 3339.
fn ms_rfc3339(ms: f64) -> String {
    let ms = ms as i64;
    crate::util::rfc3339(ms.div_euclid(1000), ms.rem_euclid(1000) as u32)
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as seconds since the epoch.
pub(crate) fn parse_http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u32 = parts[1].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[2])? as u32 + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u32> = parts[4]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || day == 0 || day > 31 || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hms[0] * 3600 + hms[1] * 60 + hms[2]);
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calendar_round_trips() {
        assert_eq!(ms_rfc3339(951_782_400_250.0), "2000-02-29T00:00:00.250Z");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(days_from_civil(2000, 2, 29) * 86_400, 951_782_400);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
    }

    #[test]
    fn items_fill_missing_fields() {
        let it = item(json!({"id": "a", "datasetId": "d", "filename": "x/y.jpg",
            "description": null, "metadata": {"system": {"mimetype": "image/jpeg"}}}))
        .unwrap();
        assert_eq!(it.filename, "/x/y.jpg");
        assert_eq!(it.dir, "/x");
        assert_eq!(it.name, "y.jpg");
        assert_eq!(it.kind(), ItemKind::Image);
        assert!(item(json!({"id": "a"})).is_err());
    }

    #[test]
    fn model_artifacts_both_forms_and_base_marker() {
        let w = model(
            json!({"id": "m", "name": "n", "status": "trained", "labels": null,
            "artifacts": [{"type": "item", "itemId": "i1"},
                          {"path": "a.bin", "size": 3, "sha256": "00"},
                          {"type": "link", "url": "http://x"}],
            "metadata": {"system": {}, "cliptune": {"baseModelId": "b"}}}),
        )
        .unwrap();
        assert_eq!(w.artifacts.len(), 2);
        assert_eq!(w.artifacts[0], ArtifactRef::Item("i1".into()));
        assert_eq!(w.model.base_model_id.as_deref(), Some("b"));
        assert_eq!(w.model.metadata, json!({"system": {}}));
        let out = model_metadata_out(&w.model.metadata, Some("b"));
        assert_eq!(out["cliptune"]["baseModelId"], "b");
    }

    #[test]
    fn diffs_are_nested_and_minimal() {
        let old = json!({"description": "a", "hidden": false, "metadata": {
            "system": {"mimetype": "image/png", "size": 3, "tags": {"train": true}},
            "user": {"k": 1, "list": [1, 2], "gone": "x"}}});
        assert_eq!(diff(&old, &old), None);
        let mut new = old.clone();
        new["metadata"]["user"]["k"] = json!(2);
        new["metadata"]["user"]["list"] = json!([1]);
        new["metadata"]["user"]
            .as_object_mut()
            .unwrap()
            .remove("gone");
        new["metadata"]["user"]["added"] = json!({"x": 1});
        assert_eq!(
            diff(&old, &new),
            Some(
                json!({"metadata": {"user": {"k": 2, "list": [1], "gone": null, "added": {"x": 1}}}})
            )
        );
        let mut tagged = old.clone();
        tagged["metadata"]["system"]["tags"]["validation"] = json!(true);
        tagged["hidden"] = json!(true);
        assert_eq!(
            diff(&old, &tagged),
            Some(json!({"hidden": true, "metadata": {"system": {"tags": {"validation": true}}}}))
        );
        assert_eq!(diff(&json!(null), &json!({"a": 1})), Some(json!({"a": 1})));
    }

    #[test]
    fn executions_accept_progress_forms() {
        let e = execution(
            json!({"id": "e", "functionName": "train", "createdAt": "t0",
            "latestStatus": {"status": "failed", "percentComplete": 40.0, "message": "boom"},
            "statusLog": [{"status": "created", "timestamp": 0}, {"status": "inProgress"}]}),
        )
        .unwrap();
        assert_eq!(e.status, ExecutionStatus::Failed);
        assert_eq!(e.latest_status.error.as_deref(), Some("boom"));
        assert_eq!(e.latest_status.percent_complete, 40);
        assert_eq!(e.status_log.len(), 2);
        assert_eq!(e.status_log[0].timestamp, "1970-01-01T00:00:00.000Z");
        assert_eq!(e.status_log[1].status, ExecutionStatus::InProgress);
    }

    #[test]
    fn pages_and_lists() {
        let p = page(json!({"items": [1, 2], "totalItemsCount": 5}), 0, 2, "x").unwrap();
        assert!(p.has_next);
        let p = page(json!({"items": [1], "totalItemsCount": 5}), 2, 2, "x").unwrap();
        assert!(!p.has_next);
        assert_eq!(first(json!([{"id": 1}]), "fs").unwrap(), json!({"id": 1}));
        assert!(first(json!([]), "fs").is_err());
        assert_eq!(list(json!({"items": [1]}), "x").unwrap(), vec![json!(1)]);
        assert_eq!(seg("a b/../c"), "a%20b%2F..%2Fc");
    }
}
