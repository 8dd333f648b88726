//! FaaS: executions (create, get, progress), services and their `/query/faas` listing.

use crate::http::{bad, err, ok, Req, R};
use crate::shape::*;
use crate::{now, GateState};
use serde_json::{json, Value};

pub(crate) fn route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<R> {
    let r = match (req.method.as_str(), segs) {
        ("POST", ["executions", id, "progress"]) => req.json().and_then(|v| progress(st, id, v)),
        ("POST", ["executions", id, "rerun"]) => req.no_body().and_then(|_| rerun(st, id)),
        ("POST", ["executions", service]) => {
            req.json().and_then(|v| create_execution(st, service, v))
        }
        ("GET", ["executions", id]) => req.no_body().and_then(|_| {
            st.executions
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "execution not found"))
        }),
        ("POST", ["query", "faas"]) => req.json().and_then(|v| query_faas(st, v)),
        _ => return None,
    };
    Some(r)
}

fn query_faas(st: &mut GateState, v: Value) -> R {
    let resource = v
        .get("resource")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let rows: Vec<Value> = match resource.as_str() {
        "executions" => st.executions.values().cloned().collect(),
        "services" => st.services.values().cloned().collect(),
        other => return Err(bad(format!("query/faas: unknown resource {other:?}"))),
    };
    let q = dql(st, v, &resource, false, false)?;
    if q.page_size > FAAS_PAGE_SIZE {
        return Err(bad(format!(
            "query/faas: pageSize must be at most {FAAS_PAGE_SIZE}, got {}",
            q.page_size
        )));
    }
    let rows = filter_rows(rows.iter(), &q.filter)?;
    Ok(ok(paginate(rows, &q)))
}

/// FaaS listings (executions, services) serve at most this many per page.
const FAAS_PAGE_SIZE: usize = 100;

const EXEC_STATUSES: &[&str] = &[
    "created",
    "in-progress",
    "inProgress",
    "success",
    "completed",
    "failed",
    "aborted",
    "canceled",
    "rerun",
    "system-failure",
];

fn create_execution(st: &mut GateState, service: &str, v: Value) -> R {
    let what = "create execution";
    let svc = st
        .services
        .get(service)
        .cloned()
        .ok_or_else(|| err(404, "service not found"))?;
    let m = shape(
        &v,
        what,
        &["projectId", "functionName", "input", "pipeline"],
        &["projectId", "functionName"],
    )?;
    if let Some(p) = m.get("pipeline") {
        let pm = shape(
            p,
            "execution pipeline",
            &["id", "nodeId", "executionId"],
            &["id"],
        )?;
        for v in pm.values() {
            if !v.is_string() {
                return Err(bad("execution pipeline: ids must be strings"));
            }
        }
    }
    check_project(st, &m, "projectId", what)?;
    nonempty_str(&m, "functionName", what)?;
    opt_obj(&m, "input", what)?;
    let id = st.id();
    let t = now();
    let status = json!({"status": "created", "percentComplete": 0, "timestamp": t});
    let e = json!({"id": id, "projectId": st.project_id, "serviceId": service, "serviceName": svc["name"],
        "functionName": m["functionName"], "input": m.get("input").cloned().unwrap_or(json!({})),
        "output": null, "status": "created", "latestStatus": status, "statusLog": [status],
        "createdAt": t, "updatedAt": t});
    let mut e = e;
    if let Some(p) = m.get("pipeline") {
        e["pipeline"] = p.clone();
    }
    st.executions.insert(id, e.clone());
    Ok(ok(e))
}

fn progress(st: &mut GateState, id: &str, v: Value) -> R {
    let what = "execution progress";
    let e = st
        .executions
        .get_mut(id)
        .ok_or_else(|| err(404, "execution not found"))?;
    let m = shape(
        &v,
        what,
        &["status", "percentComplete", "message", "output"],
        &[],
    )?;
    let current = e["latestStatus"].clone();
    let cur_status = current["status"].as_str().unwrap_or("");
    if ["success", "failed", "aborted", "canceled", "system-failure"].contains(&cur_status) {
        return Err(bad(format!("execution {id} is already {cur_status}")));
    }
    let status = match m.get("status") {
        None => cur_status.to_string(),
        Some(s) => {
            let s = s
                .as_str()
                .filter(|s| EXEC_STATUSES.contains(s))
                .ok_or_else(|| bad(format!("{what}: unknown status {s}")))?;
            match s {
                "inProgress" => "in-progress",
                "completed" => "success",
                other => other,
            }
            .to_string()
        }
    };
    let percent = match m.get("percentComplete") {
        None => current["percentComplete"].clone(),
        Some(p) => {
            let p = p
                .as_u64()
                .filter(|p| *p <= 100)
                .ok_or_else(|| bad(format!("{what}: percentComplete must be 0..=100")))?;
            json!(p)
        }
    };
    let mut entry = json!({"status": status, "percentComplete": percent, "timestamp": now()});
    if let Some(msg) = m.get("message") {
        if !msg.is_string() {
            return Err(bad(format!("{what}: message must be a string")));
        }
        entry["message"] = msg.clone();
    }
    if let Some(o) = m.get("output") {
        e["output"] = o.clone();
    }
    e["status"] = json!(status);
    e["latestStatus"] = entry.clone();
    e["statusLog"].as_array_mut().unwrap().push(entry);
    e["updatedAt"] = json!(now());
    Ok(ok(e.clone()))
}

/// `POST /executions/{id}/rerun`: queues a started or ended execution again. One still
/// waiting (`created`, `rerun`) is refused: it would be queued twice.
fn rerun(st: &mut GateState, id: &str) -> R {
    let e = st
        .executions
        .get_mut(id)
        .ok_or_else(|| err(404, "execution not found"))?;
    let cur = e["latestStatus"]["status"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if cur == "created" || cur == "rerun" {
        return Err(bad(format!("execution {id} is {cur}: nothing to rerun")));
    }
    let entry = json!({"status": "rerun", "percentComplete": 0, "timestamp": now()});
    e["status"] = json!("rerun");
    e["latestStatus"] = entry.clone();
    e["statusLog"].as_array_mut().unwrap().push(entry);
    e["attempts"] = json!(e["attempts"].as_u64().unwrap_or(1) + 1);
    e["updatedAt"] = json!(now());
    Ok(ok(e.clone()))
}
