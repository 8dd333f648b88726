//! A fake Dataloop gate: an axum server on a loopback port, for tests.
//!
//! It keeps every entity in memory and ENFORCES the request shapes of
//! `docs/dataloop-platform.md` (paths, methods, the bearer token, body fields and their
//! types): anything else is answered 400 (bad body) or 404 (unknown route), so a client
//! that drifts from the documented API fails its tests. Failures, delays, token expiry and
//! clone latency can be injected to exercise retries and polling.
//!
//! It also plays the agent's local token proxy of a Dataloop pod (`GET /get_jwt` at its
//! host, `X-Get-Jwt-Secret` checked when [`GateState::jwt_secret`] is set).
//!
//! Two clients are held to it: cliptune's `DataloopBackend` (crates/store/tests, in process)
//! and the real `dtlpy` SDK (tests/dataloop, against the `cliptune-gate` binary). Requests no
//! route knows are counted ([`FakeGate::unrecognised`], `GET /_gate/report`) so a test can
//! prove the client stayed inside what the gate models.

#![allow(clippy::result_large_err)]

mod auth;
mod control;
mod executions;
mod features;
mod http;
mod items;
mod models;
mod pipelines;
mod shape;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use base64::Engine;
use cliptune_store::{DataloopAuth, DataloopConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const BOT_USER: &str = "bot@cliptune.test";
pub const BOT_PASSWORD: &str = "s3cret";
/// The account a token belongs to (dtlpy reads `email` from the JWT and `GET /users/me`).
pub const USER_ID: &str = "fa4e000000000000000f0001";
pub const PROJECT_NAME: &str = "cliptune-fake";
pub const ORG_ID: &str = "fa4e000000000000000f0002";

/// One request as the gate saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub auth: Option<String>,
    pub body: Value,
    /// The answer's HTTP status (0 while the request is being served).
    pub status: u16,
    /// No route matched: a request outside what the gate models.
    pub unrecognised: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Injected {
    pub(crate) method: String,
    pub(crate) path_contains: String,
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) delay: Duration,
    pub(crate) remaining: u32,
}

pub struct GateState {
    pub(crate) next: u64,
    pub project_id: String,
    pub api_key: String,
    /// Lifetime of issued JWTs.
    pub token_ttl: u64,
    /// `X-Get-Jwt-Secret` the agent proxy's `GET /get_jwt` requires (`None`: any request).
    pub jwt_secret: Option<String>,
    /// Lifetime of the agent proxy's JWTs; short ones make clients renew.
    pub proxy_token_ttl: u64,
    /// JWTs the agent proxy handed out.
    pub proxy_fetches: u32,
    pub(crate) jwts: HashMap<String, u64>,
    pub(crate) refresh_tokens: HashSet<String>,
    pub logins: u32,
    pub refreshes: u32,
    pub calls: Vec<Call>,
    pub(crate) injected: Vec<Injected>,
    /// GETs of a fresh clone that still answer `cloning`.
    pub clone_polls: u32,
    pub(crate) cloning: HashMap<String, (u32, String)>,
    pub binaries_id: String,
    pub service_id: String,
    pub(crate) datasets: BTreeMap<String, Value>,
    pub(crate) items: BTreeMap<String, Value>,
    pub(crate) blobs: HashMap<String, (Vec<u8>, String)>,
    pub(crate) annotations: BTreeMap<String, Vec<Value>>,
    pub(crate) models: BTreeMap<String, Value>,
    pub(crate) metrics: Vec<Value>,
    pub(crate) pipelines: BTreeMap<String, Value>,
    pub(crate) pipeline_runs: BTreeMap<String, Value>,
    pub(crate) executions: BTreeMap<String, Value>,
    pub(crate) services: BTreeMap<String, Value>,
    pub(crate) feature_sets: BTreeMap<String, Value>,
    pub(crate) vectors: BTreeMap<String, Value>,
    pub(crate) recipes: BTreeMap<String, Value>,
    pub(crate) ontologies: BTreeMap<String, Value>,
    pub(crate) base: String,
    /// `http://<addr>`: where `/token` is (dtlpy's `gate_url`).
    pub(crate) host: String,
    /// Print every request and its status on stderr (the binary).
    pub log: bool,
}

pub(crate) type Shared = Arc<Mutex<GateState>>;

pub struct FakeGate {
    /// REST base, `http://127.0.0.1:<port>/api/v1`.
    pub url: String,
    /// `http://127.0.0.1:<port>`: the token endpoint's host (dtlpy's `gate_url`).
    pub host: String,
    pub state: Shared,
    pub project_id: String,
    pub api_key: String,
    pub service_id: String,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn now() -> String {
    cliptune_store::now_rfc3339()
}

impl GateState {
    /// Adds a Model with one artifact item, as a pre-trained base model would be.
    pub fn seed_model(&mut self, name: &str, status: &str, configuration: Value) -> String {
        let files = vec![("weights.bin".to_string(), b"base weights".to_vec())];
        self.seed_model_with(name, status, configuration, files)
    }

    /// A model whose artifacts are `files` (path below the model's folder, bytes), stored as
    /// items of the Binaries dataset the way the platform keeps them.
    pub fn seed_model_with(
        &mut self,
        name: &str,
        status: &str,
        configuration: Value,
        files: Vec<(String, Vec<u8>)>,
    ) -> String {
        let mut artifacts = vec![];
        for (path, bytes) in files {
            let item_id = self.id();
            let bin = self.binaries_id.clone();
            let filename = format!("/artifacts/models/{name}/{path}");
            let (dir, base) = filename.rsplit_once('/').expect("has a slash");
            self.items.insert(
                item_id.clone(),
                json!({"id": item_id, "datasetId": bin, "filename": filename, "name": base,
                       "dir": dir, "type": "file", "hidden": false,
                       "metadata": {"system": {"mimetype": "application/octet-stream", "size": bytes.len()}},
                       "annotationsCount": 0, "createdAt": now(), "updatedAt": now()}),
            );
            self.blobs
                .insert(item_id.clone(), (bytes, "application/octet-stream".into()));
            artifacts.push(json!({"type": "item", "itemId": item_id}));
        }
        let id = self.id();
        let pid = self.project_id.clone();
        self.models.insert(
            id.clone(),
            json!({"id": id, "name": name, "status": status, "configuration": configuration,
                   "projectId": pid, "context": {"project": pid}, "datasetId": null,
                   "artifacts": artifacts,
                   "metadata": {"system": {}}, "labels": [], "tags": [], "description": null,
                   "packageId": "fa4e00000000000000000999", "moduleName": "clip-module",
                   "outputType": "embedding", "inputType": "image",
                   "createdAt": now(), "updatedAt": now()}),
        );
        id
    }

    pub(crate) fn id(&mut self) -> String {
        self.next += 1;
        format!("fa4e{:020x}", self.next)
    }

    pub(crate) fn jwt(&mut self) -> String {
        self.jwt_for(self.token_ttl)
    }

    pub(crate) fn jwt_for(&mut self, ttl: u64) -> String {
        let exp = now_secs() + ttl;
        let n = self.id();
        let t = unsigned_jwt(exp, &n);
        self.jwts.insert(t.clone(), exp);
        t
    }
}

/// A JWT with no signature. dtlpy decodes every token it holds (signature unchecked) for
/// `exp` (expiry 60 s ahead) and `email` (`dl.info()`), so the gate's API key has that form
/// too, as Dataloop's API keys do.
fn unsigned_jwt(exp: u64, jti: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.fake",
        e.encode(br#"{"alg":"none","typ":"JWT"}"#),
        e.encode(json!({"exp": exp, "sub": USER_ID, "email": BOT_USER, "jti": jti}).to_string())
    )
}

impl FakeGate {
    /// Serves on `127.0.0.1:0` from a task of the current tokio runtime.
    pub async fn start() -> FakeGate {
        Self::start_on("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    /// Serves on `addr` (port 0: any free one) from a task of the current tokio runtime.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeGate> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = format!("http://{addr}");
        let base = format!("{host}/api/v1");
        let mut st = GateState {
            next: 0,
            project_id: String::new(),
            // About ten years: long-lived, as an API key is.
            api_key: unsigned_jwt(now_secs() + 315_360_000, "api-key"),
            token_ttl: 3600,
            jwt_secret: None,
            proxy_token_ttl: 3600,
            proxy_fetches: 0,
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
            recipes: BTreeMap::new(),
            ontologies: BTreeMap::new(),
            base: base.clone(),
            host: host.clone(),
            log: false,
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
            .fallback(http::handle)
            // A ViT-B/32 checkpoint (about 600 MB) is one artifact upload.
            .layer(DefaultBodyLimit::max(1 << 30))
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Ok(FakeGate {
            url: base,
            host,
            state,
            project_id,
            api_key,
            service_id,
        })
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

    /// The agent proxy this gate serves at its host (`GET /get_jwt`), fast retries.
    pub fn proxy_config(&self, secret: Option<&str>) -> DataloopConfig {
        self.config(DataloopAuth::AgentProxy {
            proxy_url: self.host.clone(),
            secret: secret.map(String::from),
        })
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
        self.with(|s| s.seed_model(name, status, configuration))
    }

    pub fn model_json(&self, id: &str) -> Value {
        self.with(|s| s.models[id].clone())
    }

    pub fn vector_count(&self) -> usize {
        self.with(|s| s.vectors.len())
    }

    /// Requests no route matched, as `METHOD /path`.
    pub fn unrecognised(&self) -> Vec<String> {
        self.with(|s| {
            s.calls
                .iter()
                .filter(|c| c.unrecognised)
                .map(|c| format!("{} {}", c.method, c.path))
                .collect()
        })
    }
}

/// Every file under `dir` as (path relative to `dir`, bytes), sorted by path.
pub(crate) fn read_files(dir: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("below dir");
                out.push((rel.to_string_lossy().into_owned(), std::fs::read(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}
