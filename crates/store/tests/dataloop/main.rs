//! The Dataloop backend against the fake gate (crates/gate): auth, retries, errors,
//! paging, and each endpoint's request shape. Nothing leaves 127.0.0.1.

use cliptune_gate as fake_gate;

use cliptune_store::*;
use fake_gate::FakeGate;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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
    assert_eq!(e.http_status(), 502);
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

// ---- items ----

#[tokio::test]
async fn paging_walks_every_page_in_filename_order() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("pets").await.unwrap();
    for n in ["e.jpg", "b.jpg", "d.jpg", "a.jpg", "c.jpg"] {
        b.upload_item(&ds.id, img(n, Some("cap"), None))
            .await
            .unwrap();
    }
    let mut q = ItemQuery {
        page_size: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    for (page, more) in [(0, true), (1, true), (2, false)] {
        q.page = page;
        let p = b.query_items(&ds.id, &q).await.unwrap();
        assert_eq!(
            (p.page, p.has_next_page, p.total_items_count),
            (page, more, 5)
        );
        seen.extend(p.items.into_iter().map(|i| i.name));
    }
    assert_eq!(seen, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]);
    let body = &gate.calls_to("POST", &format!("/datasets/{}/query", ds.id))[0].body;
    assert_eq!(body["resource"], "items");
    assert_eq!(
        body["filter"],
        json!({"$and": [{"hidden": false}, {"type": "file"}]})
    );
    assert_eq!(
        (body["page"].clone(), body["pageSize"].clone()),
        (json!(0), json!(2))
    );
    assert_eq!(b.all_items(&ds.id, None).await.unwrap().len(), 5);
}

#[tokio::test]
async fn items_upload_patch_stream_and_captions() {
    let (gate, b) = setup().await;
    let images = b.create_dataset("images").await.unwrap();
    let prompts = b.create_dataset("prompts").await.unwrap();
    let cat = b
        .upload_item(&images.id, img("/cats/1.jpg", None, Some("train")))
        .await
        .unwrap();
    assert_eq!(
        (cat.dir.as_str(), cat.filename.as_str(), cat.name.as_str()),
        ("/cats", "/cats/1.jpg", "1.jpg")
    );
    assert_eq!(cat.mimetype(), Some("image/jpeg"));
    assert!(cat.has_tag("train"));
    let up = &gate.calls_to("POST", "/items")[0];
    assert_eq!(up.query, "mode=overwrite");

    // Overwrite keeps the id and replaces bytes.
    let mut again = img("cats/1.jpg", Some("a cat"), None);
    again.bytes = b"new bytes".to_vec();
    let cat2 = b.upload_item(&images.id, again).await.unwrap();
    assert_eq!(cat2.id, cat.id);
    assert_eq!(b.item_bytes(&cat.id).await.unwrap(), b"new bytes");

    let mut edited = cat2.clone();
    edited.description = Some("a black cat".into());
    edited.hidden = true;
    let edited = b.update_item(&edited).await.unwrap();
    assert_eq!(edited.own_caption(), Some("a black cat"));
    assert!(edited.hidden);
    // Only the change goes out, and without ?system=true as no system metadata changed.
    let patch = gate.calls_to("PATCH", "/items/").pop().unwrap();
    assert_eq!(patch.query, "");
    assert_eq!(
        patch.body,
        json!({"description": "a black cat", "hidden": true})
    );

    // A prompt item in another dataset, captioned by a free-text annotation.
    let prompt = PromptContent::to_json(&cat.id, Some("describe"));
    let p = b
        .upload_item(
            &prompts.id,
            NewItem {
                filename: "p1.json".into(),
                bytes: prompt.to_string().into_bytes(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(p.is_prompt());
    b.add_annotation(&p.id, NewAnnotation::free_text("a cat on a mat"))
        .await
        .unwrap();
    let ann = gate.calls_to("POST", "/annotations").pop().unwrap();
    assert_eq!(
        ann.body,
        json!([{"type": "text", "label": "free-text", "coordinates": "a cat on a mat"}])
    );
    let resolved = b.caption(&p).await.unwrap();
    assert_eq!(resolved.caption.as_deref(), Some("a cat on a mat"));
    assert_eq!(resolved.image_item.unwrap().id, cat.id);

    let hidden = NewItem {
        hidden: true,
        ..img("h.jpg", None, None)
    };
    assert!(b.upload_item(&images.id, hidden).await.unwrap().hidden);
    assert!(matches!(
        b.upload_item(&images.id, img("../x.jpg", None, None)).await,
        Err(StoreError::Invalid { .. })
    ));
}

#[tokio::test]
async fn item_updates_send_the_change_and_flag_system_changes() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("d").await.unwrap();
    let it = b
        .upload_item(&ds.id, img("/a.jpg", Some("a"), Some("train")))
        .await
        .unwrap();
    let patches = || gate.calls_to("PATCH", "/items/");
    // Unchanged: no request at all.
    assert_eq!(b.update_item(&it).await.unwrap(), it);
    assert!(patches().is_empty());

    let mut user = it.clone();
    set_path(&mut user.metadata, &["user", "label"], json!("cat"));
    b.update_item(&user).await.unwrap();
    let p = patches().pop().unwrap();
    assert_eq!(
        (p.query.as_str(), &p.body),
        ("", &json!({"metadata": {"user": {"label": "cat"}}}))
    );

    // assign_subset("validation") as dtlpy writes it: the tags only, with ?system=true.
    let mut tags = b.get_item(&it.id).await.unwrap();
    set_path(
        &mut tags.metadata,
        &["system", "tags"],
        json!({"train": null, "validation": true, "test": null}),
    );
    let saved = b.update_item(&tags).await.unwrap();
    let p = patches().pop().unwrap();
    assert_eq!(p.query, "system=true");
    assert_eq!(
        p.body,
        json!({"metadata": {"system": {"tags": {"train": null, "validation": true, "test": null}}}})
    );
    assert!(saved.has_tag("validation") && !saved.has_tag("train"));
    // The gate's own system fields were not sent, so they are intact.
    assert_eq!(saved.metadata["system"]["mimetype"], "image/jpeg");
    assert_eq!(saved.metadata["user"]["label"], "cat");
}

/// The fake gate refuses what the real one would not take (or would silently drop), so the
/// backend tests above cannot pass by accident.
#[tokio::test]
async fn fake_gate_enforces_payload_rules() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("d").await.unwrap();
    let it = b
        .upload_item(&ds.id, img("/a.jpg", None, Some("train")))
        .await
        .unwrap();
    let base = gate.seed_model("base", "pre-trained", json!({}));
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: String, body: Value| {
        let req = http
            .request(method, format!("{}{path}", gate.url))
            .bearer_auth(&gate.api_key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    let system_change = json!({"metadata": {"system": {"tags": {"train": null}}}});
    let (st, msg) = send(
        reqwest::Method::PATCH,
        format!("/items/{}", it.id),
        system_change.clone(),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("system=true"), "{msg}");
    let (st, _) = send(
        reqwest::Method::PATCH,
        format!("/items/{}?system=true", it.id),
        system_change,
    )
    .await;
    assert_eq!(st, 200);

    let mut model = gate.model_json(&base);
    model["metadata"]["system"]["subsets"] = json!({"train": {}, "validation": {}});
    let (st, msg) = send(
        reqwest::Method::PATCH,
        format!("/ml/models/{base}"),
        model.clone(),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("system=true"), "{msg}");
    let (st, _) = send(
        reqwest::Method::PATCH,
        format!("/ml/models/{base}?system=true"),
        model,
    )
    .await;
    assert_eq!(st, 200);

    // A clone must carry the source's package and types, as dtlpy's model.clone does.
    let (st, msg) = send(
        reqwest::Method::POST,
        format!("/ml/models/{base}/clone"),
        json!({"name": "c", "projectId": gate.project_id, "outputType": "embedding", "inputType": "image"}),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("packageId"), "{msg}");
    // A create without the types dtlpy always sends.
    let (st, msg) = send(
        reqwest::Method::POST,
        "/ml/models".into(),
        json!({"name": "n", "projectId": gate.project_id}),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("outputType"), "{msg}");
    // A body wrapped in a body.
    let (st, msg) = send(
        reqwest::Method::POST,
        format!("/datasets/{}/query", ds.id),
        json!({"filter": {"filter": {"hidden": false}}, "resource": "items", "page": 0, "pageSize": 10}),
    )
    .await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("filter"), "{msg}");
}

#[tokio::test]
async fn subset_bodies_are_sent_unwrapped() {
    let (gate, b) = setup().await;
    let ds = b.create_dataset("d").await.unwrap();
    for (name, tag) in [("/t.jpg", "train"), ("/v.jpg", "validation")] {
        b.upload_item(&ds.id, img(name, None, Some(tag)))
            .await
            .unwrap();
    }
    let body = json!({"filter": {"$and": [{"hidden": false},
        {"$or": [{"metadata": {"system": {"tags": {"train": true}}}}]}, {"type": "file"}]}});
    let got = b.all_items(&ds.id, Some(body.clone())).await.unwrap();
    assert_eq!(
        got.iter().map(|i| i.filename.as_str()).collect::<Vec<_>>(),
        ["/t.jpg"]
    );
    let sent = gate.calls_to("POST", "/query").pop().unwrap();
    assert_eq!(sent.body["filter"], body["filter"]);
    assert_eq!(sent.body["resource"], "items");
    // A join cannot be evaluated by the embedded store, so neither backend takes one.
    let err = b
        .query_items(
            &ds.id,
            &ItemQuery {
                filter: Some(json!({"filter": {}, "join": {"filter": {}}})),
                ..ItemQuery::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("join"), "{err}");
}

// ---- models ----

#[tokio::test]
async fn model_create_sends_what_dtlpy_sends() {
    let gate = FakeGate::start().await;
    let mut cfg = gate.api_key_config();
    let app = json!({"id": "fa4e000000000000000000aa", "componentName": "cliptune-clip",
        "dpkName": "cliptune", "dpkVersion": "0.1.0", "dpkId": "fa4e000000000000000000ab"});
    cfg.model_app = Some(cliptune_store::dataloop::ModelApp {
        package_id: "fa4e000000000000000000ac".into(),
        module_name: "cliptune-module".into(),
        app: Some(app.clone()),
    });
    let b = DataloopBackend::new(cfg).unwrap();
    let m = b
        .create_model(NewModel {
            name: "from-app".into(),
            status: ModelStatus::PreTrained,
            configuration: Default::default(),
            dataset_id: None,
            description: None,
            metadata: json!({}),
        })
        .await
        .unwrap();
    let body = &gate
        .calls_to("POST", "/ml/models")
        .last()
        .unwrap()
        .body
        .clone();
    assert_eq!(body["packageId"], "fa4e000000000000000000ac");
    assert_eq!(body["moduleName"], "cliptune-module");
    assert_eq!(body["app"], app);
    assert_eq!(
        (body["outputType"].as_str(), body["inputType"].as_str()),
        (Some("embedding"), Some("image"))
    );
    assert_eq!(body["artifacts"], json!([]));
    assert_eq!(
        gate.model_json(&m.id)["packageId"],
        "fa4e000000000000000000ac"
    );

    // A clone carries the source's package and types (dtlpy's model.clone).
    let c = b.clone_model(&m.id, CloneModel::default()).await.unwrap();
    let clone_body = &gate.calls_to("POST", "/clone")[0].body;
    assert_eq!(clone_body["packageId"], "fa4e000000000000000000ac");
    assert_eq!(clone_body["outputType"], "embedding");
    assert_eq!(clone_body["inputType"], "image");
    assert_eq!(gate.model_json(&c.id)["moduleName"], "cliptune-module");

    // Without an app the types still go, the package does not.
    let (gate2, b2) = setup().await;
    b2.create_model(NewModel {
        name: "bare".into(),
        status: ModelStatus::PreTrained,
        configuration: Default::default(),
        dataset_id: None,
        description: None,
        metadata: json!({}),
    })
    .await
    .unwrap();
    let body = &gate2
        .calls_to("POST", "/ml/models")
        .last()
        .unwrap()
        .body
        .clone();
    assert!(body.get("packageId").is_none(), "{body}");
    assert_eq!(body["outputType"], "embedding");
}

#[tokio::test]
async fn model_system_metadata_changes_use_system_true() {
    let (gate, b) = setup().await;
    let id = gate.seed_model("m", "created", json!({}));
    let mut m = b.get_model(&id).await.unwrap();
    m.status = ModelStatus::Training;
    let m = b.update_model(&m).await.unwrap();
    assert_eq!(
        gate.calls_to("PATCH", "/ml/models/").pop().unwrap().query,
        ""
    );
    let mut m2 = m.clone();
    let subsets = Subsets {
        train: json!({"filter": {"metadata": {"system": {"tags": {"train": true}}}}}),
        validation: json!({"filter": {"metadata": {"system": {"tags": {"validation": true}}}}}),
    };
    m2.set_subsets(&subsets);
    let m2 = b.update_model(&m2).await.unwrap();
    assert_eq!(
        gate.calls_to("PATCH", "/ml/models/").pop().unwrap().query,
        "system=true"
    );
    assert_eq!(m2.subsets(), Some(subsets));
    assert_eq!(
        gate.model_json(&id)["metadata"]["system"]["subsets"]["train"]["filter"]["metadata"]
            ["system"]["tags"]["train"],
        true
    );
}

#[tokio::test]
async fn clone_polls_while_cloning_and_merges_config() {
    let (gate, b) = setup().await;
    let base = gate.seed_model("clip-base", "pre-trained", json!({"a": 1, "b": 2}));
    gate.with(|s| s.clone_polls = 3);
    let opts = CloneModel {
        configuration: Some(serde_json::from_value(json!({"b": 3, "c": 4})).unwrap()),
        ..Default::default()
    };
    let c = b.clone_model(&base, opts).await.unwrap();
    assert_eq!(c.status, ModelStatus::Created);
    assert_eq!(
        Value::Object(c.configuration.clone()),
        json!({"a": 1, "b": 3, "c": 4})
    );
    assert_eq!(c.base_model_id.as_deref(), Some(base.as_str()));
    assert!(
        c.artifacts.is_empty(),
        "the clone must not keep the base's artifacts"
    );
    assert_eq!(c.subsets(), Some(Subsets::default_filters()));
    let stamp = c.name.strip_prefix("clip-base_").unwrap();
    assert_eq!(stamp.len(), "2024_05_01-T12_00_00".len(), "{}", c.name);
    assert!(gate.calls_to("GET", &format!("/ml/models/{}", c.id)).len() >= 3);
    let body = &gate.calls_to("POST", "/clone")[0].body;
    assert_eq!(body["status"], "created");
    assert_eq!(body["projectId"], json!(gate.project_id));
    assert_eq!(
        body["metadata"]["system"]["subsets"]["train"],
        default_subset_filter("train")
    );
    // The base keeps its artifact.
    assert_eq!(b.get_model(&base).await.unwrap().artifacts.len(), 1);

    gate.with(|s| s.clone_polls = 0);
    let named = CloneModel {
        name: Some(c.name.clone()),
        ..Default::default()
    };
    let c2 = b.clone_model(&base, named).await.unwrap();
    assert_eq!(c2.name, format!("{}_v1", c.name));
}

#[tokio::test]
async fn model_update_preserves_unknown_fields() {
    let (gate, b) = setup().await;
    let id = gate.seed_model("m", "created", json!({}));
    let mut m = b.get_model(&id).await.unwrap();
    m.status = ModelStatus::Training;
    m.tags = vec!["x".into()];
    let m = b.update_model(&m).await.unwrap();
    assert_eq!(
        (m.status, m.tags.clone()),
        (ModelStatus::Training, vec!["x".to_string()])
    );
    assert_eq!(
        gate.model_json(&id)["packageId"],
        "fa4e00000000000000000999"
    );
    let dup = gate.seed_model("other", "created", json!({}));
    let mut clash = b.get_model(&dup).await.unwrap();
    clash.name = "m".into();
    assert!(matches!(
        b.update_model(&clash).await,
        Err(StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn artifacts_round_trip_and_stale_files_go() {
    let (gate, b) = setup().await;
    let id = b
        .create_model(NewModel {
            name: "trained-1".into(),
            status: ModelStatus::Training,
            configuration: Default::default(),
            dataset_id: None,
            description: None,
            metadata: json!({}),
        })
        .await
        .unwrap()
        .id;
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub")).unwrap();
    std::fs::write(src.path().join("weights.safetensors"), vec![7u8; 100_000]).unwrap();
    std::fs::write(src.path().join("sub/config.json"), b"{\"dim\": 512}").unwrap();
    let m = b.upload_artifacts(&id, src.path()).await.unwrap();
    let paths: Vec<_> = m
        .artifacts
        .iter()
        .map(|a| (a.path.as_str(), a.size))
        .collect();
    assert_eq!(
        paths,
        [("sub/config.json", 12), ("weights.safetensors", 100_000)]
    );
    assert!(m.artifacts.iter().all(|a| a.sha256.len() == 64));
    let raw = gate.model_json(&id);
    assert!(raw["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["type"] == "item"));
    let uploads = gate.calls_to(
        "POST",
        &format!("/datasets/{}/items", gate.with(|s| s.binaries_id.clone())),
    );
    let paths: Vec<String> = uploads
        .iter()
        .map(|c| {
            c.body
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "path")
                .unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        paths,
        [
            "/artifacts/models/trained-1/sub/config.json",
            "/artifacts/models/trained-1/weights.safetensors"
        ]
    );

    let dst = tempfile::tempdir().unwrap();
    b.download_artifacts(&id, dst.path()).await.unwrap();
    assert_eq!(
        std::fs::read(dst.path().join("weights.safetensors")).unwrap(),
        vec![7u8; 100_000]
    );
    assert_eq!(
        std::fs::read(dst.path().join("sub/config.json")).unwrap(),
        b"{\"dim\": 512}"
    );

    std::fs::remove_file(src.path().join("sub/config.json")).unwrap();
    let m = b.upload_artifacts(&id, src.path()).await.unwrap();
    assert_eq!(m.artifacts.len(), 1);
    assert_eq!(
        gate.calls_to("DELETE", "/items/").len(),
        1,
        "the stale config.json item is deleted"
    );
}

#[tokio::test]
async fn metrics_publish_and_list() {
    let (gate, b) = setup().await;
    let id = gate.seed_model("m", "training", json!({}));
    let s = |x: f64, legend: &str| MetricSample {
        model_id: id.clone(),
        dataset_id: None,
        figure: "loss".into(),
        legend: legend.into(),
        data: MetricPoint {
            x,
            y: 1.0 / (x + 1.0),
        },
        created_at: String::new(),
    };
    assert_eq!(
        b.publish_metrics(&[s(0.0, "train"), s(0.0, "val"), s(1.0, "train")])
            .await
            .unwrap(),
        3
    );
    let listed = b.list_metrics(&id).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        (listed[2].data.x, listed[2].legend.as_str()),
        (1.0, "train")
    );
    assert_eq!(
        gate.calls_to("POST", "/ml/metrics/publish")[0].body[0]["figure"],
        "loss"
    );
    assert!(matches!(
        b.publish_metrics(&[MetricSample {
            model_id: "0123456789abcdef01234567".into(),
            ..s(0.0, "x")
        }])
        .await,
        Err(StoreError::NotFound { kind: "model", .. })
    ));
}

// ---- pipelines and variables ----

#[tokio::test]
async fn variables_patch_in_sdk_form_and_promotion_checks_first() {
    let (gate, b) = setup().await;
    let base = gate.seed_model("base", "pre-trained", json!({}));
    let var = |name: &str, t: &str, value: Value| Variable {
        id: String::new(),
        name: name.into(),
        reference: String::new(),
        var_type: t.into(),
        value,
        description: None,
    };
    let p = b
        .create_pipeline(NewPipeline {
            name: "clip".into(),
            variables: vec![
                var("Newest CLIP model", "Model", json!(base)),
                var("Model config", "Json", json!({"num_epochs": 1})),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let vars = b
        .update_variables(
            &p.id,
            &[VariableUpdate {
                name: "Model config".into(),
                value: json!({"num_epochs": 2}),
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        vars.iter()
            .find(|v| v.name == "Model config")
            .unwrap()
            .value,
        json!({"num_epochs": 2})
    );
    let patch = gate.calls_to("PATCH", "/variables").pop().unwrap();
    let sent = patch.body["variables"]
        .as_array()
        .expect("SDK form {\"variables\": [...]}");
    assert_eq!(sent.len(), 2, "the whole list is sent");
    assert!(sent.iter().all(|v| v["reference"] == json!(p.id)));

    let missing = b
        .update_variables(
            &p.id,
            &[VariableUpdate {
                name: "nope".into(),
                value: json!(1),
            }],
        )
        .await;
    assert!(matches!(
        missing,
        Err(StoreError::NotFound {
            kind: "variable",
            ..
        })
    ));

    // A model still training is refused and nothing is written.
    let patches = gate.calls_to("PATCH", "/variables").len();
    let new = b.clone_model(&base, CloneModel::default()).await.unwrap();
    let e = b
        .promote_model_variable(&p.id, "Newest CLIP model", &new.id)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    let mut trained = b.get_model(&new.id).await.unwrap();
    trained.status = ModelStatus::Trained;
    b.update_model(&trained).await.unwrap();
    let e = b
        .promote_model_variable(&p.id, "Newest CLIP model", &new.id)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(ref m) if m.contains("no stored artifacts")),
        "{e:?}"
    );
    assert_eq!(gate.calls_to("PATCH", "/variables").len(), patches);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.bin"), b"w").unwrap();
    b.upload_artifacts(&new.id, dir.path()).await.unwrap();
    let v = b
        .promote_model_variable(&p.id, "Newest CLIP model", &new.id)
        .await
        .unwrap();
    assert_eq!(v.value, json!(new.id));
    assert_eq!(
        b.get_variables(&p.id).await.unwrap()[0].value,
        json!(new.id)
    );
    assert!(matches!(
        b.promote_model_variable(&p.id, "Model config", &new.id)
            .await,
        Err(StoreError::Invalid { .. })
    ));

    let run = b
        .execute_pipeline(&p.id, serde_json::Map::new())
        .await
        .unwrap();
    assert!(run["id"].as_str().is_some_and(is_id));
    assert_eq!(
        gate.calls_to("POST", "/execute")[0].body,
        json!({"pipeline": {"input": {}}})
    );
    assert_eq!(b.pipeline_by_name("clip").await.unwrap().id, p.id);
}

// ---- executions ----

#[tokio::test]
async fn executions_progress_then_finish() {
    let (gate, b) = setup().await;
    let e = b
        .create_execution(NewExecution {
            function_name: "train".into(),
            input: json!({"model": {"model_id": "x"}}),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(e.status, ExecutionStatus::Created);
    assert_eq!(
        gate.calls_to("POST", &format!("/executions/{}", gate.service_id))[0].body["functionName"],
        "train"
    );
    let e = b
        .progress_execution(
            &e.id,
            ExecutionProgress {
                status: Some(ExecutionStatus::InProgress),
                percent_complete: Some(50),
                message: Some("epoch 1".into()),
                output: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (e.status, e.latest_status.percent_complete),
        (ExecutionStatus::InProgress, 50)
    );
    assert!(matches!(
        b.progress_execution(
            &e.id,
            ExecutionProgress {
                percent_complete: Some(101),
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Invalid { .. })
    ));
    let e = b
        .finish_execution(
            &e.id,
            ExecutionStatus::Failed,
            None,
            Some("out of memory".into()),
        )
        .await
        .unwrap();
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(e.latest_status.error.as_deref(), Some("out of memory"));
    assert_eq!(e.status_log.len(), 3);
    assert!(matches!(
        b.progress_execution(
            &e.id,
            ExecutionProgress {
                percent_complete: Some(60),
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
    let listed = b
        .list_executions(&ExecutionQuery {
            status: Some(ExecutionStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

// ---- feature sets and vectors ----

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

#[tokio::test]
async fn feature_set_array_answer_and_vectors() {
    let (gate, b) = setup().await;
    let model = gate.seed_model("m", "trained", json!({}));
    let fs = b.feature_set_for_model(&model, "m", 3).await.unwrap();
    assert_eq!((fs.size, fs.model_id.as_deref()), (3, Some(model.as_str())));
    assert_eq!(
        b.feature_set_for_model(&model, "m", 3).await.unwrap().id,
        fs.id
    );
    assert_eq!(
        gate.calls_to("POST", "/features/sets")
            .iter()
            .filter(|c| !c.path.ends_with("query"))
            .count(),
        1
    );
    assert!(matches!(
        b.feature_set_for_model(&model, "m", 4).await,
        Err(StoreError::Conflict(_))
    ));

    let ds = b.create_dataset("d").await.unwrap();
    let mut items = Vec::new();
    for (n, tag) in [
        ("a.jpg", "train"),
        ("b.jpg", "validation"),
        ("c.jpg", "train"),
    ] {
        items.push(
            b.upload_item(&ds.id, img(n, None, Some(tag)))
                .await
                .unwrap(),
        );
    }
    let raw = [[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]];
    let vecs: Vec<NewVector> = items
        .iter()
        .zip(raw)
        .map(|(it, v)| NewVector {
            entity_id: it.id.clone(),
            dataset_id: ds.id.clone(),
            value: unit(&v),
        })
        .collect();
    assert_eq!(
        b.upsert_vectors(&fs.id, &vecs).await.unwrap(),
        UpsertSummary {
            inserted: 3,
            updated: 0
        }
    );
    // Re-upserting one replaces it: no duplicate.
    let moved = NewVector {
        value: unit(&[0.0, 1.0, 0.0]),
        ..vecs[1].clone()
    };
    assert_eq!(
        b.upsert_vectors(&fs.id, &[moved]).await.unwrap(),
        UpsertSummary {
            inserted: 0,
            updated: 1
        }
    );
    assert_eq!(gate.vector_count(), 3);
    assert_eq!(
        b.get_vector(&fs.id, &items[1].id).await.unwrap().value,
        unit(&[0.0, 1.0, 0.0])
    );
    let mut ents = b.vector_entities(&fs.id, Some(&ds.id)).await.unwrap();
    ents.sort();
    let mut want: Vec<_> = items.iter().map(|i| i.id.clone()).collect();
    want.sort();
    assert_eq!(ents, want);
    let bad = NewVector {
        value: vec![1.0, 2.0],
        ..vecs[0].clone()
    };
    assert!(matches!(
        b.upsert_vectors(&fs.id, &[bad]).await,
        Err(StoreError::Invalid { .. })
    ));

    // Cosine scores, best first; the query vector need not be normalised.
    let q = NearestQuery {
        vector: vec![2.0, 1.0, 0.0],
        k: 2,
        ..Default::default()
    };
    let got = b.nearest(&fs.id, &q).await.unwrap();
    let ids: Vec<_> = got.iter().map(|n| n.entity_id.clone()).collect();
    assert_eq!(ids, [items[0].id.clone(), items[1].id.clone()]);
    let qn = unit(&[2.0, 1.0, 0.0]);
    assert!((got[0].score - qn[0]).abs() < 1e-6, "{got:?}");
    assert!((got[1].score - qn[1]).abs() < 1e-6, "{got:?}");
    let sent = gate
        .calls_to("POST", "/features/vectors/query")
        .pop()
        .unwrap()
        .body;
    assert_eq!(
        sent["filter"]["value"]["$euclid"]["$euclidSort"],
        json!({"eu_dist": "ascending"})
    );

    // Within a dataset with an item filter: the join on feature_vectors.
    let q = NearestQuery {
        vector: vec![2.0, 1.0, 0.0],
        k: 5,
        dataset_id: Some(ds.id.clone()),
        filter: Some(json!({"metadata.system.tags.train": true})),
    };
    let got = b.nearest(&fs.id, &q).await.unwrap();
    let ids: Vec<_> = got.iter().map(|n| n.entity_id.clone()).collect();
    assert_eq!(ids, [items[0].id.clone(), items[2].id.clone()]);
    assert!(got[1].score.abs() < 1e-6);
    let join = &gate
        .calls_to("POST", &format!("/datasets/{}/query", ds.id))
        .pop()
        .unwrap()
        .body["join"];
    assert_eq!(
        join["on"],
        json!({"resource": "feature_vectors", "local": "entityId", "forigen": "id"})
    );
    assert!(matches!(
        b.nearest(
            &fs.id,
            &NearestQuery {
                vector: vec![0.0; 3],
                k: 1,
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::Invalid { .. })
    ));
}
