//! The HTTP side of the Dataloop backend: bearer tokens (API key, bot login with refresh, or
//! the agent proxy's JWT inside a Dataloop service),
//! bounded retries with backoff, timeouts, and the mapping of HTTP answers to [`StoreError`].

use super::config::{DataloopAuth, DataloopConfig};
use crate::error::{Result, StoreError};
use base64::Engine;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

/// A JWT counts as expired this long before its `exp`, so a request never leaves with a token
/// that dies in flight.
const EXPIRY_MARGIN_S: u64 = 60;

/// What a request is about, so a 404 names the missing entity.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub kind: &'static str,
    pub id: String,
}

impl Target {
    pub fn new(kind: &'static str, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }
}

pub(crate) enum Content {
    Bytes(Vec<u8>),
    /// Streamed from disk on every attempt, so large artifacts never sit in memory.
    File(PathBuf),
}

pub(crate) enum Body {
    Empty,
    Json(Value),
    Multipart {
        fields: Vec<(String, String)>,
        file_name: String,
        mime: String,
        content: Content,
    },
}

pub(crate) struct Req {
    pub method: Method,
    /// Below the REST base, starting with `/`; may carry a query string.
    pub path: String,
    pub body: Body,
    pub target: Target,
    /// Uses the transfer timeout instead of the request timeout.
    pub transfer: bool,
    /// Safe to resend after a timeout or a broken connection (GET, PATCH, DELETE, queries).
    pub idempotent: bool,
    /// Extra headers (the agent proxy's secret); never logged.
    pub headers: Vec<(&'static str, String)>,
}

impl Req {
    pub fn new(method: Method, path: impl Into<String>, target: Target) -> Self {
        let idempotent = method != Method::POST;
        Self {
            method,
            path: path.into(),
            body: Body::Empty,
            target,
            transfer: false,
            idempotent,
            headers: Vec::new(),
        }
    }
    pub fn get(path: impl Into<String>, target: Target) -> Self {
        Self::new(Method::GET, path, target)
    }
    pub fn post(path: impl Into<String>, body: Value, target: Target) -> Self {
        Self::new(Method::POST, path, target).json(body)
    }
    /// A POST that only reads (DQL queries): retried like a GET.
    pub fn query(path: impl Into<String>, body: Value, target: Target) -> Self {
        let mut r = Self::post(path, body, target);
        r.idempotent = true;
        r
    }
    pub fn patch(path: impl Into<String>, body: Value, target: Target) -> Self {
        Self::new(Method::PATCH, path, target).json(body)
    }
    pub fn delete(path: impl Into<String>, target: Target) -> Self {
        Self::new(Method::DELETE, path, target)
    }
    pub fn json(mut self, body: Value) -> Self {
        self.body = Body::Json(body);
        self
    }
}

#[derive(Default)]
struct Tokens {
    jwt: Option<String>,
    exp: Option<u64>,
    refresh: Option<String>,
}

pub(crate) struct Gate {
    http: reqwest::Client,
    base: String,
    token_url: String,
    /// `<agent proxy>/get_jwt` for [`DataloopAuth::AgentProxy`].
    proxy_jwt_url: Option<String>,
    auth: DataloopAuth,
    request_timeout: Duration,
    transfer_timeout: Duration,
    max_retries: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
    retry_after_max: Duration,
    tokens: tokio::sync::Mutex<Tokens>,
}

impl Gate {
    pub fn new(cfg: &DataloopConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("cliptune/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::invalid("Dataloop HTTP client", e.to_string()))?;
        let mut tokens = Tokens::default();
        if let DataloopAuth::Token {
            token,
            refresh_token,
        } = &cfg.auth
        {
            tokens.exp = jwt_exp(token);
            tokens.jwt = Some(token.clone());
            tokens.refresh = refresh_token.clone();
        }
        Ok(Self {
            http,
            base: cfg.base_url(),
            token_url: cfg.token_url(),
            proxy_jwt_url: cfg.proxy_jwt_url(),
            auth: cfg.auth.clone(),
            request_timeout: cfg.request_timeout,
            transfer_timeout: cfg.transfer_timeout,
            max_retries: cfg.max_retries,
            backoff_initial: cfg.backoff_initial,
            backoff_max: cfg.backoff_max,
            retry_after_max: cfg.retry_after_max,
            tokens: tokio::sync::Mutex::new(tokens),
        })
    }

    /// The JSON answer of `req` (`Null` for an empty body).
    pub async fn json(&self, req: Req) -> Result<Value> {
        let what = format!("{} {}", req.method, req.path);
        let resp = self.send(&req).await?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| StoreError::Unavailable(format!("{what}: reading the answer: {e}")))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| StoreError::Remote {
            status,
            message: format!("{what}: answer is not JSON ({e}): {}", snippet(&text)),
        })
    }

    /// The raw answer body of `req`.
    pub async fn bytes(&self, req: Req) -> Result<Vec<u8>> {
        let what = format!("{} {}", req.method, req.path);
        let resp = self.send(&req).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| StoreError::Unavailable(format!("{what}: reading the answer: {e}")))
    }

    /// Streams the answer body of `req` into `file`; returns the byte count.
    pub async fn download(
        &self,
        req: Req,
        file: &mut tokio::fs::File,
        path: &std::path::Path,
    ) -> Result<u64> {
        let what = format!("{} {}", req.method, req.path);
        let mut resp = self.send(&req).await?;
        let mut n = 0u64;
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| StoreError::Unavailable(format!("{what}: download broke off: {e}")))?;
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk)
                .await
                .map_err(|e| StoreError::io(path, e))?;
            n += chunk.len() as u64;
        }
        file.flush().await.map_err(|e| StoreError::io(path, e))?;
        Ok(n)
    }

    /// Sends `req` with a bearer token, retrying on 429, 5xx and network failures (bounded),
    /// renewing the token once on a 401. Returns only successful answers.
    pub async fn send(&self, req: &Req) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base, req.path);
        let mut token = self.bearer().await?;
        let mut renewed = false;
        loop {
            match self.attempt_loop(&url, req, Some(&token)).await {
                Err(Failure::Status {
                    status: StatusCode::UNAUTHORIZED,
                    ..
                }) if !renewed && self.renewable() => {
                    tracing::info!(
                        "Dataloop answered 401 to {} {}: renewing the token",
                        req.method,
                        req.path
                    );
                    token = self.bearer_after_reject(&token).await?;
                    renewed = true;
                }
                Err(f) => return Err(f.into_error(req)),
                Ok(resp) => return Ok(resp),
            }
        }
    }

    fn renewable(&self) -> bool {
        !matches!(self.auth, DataloopAuth::ApiKey(_))
    }

    /// One request with its retries; 401/403/404/4xx end it at once.
    async fn attempt_loop(
        &self,
        url: &str,
        req: &Req,
        bearer: Option<&str>,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let mut attempt: u32 = 0;
        loop {
            let attempts = attempt + 1;
            let builder = self.build(url, req, bearer).await.map_err(Failure::Local)?;
            let wait = match builder.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    let retry_after = retry_after(resp.headers());
                    let message = error_message(resp).await;
                    if !retryable || attempt >= self.max_retries {
                        return Err(Failure::Status {
                            status,
                            message,
                            attempts,
                        });
                    }
                    match retry_after {
                        Some(d) if d > self.retry_after_max => {
                            return Err(Failure::Status {
                                status,
                                message: format!(
                                    "{message} (the gate asks to retry after {} s)",
                                    d.as_secs()
                                ),
                                attempts,
                            })
                        }
                        Some(d) => d,
                        None => self.backoff(attempt),
                    }
                }
                Err(e) => {
                    let retryable =
                        e.is_connect() || (req.idempotent && (e.is_timeout() || e.is_request()));
                    if !retryable || attempt >= self.max_retries {
                        return Err(Failure::Network {
                            message: e.to_string(),
                            timeout: e.is_timeout(),
                            attempts,
                        });
                    }
                    self.backoff(attempt)
                }
            };
            tracing::warn!(
                "Dataloop {} {} failed (attempt {attempts}); retrying in {} ms",
                req.method,
                req.path,
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn build(
        &self,
        url: &str,
        req: &Req,
        bearer: Option<&str>,
    ) -> Result<reqwest::RequestBuilder> {
        let timeout = if req.transfer {
            self.transfer_timeout
        } else {
            self.request_timeout
        };
        let mut b = self.http.request(req.method.clone(), url).timeout(timeout);
        if let Some(t) = bearer {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in &req.headers {
            b = b.header(*name, value);
        }
        Ok(match &req.body {
            Body::Empty => b,
            Body::Json(v) => b.json(v),
            Body::Multipart {
                fields,
                file_name,
                mime,
                content,
            } => {
                let mut form = reqwest::multipart::Form::new();
                for (k, v) in fields {
                    form = form.text(k.clone(), v.clone());
                }
                let part = match content {
                    Content::Bytes(bytes) => reqwest::multipart::Part::bytes(bytes.clone()),
                    Content::File(path) => {
                        let file = tokio::fs::File::open(path)
                            .await
                            .map_err(|e| StoreError::io(path, e))?;
                        let len = file
                            .metadata()
                            .await
                            .map_err(|e| StoreError::io(path, e))?
                            .len();
                        let stream = tokio_util::io::ReaderStream::new(file);
                        reqwest::multipart::Part::stream_with_length(
                            reqwest::Body::wrap_stream(stream),
                            len,
                        )
                    }
                };
                let part = part
                    .file_name(file_name.clone())
                    .mime_str(mime)
                    .map_err(|e| {
                        StoreError::invalid(format!("mimetype {mime:?}"), e.to_string())
                    })?;
                b.multipart(form.part("file", part))
            }
        })
    }

    /// Exponential backoff with jitter in [d/2, d], so many clients do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        let d = self
            .backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max);
        let half = d / 2;
        let spread = half.as_nanos() as u64;
        let r = if spread == 0 {
            0
        } else {
            (uuid::Uuid::new_v4().as_u128() as u64) % (spread + 1)
        };
        half + Duration::from_nanos(r)
    }

    // ---- tokens ----

    async fn bearer(&self) -> Result<String> {
        if let DataloopAuth::ApiKey(k) = &self.auth {
            return Ok(k.clone());
        }
        let mut t = self.tokens.lock().await;
        if let Some(jwt) = &t.jwt {
            if !expired(t.exp) {
                return Ok(jwt.clone());
            }
        }
        self.renew(&mut t).await
    }

    /// After a 401 with `rejected`: another task may have renewed it already.
    async fn bearer_after_reject(&self, rejected: &str) -> Result<String> {
        let mut t = self.tokens.lock().await;
        if let Some(jwt) = &t.jwt {
            if jwt != rejected && !expired(t.exp) {
                return Ok(jwt.clone());
            }
        }
        t.jwt = None;
        self.renew(&mut t).await
    }

    async fn renew(&self, t: &mut Tokens) -> Result<String> {
        if let Some(refresh) = t.refresh.clone() {
            let body = json!({"type": "refresh_token", "refresh_token": refresh});
            match self.token_request(body, "token refresh").await {
                Ok((jwt, new_refresh)) => {
                    tracing::debug!("Dataloop token refreshed");
                    t.exp = jwt_exp(&jwt);
                    t.jwt = Some(jwt.clone());
                    if new_refresh.is_some() {
                        t.refresh = new_refresh;
                    }
                    return Ok(jwt);
                }
                Err(e) if matches!(self.auth, DataloopAuth::Bot { .. }) => {
                    tracing::warn!("Dataloop token refresh failed ({e}); logging in again");
                    t.refresh = None;
                }
                Err(e) => return Err(e),
            }
        }
        match &self.auth {
            DataloopAuth::AgentProxy { secret, .. } => {
                let jwt = self.proxy_jwt(secret.as_deref()).await?;
                tracing::debug!("Dataloop token fetched from the agent proxy");
                t.exp = jwt_exp(&jwt);
                t.jwt = Some(jwt.clone());
                Ok(jwt)
            }
            DataloopAuth::Bot { username, password } => {
                let body = json!({
                    "username": username,
                    "password": password,
                    "type": "user_credentials",
                });
                let (jwt, refresh) = self
                    .token_request(body, &format!("login of {username:?}"))
                    .await?;
                t.exp = jwt_exp(&jwt);
                t.jwt = Some(jwt.clone());
                t.refresh = refresh;
                Ok(jwt)
            }
            _ => Err(StoreError::Unauthorized(
                "the Dataloop token expired or was rejected and cannot be renewed \
                 (no refresh token); log in again"
                    .into(),
            )),
        }
    }

    /// `GET <agent proxy>/get_jwt` (as dtlpy's `_renew_token_in_dual_agent`): `{"jwt": ...}`.
    /// Errors name the variables that locate and open the proxy.
    async fn proxy_jwt(&self, secret: Option<&str>) -> Result<String> {
        let url = self.proxy_jwt_url.as_deref().unwrap_or_default();
        let mut req = Req::get("/get_jwt", Target::new("token", "agent proxy"));
        if let Some(s) = secret {
            req.headers.push(("X-Get-Jwt-Secret", s.to_string()));
        }
        const WHERE: &str = "AGENT_PROXY_MAIN_PORT (default 1001) or DATALOOP_AGENT_PROXY_URL";
        let resp = match self.attempt_loop(url, &req, None).await {
            Ok(r) => r,
            Err(Failure::Status {
                status, message, ..
            }) if matches!(status.as_u16(), 401 | 403) => {
                return Err(StoreError::Unauthorized(format!(
                    "the Dataloop agent proxy at {url} refused the token request (HTTP {}: \
                     {message}); check GET_JWT_ENDPOINT_SECRET ({})",
                    status.as_u16(),
                    if secret.is_some() { "set" } else { "not set" }
                )))
            }
            Err(Failure::Status {
                status,
                message,
                attempts,
            }) => {
                return Err(StoreError::Unavailable(format!(
                    "the Dataloop agent proxy at {url} answered HTTP {} after {attempts} \
                     attempt{}: {message} (check {WHERE})",
                    status.as_u16(),
                    plural(attempts)
                )))
            }
            Err(Failure::Network {
                message, attempts, ..
            }) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot reach the Dataloop agent proxy at {url} ({message}, after {attempts} \
                     attempt{}): check {WHERE}; outside a Dataloop service, unset \
                     DTLPY_REFRESH_TOKEN_METHOD and use DATALOOP_API_KEY or a bot",
                    plural(attempts)
                )))
            }
            Err(Failure::Local(e)) => return Err(e),
        };
        let v: Value = resp.json().await.map_err(|e| StoreError::Remote {
            status: 200,
            message: format!("the Dataloop agent proxy at {url}: answer is not JSON: {e}"),
        })?;
        v.get("jwt")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .ok_or_else(|| StoreError::Remote {
                status: 200,
                message: format!("the Dataloop agent proxy at {url}: answer has no \"jwt\""),
            })
    }

    /// POST to `<gate host>/token?default`: `(id_token, refresh_token)`.
    async fn token_request(&self, body: Value, what: &str) -> Result<(String, Option<String>)> {
        let req = Req::post("/token?default", body, Target::new("token", "default"));
        let resp = match self.attempt_loop(&self.token_url, &req, None).await {
            Ok(r) => r,
            Err(Failure::Status {
                status, message, ..
            }) if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => {
                return Err(StoreError::Unauthorized(format!(
                    "Dataloop {what} failed (HTTP {}): {message}",
                    status.as_u16()
                )))
            }
            Err(f) => return Err(f.into_error(&req)),
        };
        let v: Value = resp.json().await.map_err(|e| StoreError::Remote {
            status: 200,
            message: format!("Dataloop {what}: answer is not JSON: {e}"),
        })?;
        // `id_token` is what the SDK reads; `access_token` is accepted in case a gate sends that.
        let jwt = ["id_token", "access_token"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| StoreError::Remote {
                status: 200,
                message: format!("Dataloop {what}: answer has no id_token"),
            })?;
        let refresh = v
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from);
        Ok((jwt.to_string(), refresh))
    }
}

/// A failed request before it becomes a [`StoreError`] (which needs the request's target).
enum Failure {
    Status {
        status: StatusCode,
        message: String,
        attempts: u32,
    },
    Network {
        message: String,
        timeout: bool,
        attempts: u32,
    },
    Local(StoreError),
}

impl Failure {
    fn into_error(self, req: &Req) -> StoreError {
        let call = format!("{} {}", req.method, req.path);
        match self {
            Failure::Local(e) => e,
            Failure::Network {
                message,
                timeout,
                attempts,
            } => StoreError::Unavailable(format!(
                "Dataloop {call}: {}{message} (after {attempts} attempt{})",
                if timeout { "timed out: " } else { "" },
                plural(attempts)
            )),
            Failure::Status {
                status,
                message,
                attempts,
            } => map_status(status, &message, attempts, &call, &req.target),
        }
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn map_status(
    status: StatusCode,
    message: &str,
    attempts: u32,
    call: &str,
    target: &Target,
) -> StoreError {
    let code = status.as_u16();
    match code {
        400 | 422 => StoreError::invalid(format!("Dataloop request {call}"), message),
        401 => StoreError::Unauthorized(format!(
            "Dataloop rejected the credentials for {call}: {message}"
        )),
        403 => StoreError::Forbidden(format!(
            "Dataloop denies {call} (check the bot's project role): {message}"
        )),
        404 => StoreError::NotFound {
            kind: target.kind,
            id: target.id.clone(),
        },
        409 => StoreError::Conflict(format!("Dataloop {call}: {message}")),
        429 | 502 | 503 | 504 => StoreError::Unavailable(format!(
            "Dataloop {call}: HTTP {code} after {attempts} attempt{}: {message}",
            plural(attempts)
        )),
        _ => StoreError::Remote {
            status: code,
            message: format!(
                "Dataloop {call} (after {attempts} attempt{}): {message}",
                plural(attempts)
            ),
        },
    }
}

/// The human part of an error answer: `message` or `error` of a JSON body, else the text.
async fn error_message(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        for key in ["message", "error", "errors"] {
            match v.get(key) {
                Some(Value::String(s)) if !s.is_empty() => return snippet(s),
                Some(other @ (Value::Object(_) | Value::Array(_))) => {
                    return snippet(&other.to_string())
                }
                _ => {}
            }
        }
    }
    if text.trim().is_empty() {
        "(empty answer)".into()
    } else {
        snippet(&text)
    }
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = super::wire::parse_http_date(v)?;
    Some(Duration::from_secs(when.saturating_sub(now_secs())))
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn expired(exp: Option<u64>) -> bool {
    // A token without a readable `exp` is used until the gate rejects it (then renewed).
    exp.is_some_and(|exp| now_secs() + EXPIRY_MARGIN_S >= exp)
}

/// The `exp` claim of a JWT, without verifying it (the gate does that).
pub(crate) fn jwt_exp(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = v.get("exp")?;
    exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"none"}"#),
            e.encode(format!(r#"{{"exp":{exp}}}"#))
        )
    }

    #[test]
    fn jwt_expiry_has_a_margin() {
        let now = now_secs();
        assert_eq!(jwt_exp(&jwt(now + 1000)), Some(now + 1000));
        assert!(!expired(jwt_exp(&jwt(now + 1000))));
        assert!(expired(jwt_exp(&jwt(now + 30))), "inside the 60 s margin");
        assert!(expired(jwt_exp(&jwt(now.saturating_sub(5)))));
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert!(!expired(None));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past");
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
