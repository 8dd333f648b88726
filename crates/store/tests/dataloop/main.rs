//! The Dataloop backend against the fake gate (crates/gate): auth, retries, errors,
//! paging, and each endpoint's request shape. Nothing leaves 127.0.0.1.

use cliptune_gate as fake_gate;

use cliptune_store::*;
use fake_gate::FakeGate;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod agent_proxy;
mod features;
mod items;
mod models;
mod pipelines;

async fn setup() -> (FakeGate, DataloopBackend) {
    let gate = FakeGate::start().await;
    let backend = DataloopBackend::new(gate.api_key_config()).unwrap();
    (gate, backend)
}

fn img(name: &str, caption: Option<&str>, tag: Option<&str>) -> NewItem {
    let mut metadata = json!({});
    if let Some(t) = tag {
        metadata = json!({"system": {"tags": {t: true}}});
    }
    NewItem {
        filename: name.into(),
        bytes: format!("bytes of {name}").into_bytes(),
        mimetype: None,
        description: caption.map(String::from),
        metadata,
        hidden: false,
    }
}

// ---- auth ----

#[tokio::test]
async fn bot_login_then_refresh_before_expiry() {
    let gate = FakeGate::start().await;
    // Tokens live 30 s: inside the 60 s margin, so the next call must refresh first.
    gate.with(|s| s.token_ttl = 30);
    let b = DataloopBackend::new(gate.bot_config()).unwrap();
    b.list_datasets().await.unwrap();
    assert_eq!(gate.with(|s| (s.logins, s.refreshes)), (1, 0));
    b.list_datasets().await.unwrap();
    assert_eq!(gate.with(|s| (s.logins, s.refreshes)), (1, 1));

    let token_calls = gate.calls_to("POST", "/token");
    assert_eq!(token_calls.len(), 2);
    assert!(token_calls
        .iter()
        .all(|c| c.query == "default" && c.auth.is_none()));
    assert_eq!(
        token_calls[0].body,
        json!({"username": fake_gate::BOT_USER, "password": fake_gate::BOT_PASSWORD, "type": "user_credentials"})
    );
    assert_eq!(token_calls[1].body["type"], "refresh_token");
    assert!(token_calls[1].body["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("refresh-"));
    // The two API calls used two different JWTs.
    let api = gate.calls_to("POST", "/api/v1/datasets/query");
    assert_eq!(api.len(), 2);
    assert_ne!(api[0].auth, api[1].auth);
    assert!(api[0].auth.as_deref().unwrap().starts_with("Bearer ey"));
}

#[tokio::test]
async fn rejected_token_is_renewed_once_then_by_login() {
    let gate = FakeGate::start().await;
    let b = DataloopBackend::new(gate.bot_config()).unwrap();
    b.list_datasets().await.unwrap();
    gate.revoke_tokens();
    b.list_datasets().await.unwrap();
    assert_eq!(gate.with(|s| (s.logins, s.refreshes)), (1, 1));
    // Refresh token revoked too: the bot logs in again.
    gate.revoke_tokens();
    gate.revoke_refresh_tokens();
    b.list_datasets().await.unwrap();
    assert_eq!(gate.with(|s| (s.logins, s.refreshes)), (2, 1));
}

#[tokio::test]
async fn bad_credentials_are_unauthorized_without_retries() {
    let gate = FakeGate::start().await;
    let mut cfg = gate.api_key_config();
    cfg.auth = DataloopAuth::ApiKey("wrong-key".into());
    let b = DataloopBackend::new(cfg).unwrap();
    let e = b.list_datasets().await.unwrap_err();
    assert!(matches!(e, StoreError::Unauthorized(_)), "{e:?}");
    assert!(e.to_string().contains("POST /datasets/query"), "{e}");
    assert_eq!(gate.calls().len(), 1, "a 401 on an API key is final");

    let mut cfg = gate.bot_config();
    cfg.auth = DataloopAuth::Bot {
        username: fake_gate::BOT_USER.into(),
        password: "nope".into(),
    };
    let e = DataloopBackend::new(cfg)
        .unwrap()
        .list_datasets()
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Unauthorized(ref m) if m.contains("login")),
        "{e:?}"
    );

    let mut cfg = gate.api_key_config();
    cfg.auth = DataloopAuth::Token {
        token: "expired.jwt.x".into(),
        refresh_token: None,
    };
    gate.with(|s| s.calls.clear());
    let e = DataloopBackend::new(cfg)
        .unwrap()
        .list_datasets()
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Unauthorized(ref m) if m.contains("no refresh token")),
        "{e:?}"
    );
}

// ---- retries, timeouts, error mapping ----

#[tokio::test]
async fn rate_limit_is_retried_then_succeeds() {
    let (gate, b) = setup().await;
    gate.fail("POST", "/datasets/query", 429, 2, Some("0"));
    gate.fail("POST", "/datasets/query", 503, 1, None);
    let t = Instant::now();
    assert!(b.list_datasets().await.unwrap().is_empty());
    assert_eq!(gate.calls_to("POST", "/datasets/query").len(), 4);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (gate, b) = setup().await;
    gate.fail("POST", "/datasets/query", 429, 1, Some("1"));
    let t = Instant::now();
    b.list_datasets().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    // A Retry-After beyond the configured maximum ends the retries at once.
    gate.fail("POST", "/datasets/query", 429, 1, Some("3600"));
    let e = b.list_datasets().await.unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(ref m) if m.contains("3600")),
        "{e:?}"
    );
}

#[tokio::test]
async fn server_errors_are_bounded() {
    let (gate, b) = setup().await;
    gate.fail("POST", "/datasets/query", 503, 100, None);
    let e = b.list_datasets().await.unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(ref m) if m.contains("after 4 attempts")),
        "{e:?}"
    );
    assert_eq!(
        gate.calls_to("POST", "/datasets/query").len(),
        4,
        "1 try + 3 retries"
    );

    let (gate, b) = setup().await;
    gate.fail("POST", "/datasets/query", 500, 100, None);
    let e = b.list_datasets().await.unwrap_err();
    assert!(matches!(e, StoreError::Remote { status: 500, .. }), "{e:?}");
    assert_eq!(
        e.kind(),
        cliptune_store::ErrorKind::Remote,
        "answered as 502 by the worker"
    );
}

#[tokio::test]
async fn client_errors_map_to_store_errors() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("photos").await.unwrap();
    gate.fail("GET", "/datasets/", 403, 1, None);
    let e = b.get_dataset(&ds.id).await.unwrap_err();
    assert!(matches!(e, StoreError::Forbidden(_)), "{e:?}");
    assert_eq!(
        gate.calls_to("GET", "/datasets/").len(),
        1,
        "403 is not retried"
    );

    let missing = "0123456789abcdef01234567";
    match b.get_dataset(missing).await.unwrap_err() {
        StoreError::NotFound { kind, id } => assert_eq!((kind, id.as_str()), ("dataset", missing)),
        e => panic!("{e:?}"),
    }
    // Not a Dataloop id: cannot exist, and never reaches a URL.
    let n = gate.calls().len();
    assert!(matches!(
        b.get_item("../../etc").await,
        Err(StoreError::NotFound { kind: "item", .. })
    ));
    assert_eq!(gate.calls().len(), n);

    let e = b.create_dataset("photos").await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");

    let e = b
        .query_items(
            &ds.id,
            &ItemQuery {
                filter: Some(json!({"name": {"$regex": "x"}})),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid { ref message, .. } if message.contains("$regex")),
        "{e:?}"
    );
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let gate = FakeGate::start().await;
    let mut cfg = gate.api_key_config();
    cfg.request_timeout = Duration::from_millis(200);
    cfg.max_retries = 1;
    let b = DataloopBackend::new(cfg).unwrap();
    let ds = b.create_dataset("slow").await.unwrap();
    gate.delay("GET", "/datasets/", Duration::from_millis(800), 1);
    assert_eq!(b.get_dataset(&ds.id).await.unwrap().id, ds.id);
    gate.delay("GET", "/datasets/", Duration::from_millis(800), 2);
    let e = b.get_dataset(&ds.id).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(ref m) if m.contains("timed out")),
        "{e:?}"
    );
}
