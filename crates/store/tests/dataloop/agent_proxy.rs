//! Credentials inside a Dataloop pod: the agent proxy's JWT (`GET /get_jwt`, served here by
//! the fake gate at its host) and `INTERNAL_REQUESTS_URL`, as dtlpy uses them.

use super::*;

const SECRET: &str = "proxy-secret-8f2c";

/// The variables a Dataloop pod sets, the proxy URL pointed at the gate (a test cannot own
/// port 1001), plus an API key and a public gate URL that the pod's settings must win over.
fn pod_env(gate: &FakeGate, secret: Option<&'static str>) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(&'static str, String)> = vec![
        ("DATALOOP_PROJECT_ID", gate.project_id.clone()),
        ("DTLPY_REFRESH_TOKEN_METHOD", "proxy".into()),
        ("DATALOOP_AGENT_PROXY_URL", gate.host.clone()),
        ("INTERNAL_REQUESTS_URL", gate.url.clone()),
        (
            "DATALOOP_GATE_URL",
            "https://gate.dataloop.ai/api/v1".into(),
        ),
        ("DATALOOP_API_KEY", gate.api_key.clone()),
    ];
    move |k: &str| {
        if k == "GET_JWT_ENDPOINT_SECRET" {
            return secret.map(String::from);
        }
        vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }
}

/// The bearer tokens the gate received on its REST routes, in order.
fn bearers(gate: &FakeGate) -> Vec<String> {
    gate.calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/api/v1/"))
        .filter_map(|c| c.auth?.strip_prefix("Bearer ").map(String::from))
        .collect()
}

fn proxy_backend(gate: &FakeGate, secret: Option<&str>) -> DataloopBackend {
    DataloopBackend::new(gate.proxy_config(secret)).unwrap()
}

#[tokio::test]
async fn pod_environment_uses_the_proxy_jwt_and_the_internal_url() {
    let gate = FakeGate::start().await;
    gate.with(|s| s.jwt_secret = Some(SECRET.into()));
    let cfg = DataloopConfig::from_lookup(pod_env(&gate, Some(SECRET))).unwrap();
    assert!(
        matches!(cfg.auth, DataloopAuth::AgentProxy { .. }),
        "{cfg:?}"
    );
    assert_eq!(cfg.gate_url, gate.url, "INTERNAL_REQUESTS_URL wins");
    let b = DataloopBackend::new(cfg.clone()).unwrap();
    let ds = b.create_dataset("pod-data").await.unwrap();
    assert_eq!(b.get_dataset(&ds.id).await.unwrap().name, "pod-data");
    assert_eq!(b.list_datasets().await.unwrap().len(), 1);
    // One JWT from the proxy, with the secret, serves every request; the API key is unused.
    assert_eq!(gate.with(|s| s.proxy_fetches), 1);
    let fetches = gate.calls_to("GET", "/get_jwt");
    assert_eq!(fetches.len(), 1);
    assert!(fetches[0].auth.is_none(), "the proxy takes no bearer");
    let used = bearers(&gate);
    assert!(used.len() >= 3, "{used:?}");
    assert!(used.iter().all(|t| *t == used[0] && *t != gate.api_key));
    // Neither the JWT nor the secret shows in what can be printed.
    for shown in [
        format!("{cfg:?}"),
        format!("{b:?}"),
        format!("{:?}", b.config()),
    ] {
        assert!(
            !shown.contains(&used[0]) && !shown.contains(SECRET),
            "{shown}"
        );
    }
    assert_eq!(gate.unrecognised(), Vec::<String>::new());
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed_through_the_proxy() {
    let gate = FakeGate::start().await;
    // 62 s: valid for about 2 s under the 60 s expiry margin.
    gate.with(|s| s.proxy_token_ttl = 62);
    let b = proxy_backend(&gate, None);
    b.list_datasets().await.unwrap();
    b.list_datasets().await.unwrap();
    assert_eq!(gate.with(|s| s.proxy_fetches), 1, "still fresh: reused");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    b.list_datasets().await.unwrap();
    assert_eq!(gate.with(|s| s.proxy_fetches), 2, "renewed before expiry");
    let used = bearers(&gate);
    assert_eq!(used.len(), 3);
    assert_eq!(used[0], used[1]);
    assert_ne!(used[1], used[2]);
    // No request was refused: the old token never went out inside its margin.
    assert!(gate.calls().iter().all(|c| c.status < 400));
}

#[tokio::test]
async fn a_rejected_token_is_renewed_once_for_all_concurrent_requests() {
    let gate = FakeGate::start().await;
    let b = std::sync::Arc::new(proxy_backend(&gate, None));
    b.list_datasets().await.unwrap();
    gate.revoke_tokens();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.list_datasets().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        gate.with(|s| s.proxy_fetches),
        2,
        "a burst of 401s shares one renewal"
    );
    assert!(!gate.calls_to("POST", "/datasets/query").is_empty());
    assert!(gate
        .calls_to("POST", "/datasets/query")
        .iter()
        .any(|c| c.status == 401));
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_a_clear_error() {
    let gate = FakeGate::start().await;
    gate.with(|s| s.jwt_secret = Some(SECRET.into()));
    for (given, state) in [(Some("not-the-secret"), "(set)"), (None, "(not set)")] {
        let err = proxy_backend(&gate, given)
            .list_datasets()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Unauthorized(_)), "{err:?}");
        assert!(
            msg.contains("GET_JWT_ENDPOINT_SECRET") && msg.contains(state),
            "{msg}"
        );
        assert!(msg.contains(&gate.host), "names the proxy: {msg}");
        assert!(!msg.contains(SECRET) && !msg.contains("not-the-secret"));
    }
    assert_eq!(gate.with(|s| s.proxy_fetches), 0);
    assert!(bearers(&gate).is_empty(), "nothing reached the REST routes");
}

#[tokio::test]
async fn an_unreachable_proxy_names_the_variables_to_check() {
    let gate = FakeGate::start().await;
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = gate.proxy_config(None);
    cfg.auth = DataloopAuth::AgentProxy {
        proxy_url: format!("http://127.0.0.1:{port}"),
        secret: None,
    };
    let err = DataloopBackend::new(cfg)
        .unwrap()
        .list_datasets()
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    for needle in [
        "AGENT_PROXY_MAIN_PORT",
        "DATALOOP_AGENT_PROXY_URL",
        "DTLPY_REFRESH_TOKEN_METHOD",
    ] {
        assert!(msg.contains(needle), "{needle} in {msg}");
    }
    assert!(msg.contains(&port.to_string()), "{msg}");
}

#[tokio::test]
async fn tokens_stay_out_of_errors() {
    let gate = FakeGate::start().await;
    gate.with(|s| s.jwt_secret = Some(SECRET.into()));
    let b = proxy_backend(&gate, Some(SECRET));
    b.list_datasets().await.unwrap();
    let jwt = bearers(&gate).remove(0);
    let missing = b.get_dataset("fa4e00000000000000000bad").await.unwrap_err();
    // The gate revokes the token and the proxy stops answering: the 401, the failed renewal.
    gate.revoke_tokens();
    gate.with(|s| s.jwt_secret = Some("rotated".into()));
    let refused = b.list_datasets().await.unwrap_err();
    assert!(
        matches!(refused, StoreError::Unauthorized(_)),
        "{refused:?}"
    );
    for e in [&missing, &refused] {
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains(&jwt) && !shown.contains(SECRET), "{shown}");
        }
    }
}
