//! Request plumbing: body parsing, recording, injected faults, authentication and the
//! dispatch to each entity's routes.

use crate::{auth, control, executions, features, items, models, pipelines};
use crate::{now_secs, Call, GateState, Shared};
use axum::extract::{FromRequest, Multipart, Request, State as AxState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::time::Duration;

pub(crate) enum ReqBody {
    Json(Value),
    Multipart(Vec<MPart>),
}

pub(crate) struct MPart {
    pub(crate) name: String,
    pub(crate) file_name: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) bytes: Vec<u8>,
}

/// One request on its way to a route. Routes take the body only once they match, so the
/// next entity's routes can still look at the request.
pub(crate) struct Req {
    pub(crate) method: String,
    pub(crate) query: String,
    /// `X-Get-Jwt-Secret`, which only the agent proxy's `/get_jwt` reads.
    pub(crate) jwt_secret: Option<String>,
    body: Option<ReqBody>,
}

impl Req {
    pub(crate) fn body(&mut self) -> ReqBody {
        self.body.take().unwrap_or(ReqBody::Json(Value::Null))
    }

    pub(crate) fn json(&mut self) -> Result<Value, Response> {
        match self.body() {
            ReqBody::Json(v) => Ok(v),
            ReqBody::Multipart(_) => Err(bad("multipart body where JSON is expected")),
        }
    }

    pub(crate) fn no_body(&mut self) -> Result<(), Response> {
        match self.body() {
            ReqBody::Json(Value::Null) => Ok(()),
            _ => Err(bad("this request takes no body")),
        }
    }
}

pub(crate) fn err(status: u16, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"status": status, "message": msg})),
    )
        .into_response()
}

pub(crate) fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

pub(crate) type R = Result<Response, Response>;

pub(crate) fn bad(msg: impl Into<String>) -> Response {
    err(400, msg)
}

pub(crate) async fn handle(AxState(state): AxState<Shared>, req: Request) -> Response {
    let req = match control::handle(&state, req).await {
        Ok(resp) => return resp,
        Err(req) => req,
    };
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();

    let body = if ctype.starts_with("multipart/form-data") {
        let mut mp = match Multipart::from_request(req, &()).await {
            Ok(m) => m,
            Err(e) => return bad(format!("bad multipart body: {e}")),
        };
        let mut parts = Vec::new();
        loop {
            match mp.next_field().await {
                Ok(Some(f)) => {
                    let name = f.name().unwrap_or("").to_string();
                    let file_name = f.file_name().map(String::from);
                    let content_type = f.content_type().map(String::from);
                    match f.bytes().await {
                        Ok(b) => parts.push(MPart {
                            name,
                            file_name,
                            content_type,
                            bytes: b.to_vec(),
                        }),
                        Err(e) => return bad(format!("bad multipart field: {e}")),
                    }
                }
                Ok(None) => break,
                Err(e) => return bad(format!("bad multipart body: {e}")),
            }
        }
        ReqBody::Multipart(parts)
    } else {
        let bytes = match axum::body::to_bytes(req.into_body(), 1 << 30).await {
            Ok(b) => b,
            Err(e) => return bad(format!("unreadable body: {e}")),
        };
        if bytes.is_empty() {
            ReqBody::Json(Value::Null)
        } else {
            if !ctype.starts_with("application/json") {
                return bad(format!(
                    "body with content-type {ctype:?}, expected application/json"
                ));
            }
            match serde_json::from_slice(&bytes) {
                Ok(v) => ReqBody::Json(v),
                Err(e) => return bad(format!("body is not JSON: {e}")),
            }
        }
    };

    // Record, then apply injected faults.
    let (idx, delay) = {
        let mut st = state.lock().unwrap();
        let idx = st.calls.len();
        st.calls.push(Call {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            auth: auth.clone(),
            body: match &body {
                ReqBody::Json(v) => v.clone(),
                ReqBody::Multipart(parts) => Value::Array(
                    parts
                        .iter()
                        .map(|p| json!({"name": p.name, "fileName": p.file_name, "len": p.bytes.len(),
                                        "text": if p.file_name.is_none() { String::from_utf8_lossy(&p.bytes).to_string() } else { String::new() }}))
                        .collect(),
                ),
            },
            status: 0,
            unrecognised: false,
        });
        let hit = st.injected.iter_mut().find(|f| {
            f.remaining > 0 && f.method == method.as_str() && path.contains(&f.path_contains)
        });
        match hit {
            Some(f) => {
                f.remaining -= 1;
                if f.status != 0 {
                    let mut resp = err(f.status, format!("injected HTTP {}", f.status));
                    if let Some(ra) = &f.retry_after {
                        resp.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_str(ra).unwrap());
                    }
                    return finish(&mut st, idx, resp);
                }
                (idx, f.delay)
            }
            None => (idx, Duration::ZERO),
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(String::from)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let mut req = Req {
        method: method.to_string(),
        query,
        jwt_secret: headers
            .get("x-get-jwt-secret")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body: Some(body),
    };
    let mut st = state.lock().unwrap();
    let resp = if let Some(r) = auth::token_route(&mut st, &mut req, &segs)
        .or_else(|| auth::proxy_route(&mut st, &mut req, &segs))
    {
        r.unwrap_or_else(|e| e)
    } else if let Some(rest) = segs.strip_prefix(&["api", "v1"]) {
        // Every REST call carries a valid bearer token.
        let bearer = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
        let authorized = match bearer {
            Some(t) if t == st.api_key => true,
            Some(t) => st.jwts.get(t).is_some_and(|exp| *exp > now_secs()),
            None => false,
        };
        if !authorized {
            err(401, "missing, unknown or expired bearer token")
        } else {
            route(&mut st, &mut req, rest).unwrap_or_else(|| no_route(&mut st, idx))
        }
    } else {
        no_route(&mut st, idx)
    };
    finish(&mut st, idx, resp)
}

fn route(st: &mut GateState, req: &mut Req, segs: &[&str]) -> Option<Response> {
    let r = auth::route(st, req, segs)
        .or_else(|| items::route(st, req, segs))
        .or_else(|| models::route(st, req, segs))
        .or_else(|| pipelines::route(st, req, segs))
        .or_else(|| executions::route(st, req, segs))
        .or_else(|| features::route(st, req, segs))?;
    Some(r.unwrap_or_else(|e| e))
}

/// What the gate does not model: answered 404 as before, and flagged so a test can insist
/// that its client sent none.
fn no_route(st: &mut GateState, idx: usize) -> Response {
    let c = &mut st.calls[idx];
    c.unrecognised = true;
    let msg = format!("fake gate: no route {} {}", c.method, c.path);
    eprintln!(
        "cliptune-gate: UNRECOGNISED {} {}?{}",
        c.method, c.path, c.query
    );
    err(404, msg)
}

fn finish(st: &mut GateState, idx: usize, resp: Response) -> Response {
    let status = resp.status().as_u16();
    let c = &mut st.calls[idx];
    c.status = status;
    if st.log {
        let c = &st.calls[idx];
        eprintln!(
            "cliptune-gate: {} {} {}?{}",
            status, c.method, c.path, c.query
        );
    }
    resp
}
