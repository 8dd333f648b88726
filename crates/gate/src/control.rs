//! `/_gate/...`: the test harness's side door (no bearer, never recorded as a call). It tells
//! a client where the gate is and who to log in as, seeds what the public API cannot create
//! (a base model with artifacts, a service), and reports what clients sent.

use crate::http::{bad, ok};
use crate::pipelines::create_pipeline;
use crate::shape::{nonempty_str, shape};
use crate::{Shared, BOT_PASSWORD, BOT_USER, PROJECT_NAME};
use axum::extract::Request;
use axum::response::Response;
use serde_json::{json, Value};

pub(crate) async fn handle(state: &Shared, req: Request) -> Result<Response, Request> {
    let path = req.uri().path().to_string();
    let Some(what) = path.strip_prefix("/_gate/") else {
        return Err(req);
    };
    let what = what.to_string();
    let method = req.method().as_str().to_string();
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) if b.is_empty() => Value::Null,
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(v) => v,
            Err(e) => return Ok(bad(format!("_gate: body is not JSON: {e}"))),
        },
        Err(e) => return Ok(bad(format!("_gate: unreadable body: {e}"))),
    };
    let mut st = state.lock().unwrap();
    let r = match (method.as_str(), what.as_str()) {
        ("GET", "info") => Ok(ok(json!({
            "url": st.base, "host": st.host, "projectId": st.project_id,
            "projectName": PROJECT_NAME, "apiKey": st.api_key, "serviceId": st.service_id,
            "botUser": BOT_USER, "botPassword": BOT_PASSWORD,
            // The agent proxy's base (DATALOOP_AGENT_PROXY_URL); its secret stays with
            // whoever started the gate.
            "agentProxyUrl": st.host, "jwtSecretRequired": st.jwt_secret.is_some(),
            "proxyTokenTtl": st.proxy_token_ttl,
        }))),
        ("GET", "report") => {
            let calls: Vec<Value> = st
                .calls
                .iter()
                .map(|c| {
                    json!({"method": c.method, "path": c.path, "query": c.query,
                           "status": c.status, "unrecognised": c.unrecognised})
                })
                .collect();
            let unrecognised = st.calls.iter().filter(|c| c.unrecognised).count();
            let refused = st.calls.iter().filter(|c| c.status >= 400).count();
            Ok(ok(
                json!({"requests": calls.len(), "unrecognised": unrecognised,
                         "refused": refused, "calls": calls}),
            ))
        }
        ("POST", "models") => shape(
            &body,
            "_gate model",
            &["name", "status", "configuration", "artifactsDir"],
            &["name"],
        )
        .and_then(|m| {
            let name = nonempty_str(&m, "name", "_gate model")?.to_string();
            let status = m.get("status").and_then(Value::as_str).unwrap_or("trained");
            let config = m.get("configuration").cloned().unwrap_or(json!({}));
            let id = match m.get("artifactsDir") {
                // Real checkpoint files from a local folder (the gate runs beside its tests).
                Some(dir) => {
                    let dir = dir
                        .as_str()
                        .ok_or_else(|| bad("_gate model: artifactsDir must be a path"))?;
                    let files = crate::read_files(std::path::Path::new(dir))
                        .map_err(|e| bad(format!("_gate model: artifactsDir {dir}: {e}")))?;
                    st.seed_model_with(&name, status, config, files)
                }
                None => st.seed_model(&name, status, config),
            };
            Ok(ok(st.models[&id].clone()))
        }),
        ("POST", "pipelines") => {
            // The gate's own create, so seeded pipelines obey the same variable rules.
            let mut v = body;
            if let Some(o) = v.as_object_mut() {
                o.insert("projectId".into(), json!(st.project_id));
            }
            create_pipeline(&mut st, v)
        }
        ("POST", "services") => shape(&body, "_gate service", &["name"], &["name"]).and_then(|m| {
            let name = nonempty_str(&m, "name", "_gate service")?.to_string();
            let id = st.id();
            let svc = json!({"id": id, "name": name, "projectId": st.project_id});
            st.services.insert(id, svc.clone());
            Ok(ok(svc))
        }),
        _ => Err(crate::http::err(
            404,
            format!("_gate: no {method} /_gate/{what}"),
        )),
    };
    Ok(r.unwrap_or_else(|e| e))
}
