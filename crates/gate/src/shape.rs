//! Shape checks shared by every entity: object fields, DQL bodies, filters and pages.

use crate::http::{bad, err};
use crate::GateState;
use axum::response::Response;
use serde_json::{json, Map, Value};

/// The body as an object with only `allowed` keys and all `required` ones present.
pub(crate) fn shape(
    v: &Value,
    what: &str,
    allowed: &[&str],
    required: &[&str],
) -> Result<Map<String, Value>, Response> {
    let m = v
        .as_object()
        .ok_or_else(|| bad(format!("{what}: expected a JSON object")))?;
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(bad(format!(
                "{what}: unexpected field {k:?} (allowed: {allowed:?})"
            )));
        }
    }
    for r in required {
        if !m.contains_key(*r) {
            return Err(bad(format!("{what}: missing field {r:?}")));
        }
    }
    Ok(m.clone())
}

pub(crate) fn str_field<'a>(
    m: &'a Map<String, Value>,
    k: &str,
    what: &str,
) -> Result<&'a str, Response> {
    m.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{what}: {k:?} must be a string")))
}

pub(crate) fn nonempty_str<'a>(
    m: &'a Map<String, Value>,
    k: &str,
    what: &str,
) -> Result<&'a str, Response> {
    let s = str_field(m, k, what)?;
    if s.trim().is_empty() {
        return Err(bad(format!("{what}: {k:?} is empty")));
    }
    Ok(s)
}

pub(crate) fn opt_obj(m: &Map<String, Value>, k: &str, what: &str) -> Result<(), Response> {
    match m.get(k) {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(bad(format!("{what}: {k:?} must be an object"))),
    }
}

pub(crate) fn check_project(
    st: &GateState,
    m: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<(), Response> {
    if str_field(m, key, what)? != st.project_id {
        return Err(err(
            403,
            format!("{what}: not a member of project {:?}", m[key]),
        ));
    }
    Ok(())
}

/// A DQL body: `{filter, resource, page, pageSize}` plus optional `sort`, `context`,
/// `systemSpace` and (items only) `join`.
pub(crate) struct Dql {
    pub(crate) filter: Value,
    pub(crate) page: usize,
    pub(crate) page_size: usize,
    pub(crate) sort: Option<(String, bool)>,
    pub(crate) join: Option<Value>,
    pub(crate) system_space: bool,
}

pub(crate) fn dql(
    st: &GateState,
    body: Value,
    resource: &str,
    allow_join: bool,
    need_context: bool,
) -> Result<Dql, Response> {
    let mut allowed = vec![
        "filter",
        "resource",
        "page",
        "pageSize",
        "sort",
        "context",
        "systemSpace",
    ];
    if allow_join {
        allowed.push("join");
    }
    let m = shape(
        &body,
        "DQL query",
        &allowed,
        &["filter", "resource", "page", "pageSize"],
    )?;
    if m["resource"] != json!(resource) {
        return Err(bad(format!(
            "DQL query: resource must be {resource:?}, got {}",
            m["resource"]
        )));
    }
    if !m["filter"].is_object() {
        return Err(bad("DQL query: filter must be an object"));
    }
    let page = m["page"]
        .as_u64()
        .ok_or_else(|| bad("DQL query: page must be a non-negative integer"))?
        as usize;
    let page_size = m["pageSize"]
        .as_u64()
        .filter(|p| (1..=1000).contains(p))
        .ok_or_else(|| bad("DQL query: pageSize must be an integer in 1..=1000"))?
        as usize;
    if need_context || m.contains_key("context") {
        let ctx = m
            .get("context")
            .ok_or_else(|| bad("DQL query: this resource needs context {projects: [...]}"))?;
        if ctx != &json!({"projects": [st.project_id]}) {
            return Err(bad(format!(
                "DQL query: context must be {{\"projects\": [project]}}, got {ctx}"
            )));
        }
    }
    let sort = match m.get("sort") {
        None => None,
        Some(Value::Object(s)) if s.len() == 1 => {
            let (k, v) = s.iter().next().unwrap();
            let asc = match v.as_str() {
                Some("ascending") => true,
                Some("descending") => false,
                _ => {
                    return Err(bad(
                        "DQL query: sort direction must be ascending or descending",
                    ))
                }
            };
            Some((k.clone(), asc))
        }
        Some(_) => return Err(bad("DQL query: sort must be {field: direction}")),
    };
    let system_space = match m.get("systemSpace") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("DQL query: systemSpace must be a boolean")),
    };
    Ok(Dql {
        filter: m["filter"].clone(),
        page,
        page_size,
        sort,
        join: m.get("join").cloned(),
        system_space,
    })
}

pub(crate) fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

/// DQL over non-item resources: `$and`, `$or`, equality, `$eq`, `$ne`, `$in`, `$nin`,
/// `$exists` on dotted paths. Other operators are refused, as the real gate would.
pub(crate) fn simple_match(filter: &Value, obj: &Value) -> Result<bool, String> {
    let m = filter.as_object().ok_or("a filter must be an object")?;
    for (k, v) in m {
        let hit = match k.as_str() {
            "$and" | "$or" => {
                let list = v.as_array().ok_or(format!("{k} takes an array"))?;
                let mut res = Vec::new();
                for f in list {
                    res.push(simple_match(f, obj)?);
                }
                if k == "$and" {
                    res.iter().all(|b| *b)
                } else {
                    res.iter().any(|b| *b)
                }
            }
            op if op.starts_with('$') => return Err(format!("unsupported operator {op}")),
            field => {
                let x = get_path(obj, field).filter(|x| !x.is_null());
                match v.as_object() {
                    Some(ops) if !ops.is_empty() && ops.keys().all(|o| o.starts_with('$')) => {
                        let mut all = true;
                        for (op, arg) in ops {
                            all &= match op.as_str() {
                                "$eq" => x == Some(arg),
                                "$ne" => x != Some(arg),
                                "$in" => arg
                                    .as_array()
                                    .ok_or("$in takes an array")?
                                    .iter()
                                    .any(|a| Some(a) == x),
                                "$nin" => !arg
                                    .as_array()
                                    .ok_or("$nin takes an array")?
                                    .iter()
                                    .any(|a| Some(a) == x),
                                "$exists" => {
                                    x.is_some() == arg.as_bool().ok_or("$exists takes a boolean")?
                                }
                                other => return Err(format!("unsupported operator {other}")),
                            };
                        }
                        all
                    }
                    _ => x == Some(v),
                }
            }
        };
        if !hit {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (None, Some(_)) => Less,
        (Some(_), None) => Greater,
        _ => Equal,
    }
}

/// Sorts (stable, ties by id = creation order) and cuts one page.
pub(crate) fn paginate(mut rows: Vec<Value>, q: &Dql) -> Value {
    if let Some((key, asc)) = &q.sort {
        rows.sort_by(|a, b| {
            let o = cmp_values(get_path(a, key), get_path(b, key))
                .then_with(|| cmp_values(a.get("id"), b.get("id")));
            if *asc {
                o
            } else {
                o.reverse()
            }
        });
    }
    let total = rows.len();
    let start = (q.page * q.page_size).min(total);
    let end = (start + q.page_size).min(total);
    json!({
        "items": rows[start..end].to_vec(),
        "totalItemsCount": total,
        "totalPagesCount": total.div_ceil(q.page_size),
        "hasNextPage": end < total,
    })
}

pub(crate) fn filter_rows<'a>(
    rows: impl Iterator<Item = &'a Value>,
    filter: &Value,
) -> Result<Vec<Value>, Response> {
    let mut out = Vec::new();
    for r in rows {
        if simple_match(filter, r).map_err(|e| bad(format!("DQL filter: {e}")))? {
            out.push(r.clone());
        }
    }
    Ok(out)
}

pub(crate) fn merge(dst: &mut Value, src: &Value) {
    match (dst.as_object_mut(), src.as_object()) {
        (Some(d), Some(s)) => {
            for (k, v) in s {
                match d.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *dst = src.clone(),
    }
}
