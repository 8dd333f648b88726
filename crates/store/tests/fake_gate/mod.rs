//! A fake Dataloop gate: an axum server on 127.0.0.1:0 inside the test process.
//!
//! It keeps every entity in memory and ENFORCES the request shapes of
//! `docs/dataloop-platform.md` (paths, methods, the bearer token, body fields and their
//! types): anything else is answered 400 (bad body) or 404 (unknown route), so a backend
//! that drifts from the documented API fails its tests. Failures, delays, token expiry and
//! clone latency can be injected to exercise retries and polling.

#![allow(dead_code, clippy::result_large_err)]

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use cliptune_store::dql::Filter;
use cliptune_store::{DataloopAuth, DataloopConfig};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const BOT_USER: &str = "bot@cliptune.test";
pub const BOT_PASSWORD: &str = "s3cret";

/// One request as the gate saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub auth: Option<String>,
    pub body: Value,
}

#[derive(Debug, Clone)]
struct Injected {
    method: String,
    path_contains: String,
    status: u16,
    retry_after: Option<String>,
    delay: Duration,
    remaining: u32,
}

pub struct GateState {
    next: u64,
    pub project_id: String,
    pub api_key: String,
    /// Lifetime of issued JWTs.
    pub token_ttl: u64,
    jwts: HashMap<String, u64>,
    refresh_tokens: HashSet<String>,
    pub logins: u32,
    pub refreshes: u32,
    pub calls: Vec<Call>,
    injected: Vec<Injected>,
    /// GETs of a fresh clone that still answer `cloning`.
    pub clone_polls: u32,
    cloning: HashMap<String, (u32, String)>,
    pub binaries_id: String,
    pub service_id: String,
    datasets: BTreeMap<String, Value>,
    items: BTreeMap<String, Value>,
    blobs: HashMap<String, (Vec<u8>, String)>,
    annotations: BTreeMap<String, Vec<Value>>,
    models: BTreeMap<String, Value>,
    metrics: Vec<Value>,
    pipelines: BTreeMap<String, Value>,
    pipeline_runs: BTreeMap<String, Value>,
    executions: BTreeMap<String, Value>,
    services: BTreeMap<String, Value>,
    feature_sets: BTreeMap<String, Value>,
    vectors: BTreeMap<String, Value>,
    base: String,
}

type Shared = Arc<Mutex<GateState>>;

pub struct FakeGate {
    /// REST base, `http://127.0.0.1:<port>/api/v1`.
    pub url: String,
    pub state: Shared,
    pub project_id: String,
    pub api_key: String,
    pub service_id: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now() -> String {
    cliptune_store::now_rfc3339()
}

impl GateState {
    fn id(&mut self) -> String {
        self.next += 1;
        format!("fa4e{:020x}", self.next)
    }

    fn jwt(&mut self) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let exp = now_secs() + self.token_ttl;
        let n = self.id();
        let t = format!(
            "{}.{}.fake",
            e.encode(br#"{"alg":"none","typ":"JWT"}"#),
            e.encode(json!({"exp": exp, "sub": BOT_USER, "jti": n}).to_string())
        );
        self.jwts.insert(t.clone(), exp);
        t
    }
}

impl FakeGate {
    pub async fn start() -> FakeGate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}/api/v1");
        let mut st = GateState {
            next: 0,
            project_id: String::new(),
            api_key: "fake-api-key-0123".into(),
            token_ttl: 3600,
            jwts: HashMap::new(),
            refresh_tokens: HashSet::new(),
            logins: 0,
            refreshes: 0,
            calls: Vec::new(),
            injected: Vec::new(),
            clone_polls: 0,
            cloning: HashMap::new(),
            binaries_id: String::new(),
            service_id: String::new(),
            datasets: BTreeMap::new(),
            items: BTreeMap::new(),
            blobs: HashMap::new(),
            annotations: BTreeMap::new(),
            models: BTreeMap::new(),
            metrics: Vec::new(),
            pipelines: BTreeMap::new(),
            pipeline_runs: BTreeMap::new(),
            executions: BTreeMap::new(),
            services: BTreeMap::new(),
            feature_sets: BTreeMap::new(),
            vectors: BTreeMap::new(),
            base: base.clone(),
        };
        st.project_id = st.id();
        let bin = st.id();
        st.binaries_id = bin.clone();
        let pid = st.project_id.clone();
        st.datasets.insert(
            bin.clone(),
            json!({"id": bin, "name": "Binaries", "projects": [pid], "metadata": {"system": {"scope": "system"}},
                   "createdAt": now(), "system": true}),
        );
        let svc = st.id();
        st.service_id = svc.clone();
        st.services.insert(
            svc.clone(),
            json!({"id": svc, "name": "cliptune", "projectId": pid}),
        );
        let (project_id, api_key, service_id) = (
            st.project_id.clone(),
            st.api_key.clone(),
            st.service_id.clone(),
        );
        let state = Arc::new(Mutex::new(st));
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(256 << 20))
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeGate {
            url: base,
            state,
            project_id,
            api_key,
            service_id,
        }
    }

    fn config(&self, auth: DataloopAuth) -> DataloopConfig {
        let mut c = DataloopConfig::new(self.project_id.clone(), auth);
        c.gate_url = self.url.clone();
        c.request_timeout = Duration::from_secs(10);
        c.connect_timeout = Duration::from_secs(2);
        c.transfer_timeout = Duration::from_secs(30);
        c.max_retries = 3;
        c.backoff_initial = Duration::from_millis(5);
        c.backoff_max = Duration::from_millis(40);
        c.retry_after_max = Duration::from_secs(5);
        c.poll_interval = Duration::from_millis(5);
        c.clone_timeout = Duration::from_secs(10);
        c.service_id = Some(self.service_id.clone());
        c
    }

    /// API-key auth, fast retries.
    pub fn api_key_config(&self) -> DataloopConfig {
        self.config(DataloopAuth::ApiKey(self.api_key.clone()))
    }

    /// Bot login, fast retries.
    pub fn bot_config(&self) -> DataloopConfig {
        self.config(DataloopAuth::Bot {
            username: BOT_USER.into(),
            password: BOT_PASSWORD.into(),
        })
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut GateState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// The next `times` requests whose path contains `path_contains` answer `status`.
    pub fn fail(
        &self,
        method: &str,
        path_contains: &str,
        status: u16,
        times: u32,
        retry_after: Option<&str>,
    ) {
        self.with(|s| {
            s.injected.push(Injected {
                method: method.into(),
                path_contains: path_contains.into(),
                status,
                retry_after: retry_after.map(String::from),
                delay: Duration::ZERO,
                remaining: times,
            })
        });
    }

    /// The next `times` matching requests are answered normally, but only after `delay`.
    pub fn delay(&self, method: &str, path_contains: &str, delay: Duration, times: u32) {
        self.with(|s| {
            s.injected.push(Injected {
                method: method.into(),
                path_contains: path_contains.into(),
                status: 0,
                retry_after: None,
                delay,
                remaining: times,
            })
        });
    }

    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }

    pub fn calls_to(&self, method: &str, path_contains: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method && c.path.contains(path_contains))
            .collect()
    }

    /// Forgets every issued JWT (as after a gate-side revocation).
    pub fn revoke_tokens(&self) {
        self.with(|s| s.jwts.clear());
    }

    pub fn revoke_refresh_tokens(&self) {
        self.with(|s| s.refresh_tokens.clear());
    }

    /// Adds a Model with one artifact item, as a pre-trained base model would be.
    pub fn seed_model(&self, name: &str, status: &str, configuration: Value) -> String {
        self.with(|s| {
            let item_id = s.id();
            let bin = s.binaries_id.clone();
            let filename = format!("/artifacts/models/{name}/weights.bin");
            let bytes = b"base weights".to_vec();
            s.items.insert(
                item_id.clone(),
                json!({"id": item_id, "datasetId": bin, "filename": filename, "name": "weights.bin",
                       "dir": format!("/artifacts/models/{name}"), "type": "file", "hidden": false,
                       "metadata": {"system": {"mimetype": "application/octet-stream", "size": bytes.len()}},
                       "annotationsCount": 0, "createdAt": now(), "updatedAt": now()}),
            );
            s.blobs
                .insert(item_id.clone(), (bytes, "application/octet-stream".into()));
            let id = s.id();
            let pid = s.project_id.clone();
            s.models.insert(
                id.clone(),
                json!({"id": id, "name": name, "status": status, "configuration": configuration,
                       "projectId": pid, "context": {"project": pid}, "datasetId": null,
                       "artifacts": [{"type": "item", "itemId": item_id}],
                       "metadata": {"system": {}}, "labels": [], "tags": [], "description": null,
                       "packageId": "fa4e00000000000000000999", "moduleName": "clip-module",
                       "outputType": "embedding", "inputType": "image",
                       "createdAt": now(), "updatedAt": now()}),
            );
            id
        })
    }

    pub fn model_json(&self, id: &str) -> Value {
        self.with(|s| s.models[id].clone())
    }

    pub fn vector_count(&self) -> usize {
        self.with(|s| s.vectors.len())
    }
}

// ---------------------------------------------------------------------------------------------
// request plumbing

enum ReqBody {
    Json(Value),
    Multipart(Vec<MPart>),
}

struct MPart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    bytes: Vec<u8>,
}

fn err(status: u16, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"status": status, "message": msg})),
    )
        .into_response()
}

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

type R = Result<Response, Response>;

fn bad(msg: impl Into<String>) -> Response {
    err(400, msg)
}

async fn handle(AxState(state): AxState<Shared>, req: Request) -> Response {
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
        let bytes = match axum::body::to_bytes(req.into_body(), 256 << 20).await {
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
    let delay = {
        let mut st = state.lock().unwrap();
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
                    return resp;
                }
                f.delay
            }
            None => Duration::ZERO,
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

    if method == Method::POST && segs == ["token"] {
        let mut st = state.lock().unwrap();
        return token(&mut st, &query, body).unwrap_or_else(|e| e);
    }
    let Some(rest) = segs.strip_prefix(&["api", "v1"]) else {
        return err(404, format!("fake gate: no route {method} {path}"));
    };
    let mut st = state.lock().unwrap();
    // Every REST call carries a valid bearer token.
    let bearer = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
    let authorized = match bearer {
        Some(t) if t == st.api_key => true,
        Some(t) => st.jwts.get(t).is_some_and(|exp| *exp > now_secs()),
        None => false,
    };
    if !authorized {
        return err(401, "missing, unknown or expired bearer token");
    }
    route(&mut st, &method, rest, &query, body, &headers).unwrap_or_else(|e| e)
}

// ---------------------------------------------------------------------------------------------
// shape checks

fn json_body(body: ReqBody) -> Result<Value, Response> {
    match body {
        ReqBody::Json(v) => Ok(v),
        ReqBody::Multipart(_) => Err(bad("multipart body where JSON is expected")),
    }
}

fn no_body(body: &ReqBody) -> Result<(), Response> {
    match body {
        ReqBody::Json(Value::Null) => Ok(()),
        _ => Err(bad("this request takes no body")),
    }
}

/// The body as an object with only `allowed` keys and all `required` ones present.
fn shape(
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

fn str_field<'a>(m: &'a Map<String, Value>, k: &str, what: &str) -> Result<&'a str, Response> {
    m.get(k)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{what}: {k:?} must be a string")))
}

fn nonempty_str<'a>(m: &'a Map<String, Value>, k: &str, what: &str) -> Result<&'a str, Response> {
    let s = str_field(m, k, what)?;
    if s.trim().is_empty() {
        return Err(bad(format!("{what}: {k:?} is empty")));
    }
    Ok(s)
}

fn opt_obj(m: &Map<String, Value>, k: &str, what: &str) -> Result<(), Response> {
    match m.get(k) {
        None | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(bad(format!("{what}: {k:?} must be an object"))),
    }
}

fn check_project(
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

/// A DQL body: `{filter, resource, page, pageSize}` plus optional `sort`, `context`,
/// `systemSpace` and (items only) `join`.
struct Dql {
    filter: Value,
    page: usize,
    page_size: usize,
    sort: Option<(String, bool)>,
    join: Option<Value>,
    system_space: bool,
}

fn dql(
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

fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

/// DQL over non-item resources: `$and`, `$or`, equality, `$eq`, `$ne`, `$in`, `$nin`,
/// `$exists` on dotted paths. Other operators are refused, as the real gate would.
fn simple_match(filter: &Value, obj: &Value) -> Result<bool, String> {
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

fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
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
fn paginate(mut rows: Vec<Value>, q: &Dql) -> Value {
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

fn filter_rows<'a>(
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

// ---------------------------------------------------------------------------------------------
// routes

fn token(st: &mut GateState, query: &str, body: ReqBody) -> R {
    if query != "default" {
        return Err(bad("token endpoint is /token?default"));
    }
    let v = json_body(body)?;
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "user_credentials" => {
            let m = shape(
                &v,
                "login",
                &["username", "password", "type"],
                &["username", "password", "type"],
            )?;
            if m["username"] != json!(BOT_USER) || m["password"] != json!(BOT_PASSWORD) {
                return Err(err(401, "wrong username or password"));
            }
            st.logins += 1;
            let jwt = st.jwt();
            let refresh = format!("refresh-{}", st.id());
            st.refresh_tokens.insert(refresh.clone());
            Ok(ok(
                json!({"id_token": jwt, "refresh_token": refresh, "token_type": "Bearer"}),
            ))
        }
        "refresh_token" => {
            let m = shape(
                &v,
                "refresh",
                &["type", "refresh_token"],
                &["type", "refresh_token"],
            )?;
            let r = str_field(&m, "refresh_token", "refresh")?;
            if !st.refresh_tokens.contains(r) {
                return Err(err(401, "unknown refresh token"));
            }
            st.refreshes += 1;
            Ok(ok(json!({"id_token": st.jwt()})))
        }
        _ => Err(bad(
            "token request: type must be user_credentials or refresh_token",
        )),
    }
}

fn route(
    st: &mut GateState,
    method: &Method,
    segs: &[&str],
    query: &str,
    body: ReqBody,
    _h: &HeaderMap,
) -> R {
    let m = method.as_str();
    match (m, segs) {
        ("POST", ["datasets"]) => create_dataset(st, json_body(body)?),
        ("POST", ["datasets", "query"]) => query_datasets(st, json_body(body)?),
        ("GET", ["datasets", id]) => {
            no_body(&body)?;
            dataset_json(st, id).map(ok)
        }
        ("POST", ["datasets", id, "query"]) => query_items(st, id, json_body(body)?),
        ("POST", ["datasets", id, "items"]) => upload(st, id, query, body),
        ("GET", ["items", id]) => {
            no_body(&body)?;
            st.items
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "item not found"))
        }
        ("PATCH", ["items", id]) => patch_item(st, id, query, json_body(body)?),
        ("DELETE", ["items", id]) => {
            no_body(&body)?;
            st.items
                .remove(*id)
                .ok_or_else(|| err(404, "item not found"))?;
            st.blobs.remove(*id);
            Ok(ok(json!({})))
        }
        ("GET", ["items", id, "stream"]) => {
            no_body(&body)?;
            let (bytes, mime) = st
                .blobs
                .get(*id)
                .cloned()
                .ok_or_else(|| err(404, "item not found"))?;
            Ok(([(header::CONTENT_TYPE, mime)], Body::from(bytes)).into_response())
        }
        ("GET", ["items", id, "annotations"]) => {
            no_body(&body)?;
            if !st.items.contains_key(*id) {
                return Err(err(404, "item not found"));
            }
            Ok(ok(Value::Array(
                st.annotations.get(*id).cloned().unwrap_or_default(),
            )))
        }
        ("POST", ["items", id, "annotations"]) => add_annotations(st, id, json_body(body)?),
        ("POST", ["ml", "models"]) => create_model(st, json_body(body)?),
        ("POST", ["ml", "models", "query"]) => {
            let q = dql(st, json_body(body)?, "models", false, false)?;
            let rows = filter_rows(st.models.values(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }
        ("GET", ["ml", "models", id]) => {
            no_body(&body)?;
            get_model(st, id).map(ok)
        }
        ("PATCH", ["ml", "models", id]) => patch_model(st, id, query, json_body(body)?),
        ("POST", ["ml", "models", id, "clone"]) => clone_model(st, id, json_body(body)?),
        ("POST", ["ml", "metrics", "publish"]) => publish(st, json_body(body)?),
        ("POST", ["ml", "metrics", "query"]) => {
            let q = dql(st, json_body(body)?, "metrics", false, false)?;
            let rows = filter_rows(st.metrics.iter(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }
        ("POST", ["pipelines"]) => create_pipeline(st, json_body(body)?),
        ("POST", ["pipelines", "query"]) => {
            let q = dql(st, json_body(body)?, "pipeline", false, false)?;
            let rows = filter_rows(st.pipelines.values(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }
        ("GET", ["pipelines", id]) => {
            no_body(&body)?;
            st.pipelines
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "pipeline not found"))
        }
        ("PATCH", ["pipelines", id, "variables"]) => patch_variables(st, id, json_body(body)?),
        ("POST", ["pipelines", id, "execute"]) => execute_pipeline(st, id, json_body(body)?),
        ("POST", ["executions", id, "progress"]) => progress(st, id, json_body(body)?),
        ("POST", ["executions", service]) => create_execution(st, service, json_body(body)?),
        ("GET", ["executions", id]) => {
            no_body(&body)?;
            st.executions
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "execution not found"))
        }
        ("POST", ["query", "faas"]) => {
            let v = json_body(body)?;
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
            let rows = filter_rows(rows.iter(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }
        ("POST", ["features", "sets"]) => create_feature_set(st, json_body(body)?),
        ("POST", ["features", "sets", "query"]) => {
            let q = dql(st, json_body(body)?, "feature_sets", false, true)?;
            let rows = filter_rows(st.feature_sets.values(), &q.filter)?;
            Ok(ok(paginate(rows, &q)))
        }
        ("GET", ["features", "sets", id]) => {
            no_body(&body)?;
            st.feature_sets
                .get(*id)
                .cloned()
                .map(ok)
                .ok_or_else(|| err(404, "feature set not found"))
        }
        ("POST", ["features", "vectors"]) => create_vectors(st, json_body(body)?),
        ("POST", ["features", "vectors", "query"]) => query_vectors(st, json_body(body)?),
        ("DELETE", ["features", "vectors", id]) => {
            no_body(&body)?;
            st.vectors
                .remove(*id)
                .ok_or_else(|| err(404, "feature vector not found"))?;
            Ok(ok(json!({})))
        }
        _ => Err(err(
            404,
            format!("fake gate: no route {m} /api/v1/{}", segs.join("/")),
        )),
    }
}

// ---- datasets and items ----

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
    let m = shape(
        &v,
        "create dataset",
        &["name", "projects"],
        &["name", "projects"],
    )?;
    let name = nonempty_str(&m, "name", "create dataset")?.to_string();
    if m["projects"] != json!([st.project_id]) {
        return Err(bad("create dataset: projects must be [<project id>]"));
    }
    if st.datasets.values().any(|d| d["name"] == json!(name)) {
        return Err(err(409, format!("dataset {name:?} already exists")));
    }
    let id = st.id();
    let pid = st.project_id.clone();
    st.datasets.insert(
        id.clone(),
        json!({"id": id, "name": name, "projects": [pid], "metadata": {}, "createdAt": now(), "updatedAt": now()}),
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

fn merge(dst: &mut Value, src: &Value) {
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

fn euclid(a: &[f64], v: &Value) -> f64 {
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

fn euclid_join(
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

// ---- models ----

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
    for k in ["datasetId", "configuration", "description"] {
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

// ---- pipelines ----

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

fn create_pipeline(st: &mut GateState, v: Value) -> R {
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

// ---- executions ----

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

// ---- feature sets and vectors ----

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
