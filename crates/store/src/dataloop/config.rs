//! How to reach and authenticate against a Dataloop gate.

use crate::error::{Result, StoreError};
use std::fmt;
use std::time::Duration;

/// Dataloop's production gate, with the REST prefix.
pub const DEFAULT_GATE_URL: &str = "https://gate.dataloop.ai/api/v1";

/// How requests are authenticated.
#[derive(Clone)]
pub enum DataloopAuth {
    /// An API key, sent as the bearer token as is; never refreshed.
    ApiKey(String),
    /// Bot (or user) credentials exchanged for a JWT at `<gate host>/token?default`;
    /// the JWT is refreshed with the refresh token, or by logging in again.
    Bot { username: String, password: String },
    /// A JWT obtained elsewhere (e.g. `dlp token`), refreshed when a refresh token is given.
    Token {
        token: String,
        refresh_token: Option<String>,
    },
    /// Inside a Dataloop service (`DTLPY_REFRESH_TOKEN_METHOD=proxy`): JWTs from the agent's
    /// local proxy, `GET <proxy_url>/get_jwt` with `X-Get-Jwt-Secret: <secret>` when one is
    /// set, as dtlpy fetches them; fetched again before expiry and after a 401.
    AgentProxy {
        /// `http://localhost:<AGENT_PROXY_MAIN_PORT>` in a pod.
        proxy_url: String,
        secret: Option<String>,
    },
}

/// The agent proxy's port when `AGENT_PROXY_MAIN_PORT` is not set (dtlpy's default).
pub const DEFAULT_AGENT_PROXY_PORT: u16 = 1001;

// Secrets stay out of logs and panics.
impl fmt::Debug for DataloopAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
            Self::Bot { username, .. } => f
                .debug_struct("Bot")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Token { refresh_token, .. } => f
                .debug_struct("Token")
                .field("token", &"<redacted>")
                .field(
                    "refresh_token",
                    &refresh_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
            Self::AgentProxy { proxy_url, secret } => f
                .debug_struct("AgentProxy")
                .field("proxy_url", proxy_url)
                .field("secret", &secret.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// The app (DPK) whose `models` component new models belong to. dtlpy's `models.create`
/// takes these from the app and sends them as `packageId`, `moduleName` and `app`; without
/// one, models are created without them (the gate may refuse that: docs/dataloop.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelApp {
    /// The DPK's id (`packageId`).
    pub package_id: String,
    /// The `moduleName` of the DPK's models component.
    pub module_name: String,
    /// `{id, componentName, dpkName, dpkVersion, dpkId}`, sent as is when given.
    pub app: Option<serde_json::Value>,
}

/// Everything [`super::DataloopBackend`] needs; [`DataloopConfig::new`] fills sensible defaults.
#[derive(Debug, Clone)]
pub struct DataloopConfig {
    /// REST base URL including `/api/v1`; the token endpoint lives on the same host without it.
    pub gate_url: String,
    /// Every dataset, model, pipeline and feature set is looked up and created in this project.
    pub project_id: String,
    pub auth: DataloopAuth,
    /// Limit for one JSON request (connect, send, answer).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Limit for one item upload or download (item bytes, model artifacts).
    pub transfer_timeout: Duration,
    /// Retries after the first attempt on 429, 5xx and network failures.
    pub max_retries: u32,
    /// First backoff; doubled per retry up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this ends the retries instead of stalling the caller.
    pub retry_after_max: Duration,
    /// Pause between polls of a model that is still `cloning`.
    pub poll_interval: Duration,
    /// Give up on a clone that stays `cloning` longer than this.
    pub clone_timeout: Duration,
    /// FaaS service used by `create_execution` when the execution names none.
    pub service_id: Option<String>,
    /// The project's system dataset holding model artifacts.
    pub binaries_dataset: String,
    /// Sent with every model `create_model` registers (`DATALOOP_MODEL_PACKAGE_ID`,
    /// `DATALOOP_MODEL_MODULE_NAME`, optional `DATALOOP_MODEL_APP` as JSON).
    pub model_app: Option<ModelApp>,
}

impl DataloopConfig {
    pub fn new(project_id: impl Into<String>, auth: DataloopAuth) -> Self {
        Self {
            gate_url: DEFAULT_GATE_URL.to_string(),
            project_id: project_id.into(),
            auth,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            transfer_timeout: Duration::from_secs(3600),
            max_retries: 5,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(120),
            poll_interval: Duration::from_secs(2),
            clone_timeout: Duration::from_secs(900),
            service_id: None,
            binaries_dataset: "Binaries".to_string(),
            model_app: None,
        }
    }

    /// Reads `DATALOOP_PROJECT_ID` and the credentials: inside a Dataloop service
    /// (`DTLPY_REFRESH_TOKEN_METHOD=proxy`) the agent proxy (`AGENT_PROXY_MAIN_PORT`,
    /// `GET_JWT_ENDPOINT_SECRET`, or `DATALOOP_AGENT_PROXY_URL`), otherwise one of
    /// `DATALOOP_API_KEY`, `DATALOOP_BOT_USERNAME` + `DATALOOP_BOT_PASSWORD`, or
    /// `DATALOOP_TOKEN` (+ optional `DATALOOP_REFRESH_TOKEN`). The gate is
    /// `INTERNAL_REQUESTS_URL` when set (as dtlpy), else `DATALOOP_GATE_URL`, else
    /// production; optional `DATALOOP_SERVICE_ID`.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`DataloopConfig::from_env`] over any variable source (tests, config files).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let project = get("DATALOOP_PROJECT_ID").ok_or_else(|| {
            StoreError::invalid("Dataloop configuration", "DATALOOP_PROJECT_ID is not set")
        })?;
        let auth = if get(REFRESH_METHOD).is_some_and(|m| m == "proxy") {
            agent_proxy(&get)?
        } else if let Some(key) = get("DATALOOP_API_KEY") {
            DataloopAuth::ApiKey(key)
        } else if let Some(username) = get("DATALOOP_BOT_USERNAME") {
            let password = get("DATALOOP_BOT_PASSWORD").ok_or_else(|| {
                StoreError::invalid(
                    "Dataloop configuration",
                    "DATALOOP_BOT_USERNAME is set but DATALOOP_BOT_PASSWORD is not",
                )
            })?;
            DataloopAuth::Bot { username, password }
        } else if let Some(token) = get("DATALOOP_TOKEN") {
            DataloopAuth::Token {
                token,
                refresh_token: get("DATALOOP_REFRESH_TOKEN"),
            }
        } else {
            return Err(StoreError::invalid(
                "Dataloop configuration",
                "no credentials: set DATALOOP_API_KEY, DATALOOP_BOT_USERNAME and \
                 DATALOOP_BOT_PASSWORD, or DATALOOP_TOKEN (inside a Dataloop service, \
                 DTLPY_REFRESH_TOKEN_METHOD=proxy: the agent's proxy)",
            ));
        };
        let mut cfg = Self::new(project, auth);
        // Inside a pod, dtlpy sends every request to INTERNAL_REQUESTS_URL (the cluster's
        // own route to the gate) instead of the environment's public URL.
        if let Some(url) = get("INTERNAL_REQUESTS_URL").or_else(|| get("DATALOOP_GATE_URL")) {
            cfg.gate_url = url;
        }
        cfg.service_id = get("DATALOOP_SERVICE_ID");
        cfg.model_app =
            match (
                get("DATALOOP_MODEL_PACKAGE_ID"),
                get("DATALOOP_MODEL_MODULE_NAME"),
            ) {
                (None, None) => None,
                (Some(package_id), Some(module_name)) => Some(ModelApp {
                    package_id,
                    module_name,
                    app: get("DATALOOP_MODEL_APP")
                        .map(|a| {
                            serde_json::from_str::<serde_json::Value>(&a)
                                .ok()
                                .filter(serde_json::Value::is_object)
                                .ok_or_else(|| {
                                    StoreError::invalid(
                                        "Dataloop configuration",
                                        "DATALOOP_MODEL_APP must be a JSON object",
                                    )
                                })
                        })
                        .transpose()?,
                }),
                _ => return Err(StoreError::invalid(
                    "Dataloop configuration",
                    "set both DATALOOP_MODEL_PACKAGE_ID and DATALOOP_MODEL_MODULE_NAME, or neither",
                )),
            };
        cfg.validate()?;
        Ok(cfg)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::invalid("Dataloop configuration", m));
        if !(self.gate_url.starts_with("https://") || self.gate_url.starts_with("http://")) {
            return bad(format!(
                "gate URL {:?} must start with https:// or http://",
                self.gate_url
            ));
        }
        if self.project_id.trim().is_empty() {
            return bad("project id is empty".into());
        }
        match &self.auth {
            DataloopAuth::ApiKey(k) if k.trim().is_empty() => bad("API key is empty".into()),
            DataloopAuth::Bot { username, password }
                if username.trim().is_empty() || password.is_empty() =>
            {
                bad("bot username or password is empty".into())
            }
            DataloopAuth::Token { token, .. } if token.trim().is_empty() => {
                bad("token is empty".into())
            }
            DataloopAuth::AgentProxy { proxy_url, .. }
                if !(proxy_url.starts_with("http://") || proxy_url.starts_with("https://")) =>
            {
                bad(format!(
                    "agent proxy URL {proxy_url:?} must start with http:// or https:// \
                     (DATALOOP_AGENT_PROXY_URL)"
                ))
            }
            DataloopAuth::AgentProxy {
                secret: Some(s), ..
            } if s.is_empty() => bad("GET_JWT_ENDPOINT_SECRET is empty".into()),
            _ => Ok(()),
        }
    }

    /// `<proxy>/get_jwt` for [`DataloopAuth::AgentProxy`].
    pub(crate) fn proxy_jwt_url(&self) -> Option<String> {
        match &self.auth {
            DataloopAuth::AgentProxy { proxy_url, .. } => {
                Some(format!("{}/get_jwt", proxy_url.trim_end_matches('/')))
            }
            _ => None,
        }
    }

    /// REST base without a trailing slash.
    pub(crate) fn base_url(&self) -> String {
        self.gate_url.trim_end_matches('/').to_string()
    }

    /// `<gate host>/token?default`: the gate URL without its `/api/v1` suffix.
    pub(crate) fn token_url(&self) -> String {
        let base = self.base_url();
        let host = base.strip_suffix("/api/v1").unwrap_or(&base);
        format!("{host}/token?default")
    }
}

/// dtlpy's switch to the agent proxy: set to `proxy` inside Dataloop services.
const REFRESH_METHOD: &str = "DTLPY_REFRESH_TOKEN_METHOD";

/// The agent proxy as dtlpy finds it (`http://localhost:$AGENT_PROXY_MAIN_PORT`, secret
/// `GET_JWT_ENDPOINT_SECRET`); `DATALOOP_AGENT_PROXY_URL` replaces the URL (tests, or a
/// proxy elsewhere).
fn agent_proxy(get: &impl Fn(&str) -> Option<String>) -> Result<DataloopAuth> {
    let proxy_url = match get("DATALOOP_AGENT_PROXY_URL") {
        Some(url) => url,
        None => {
            let port = match get("AGENT_PROXY_MAIN_PORT") {
                None => DEFAULT_AGENT_PROXY_PORT,
                Some(p) => p
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        StoreError::invalid(
                            "Dataloop configuration",
                            format!("AGENT_PROXY_MAIN_PORT must be a port number, got {p:?}"),
                        )
                    })?,
            };
            format!("http://localhost:{port}")
        }
    };
    Ok(DataloopAuth::AgentProxy {
        proxy_url,
        secret: get("GET_JWT_ENDPOINT_SECRET"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_url_drops_api_prefix() {
        let mut c = DataloopConfig::new("p", DataloopAuth::ApiKey("k".into()));
        assert_eq!(c.token_url(), "https://gate.dataloop.ai/token?default");
        c.gate_url = "http://127.0.0.1:9/api/v1/".into();
        assert_eq!(c.token_url(), "http://127.0.0.1:9/token?default");
        assert_eq!(c.base_url(), "http://127.0.0.1:9/api/v1");
    }

    #[test]
    fn env_needs_project_and_credentials() {
        let none = DataloopConfig::from_lookup(|_| None).unwrap_err();
        assert!(none.to_string().contains("DATALOOP_PROJECT_ID"), "{none}");
        let no_pw = DataloopConfig::from_lookup(|k| match k {
            "DATALOOP_PROJECT_ID" => Some("p".into()),
            "DATALOOP_BOT_USERNAME" => Some("bot@x".into()),
            _ => None,
        })
        .unwrap_err();
        assert!(
            no_pw.to_string().contains("DATALOOP_BOT_PASSWORD"),
            "{no_pw}"
        );
        let ok = DataloopConfig::from_lookup(|k| match k {
            "DATALOOP_PROJECT_ID" => Some("p".into()),
            "DATALOOP_API_KEY" => Some("secret-key".into()),
            _ => None,
        })
        .unwrap();
        assert!(!format!("{ok:?}").contains("secret-key"));
        assert_eq!(ok.model_app, None);
    }

    #[test]
    fn env_inside_a_pod_uses_the_agent_proxy() {
        let pod = |extra: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                [
                    ("DATALOOP_PROJECT_ID", "p"),
                    ("DTLPY_REFRESH_TOKEN_METHOD", "proxy"),
                    // Ignored in a pod: the proxy's JWT is the service's identity.
                    ("DATALOOP_API_KEY", "api-key-not-used"),
                    ("DATALOOP_GATE_URL", "https://gate.example/api/v1"),
                ]
                .iter()
                .chain(extra)
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
            }
        };
        let c = DataloopConfig::from_lookup(pod(&[])).unwrap();
        match &c.auth {
            DataloopAuth::AgentProxy { proxy_url, secret } => {
                assert_eq!(proxy_url, "http://localhost:1001");
                assert_eq!(secret, &None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.gate_url, "https://gate.example/api/v1");
        let c = DataloopConfig::from_lookup(pod(&[
            ("AGENT_PROXY_MAIN_PORT", "1777"),
            ("GET_JWT_ENDPOINT_SECRET", "proxy-secret-value"),
            ("INTERNAL_REQUESTS_URL", "http://gate.internal/api/v1"),
        ]))
        .unwrap();
        assert_eq!(
            c.proxy_jwt_url().as_deref(),
            Some("http://localhost:1777/get_jwt")
        );
        assert_eq!(c.gate_url, "http://gate.internal/api/v1");
        let shown = format!("{c:?}");
        assert!(!shown.contains("proxy-secret-value"), "{shown}");
        assert!(shown.contains("AgentProxy"), "{shown}");
        let bad =
            DataloopConfig::from_lookup(pod(&[("AGENT_PROXY_MAIN_PORT", "http")])).unwrap_err();
        assert!(bad.to_string().contains("AGENT_PROXY_MAIN_PORT"), "{bad}");
        // Outside a pod the method variable is absent: the API key as before.
        let out = DataloopConfig::from_lookup(|k| match k {
            "DATALOOP_PROJECT_ID" => Some("p".into()),
            "DATALOOP_API_KEY" => Some("k".into()),
            _ => None,
        })
        .unwrap();
        assert!(matches!(out.auth, DataloopAuth::ApiKey(_)));
        assert_eq!(out.proxy_jwt_url(), None);
    }

    #[test]
    fn env_model_app() {
        let vars = |extra: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                [("DATALOOP_PROJECT_ID", "p"), ("DATALOOP_API_KEY", "k")]
                    .iter()
                    .chain(extra)
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = DataloopConfig::from_lookup(vars(&[
            ("DATALOOP_MODEL_PACKAGE_ID", "pkg"),
            ("DATALOOP_MODEL_MODULE_NAME", "clip-module"),
            (
                "DATALOOP_MODEL_APP",
                r#"{"id": "app1", "componentName": "cliptune-clip"}"#,
            ),
        ]))
        .unwrap();
        let app = c.model_app.unwrap();
        assert_eq!(
            (app.package_id.as_str(), app.module_name.as_str()),
            ("pkg", "clip-module")
        );
        assert_eq!(app.app.unwrap()["componentName"], "cliptune-clip");
        let half =
            DataloopConfig::from_lookup(vars(&[("DATALOOP_MODEL_PACKAGE_ID", "pkg")])).unwrap_err();
        assert!(
            half.to_string().contains("DATALOOP_MODEL_MODULE_NAME"),
            "{half}"
        );
        let bad_app = DataloopConfig::from_lookup(vars(&[
            ("DATALOOP_MODEL_PACKAGE_ID", "pkg"),
            ("DATALOOP_MODEL_MODULE_NAME", "m"),
            ("DATALOOP_MODEL_APP", "[1]"),
        ]))
        .unwrap_err();
        assert!(
            bad_app.to_string().contains("DATALOOP_MODEL_APP"),
            "{bad_app}"
        );
    }
}
