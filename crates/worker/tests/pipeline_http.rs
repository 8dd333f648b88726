//! The whole pipeline over HTTP against a real server and a real SQLite store, a failing
//! training, the node endpoints, and the API's contract (auth, body limit, error shapes,
//! the committed OpenAPI document).

mod pipeline_fixture;

mod http_json;
use cliptune_store::prelude::*;
use cliptune_store::ModelStatus;
use http_json::get_json;
use pipeline_fixture as fx;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn poll(http: &reqwest::Client, url: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e: Value = get_json(http, format!("{url}/executions/{id}")).await;
        let status = e["status"].as_str().unwrap().to_string();
        if ["success", "failed", "aborted", "canceled", "system-failure"].contains(&status.as_str())
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "execution {id} still {status}: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A trained model's artifacts carry Dataloop's adapter file (`best.pt`, the default
/// `weights_filename`) beside cliptune's own, and it holds the same model: read alone (with
/// the architecture the adapter's `model_name` gives: a state dict does not record the head
/// count or the activation), it embeds exactly as the native files.
async fn same_model_in_best_pt(store: &dyn Platform, model_id: &str) {
    use cliptune_clip::{checkpoint, LoadOptions};
    use tch::{Device, Kind, Tensor};
    let model = store.get_model(model_id).await.unwrap();
    let paths: Vec<&str> = model.artifacts.iter().map(|a| a.path.as_str()).collect();
    for f in ["best.pt", "clip_config.json", "model.safetensors"] {
        assert!(paths.contains(&f), "{f} not among {paths:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    store
        .download_artifacts(model_id, dir.path())
        .await
        .unwrap();
    // Both formats present: the folder loads as cliptune's own.
    assert_eq!(
        checkpoint::detect(dir.path()).unwrap(),
        checkpoint::Format::Native
    );
    let native = checkpoint::load(dir.path(), Device::Cpu, &LoadOptions::default()).unwrap();
    let options = LoadOptions {
        activation: None,
        config: Some(native.config().clone()),
    };
    let adapter = checkpoint::load(&dir.path().join("best.pt"), Device::Cpu, &options).unwrap();
    let size = native.config().vision.image_size;
    let pixels = Tensor::randn([3, 3, size, size], (Kind::Float, Device::Cpu));
    let a = native.image_features(&pixels, true).unwrap();
    let b = adapter.image_features(&pixels, true).unwrap();
    assert!(a.equal(&b), "image embeddings differ");
    let context = native.config().text.context_length;
    let ids = Tensor::arange(context, (Kind::Int64, Device::Cpu))
        .remainder(native.config().text.vocab_size)
        .view([1, -1]);
    let a = native.text_features(&ids, true).unwrap();
    let b = adapter.text_features(&ids, true).unwrap();
    assert!(a.equal(&b), "text embeddings differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_end_to_end_over_http() {
    let s = fx::store(40).await;
    let server = fx::serve(&s, fx::config()).await;
    let (url, http) = (&server.url, reqwest::Client::new());
    let pid = &s.pipeline.id;

    // Both body forms of PATCH .../variables; names are stored as ids.
    let r = http
        .patch(format!("{url}/pipelines/{pid}/variables"))
        .json(&json!({"variables": [
            {"name": "Dataset with captions", "value": "shapes"},
            {"name": "Base CLIP model", "value": "tiny-base"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .patch(format!("{url}/pipelines/{}/variables", s.pipeline.name))
        .json(&json!([{"name": "Model config", "value": {"num_epochs": 2, "batch_size": 8, "learning_rate": 5e-4, "eval_batch_size": 16}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = get_json(&http, format!("{url}/pipelines/{pid}")).await;
    let var = |p: &Value, n: &str| {
        p["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(var(&p, "Dataset with captions"), json!(s.dataset.id));
    assert_eq!(var(&p, "Base CLIP model"), json!(s.base.id));
    assert_eq!(var(&p, "Newest CLIP model"), Value::Null);

    // Run: 202 with the run execution, then the node executions in order (the embedding
    // branch's 40 items fit one embed-items execution).
    let r = http
        .post(format!("{url}/pipelines/{pid}/execute"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run: Value = r.json().await.unwrap();
    let run = poll(&http, url, run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "success", "{run}");
    let nodes: Vec<Value> = get_json(
        &http,
        format!(
            "{url}/executions?pipeline_execution_id={}",
            run["id"].as_str().unwrap()
        ),
    )
    .await;
    let mut functions: Vec<&str> = nodes
        .iter()
        .map(|n| n["functionName"].as_str().unwrap())
        .collect();
    functions.reverse();
    assert_eq!(
        functions,
        ["create-model", "train", "update-variable", "embed-items"]
    );
    assert!(nodes
        .iter()
        .all(|n| n["status"] == "success" && n["percentComplete"] == 100));

    let train = nodes.iter().find(|n| n["functionName"] == "train").unwrap();
    let new_id = train["output"]["model"]["model_id"]
        .as_str()
        .unwrap()
        .to_string();
    let baseline = &train["output"]["metrics"]["baseline"];
    let fine = &train["output"]["metrics"]["final"];
    assert!(
        baseline["val_loss"].is_number() && fine["val_loss"].is_number(),
        "{train}"
    );
    let model = s.store.get_model(&new_id).await.unwrap();
    assert_eq!(model.status, ModelStatus::Trained);
    assert_eq!(model.base_model_id.as_deref(), Some(s.base.id.as_str()));
    assert!(!model.artifacts.is_empty());
    same_model_in_best_pt(s.store.as_ref(), &new_id).await;
    assert!(
        !s.store.list_metrics(&new_id).await.unwrap().is_empty(),
        "epoch metrics published"
    );
    let update = nodes
        .iter()
        .find(|n| n["functionName"] == "update-variable")
        .unwrap();
    // The first run's placeholder is the base model.
    assert_eq!(update["output"]["old_value"], json!(s.base.id));
    assert_eq!(update["output"]["new_value"], json!(new_id));
    let p: Value = get_json(&http, format!("{url}/pipelines/{pid}")).await;
    assert_eq!(var(&p, "Newest CLIP model"), json!(new_id));
    let embed = nodes
        .iter()
        .find(|n| n["functionName"] == "embed-items")
        .unwrap();
    assert_eq!(embed["output"]["embedded"], 40, "{embed}");
    assert_eq!(
        embed["input"]["model"]["model_id"],
        json!(new_id),
        "{embed}"
    );
    assert_eq!(embed["output"]["items"].as_array().unwrap().len(), 40);
    assert_eq!(embed["output"]["json"].as_array().unwrap().len(), 40);
    let set = embed["output"]["feature_set_id"].as_str().unwrap();
    assert_eq!(s.store.vector_entities(set, None).await.unwrap().len(), 40);

    // Node endpoints: embedding again (?wait=true) finds everything embedded: no duplicates.
    let r = http
        .post(format!("{url}/embed?wait=true"))
        .json(&json!({"dataset_id": s.dataset.id, "model": {"model_id": new_id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["status"], "success", "{again}");
    assert_eq!(
        (
            again["output"]["embedded"].as_u64(),
            again["output"]["already_embedded"].as_u64()
        ),
        (Some(0), Some(40))
    );
    assert_eq!(s.store.vector_entities(set, None).await.unwrap().len(), 40);

    // A list of items: embedded ones are counted, an unknown id is listed, nothing fails.
    let some = s.store.vector_entities(set, None).await.unwrap()[0].clone();
    let r = http
        .post(format!("{url}/embed?wait=true"))
        .json(&json!({
            "items": [{"item_id": some}, {"item_id": "000000000000000000000000"}],
            "model": {"model_id": new_id}
        }))
        .send()
        .await
        .unwrap();
    let listed: Value = r.json().await.unwrap();
    assert_eq!(listed["status"], "success", "{listed}");
    assert_eq!(listed["output"]["already_embedded"], 1, "{listed}");
    assert_eq!(listed["output"]["embedded"], 0, "{listed}");
    let failed = listed["output"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{listed}");
    assert_eq!(failed[0]["item_id"], "000000000000000000000000");
    assert_eq!(s.store.vector_entities(set, None).await.unwrap().len(), 40);

    // A failing training: the new model is marked failed, "Newest CLIP model" is unchanged.
    let r = http
        .post(format!("{url}/pipelines/{pid}/execute"))
        .json(&json!({"pipeline": {"input": {"Model config": {"num_epochs": 1, "learning_rate": -1.0}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let run2: Value = r.json().await.unwrap();
    let run2 = poll(&http, url, run2["id"].as_str().unwrap()).await;
    assert_eq!(run2["status"], "failed", "{run2}");
    assert!(
        run2["error"].as_str().unwrap().contains("learning_rate"),
        "{run2}"
    );
    let nodes2: Vec<Value> = get_json(
        &http,
        format!(
            "{url}/executions?pipeline_execution_id={}",
            run2["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        nodes2.len(),
        2,
        "the run stops at the failed node: {nodes2:?}"
    );
    let failed_model = nodes2
        .iter()
        .find(|n| n["functionName"] == "create-model")
        .unwrap()["output"]["new_model"]["model_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.store.get_model(&failed_model).await.unwrap().status,
        ModelStatus::Failed
    );
    let p: Value = get_json(&http, format!("{url}/pipelines/{pid}")).await;
    assert_eq!(
        var(&p, "Newest CLIP model"),
        json!(new_id),
        "unchanged by a failed run"
    );

    // Promoting the failed model by hand is refused and changes nothing.
    let r = http
        .post(format!("{url}/update-variable?wait=true"))
        .json(&json!({"model": {"model_id": failed_model}, "pipeline": pid}))
        .send()
        .await
        .unwrap();
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["status"], "failed", "{refused}");
    let p: Value = get_json(&http, format!("{url}/pipelines/{pid}")).await;
    assert_eq!(var(&p, "Newest CLIP model"), json!(new_id));

    // Metrics saw all of it.
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "cliptune_executions_total{function=\"train\",status=\"success\"} 1",
        "cliptune_executions_total{function=\"train\",status=\"failed\"} 1",
        "cliptune_executions_total{function=\"pipeline\",status=\"success\"} 1",
        "cliptune_requests_total{method=\"POST\",route=\"/pipelines/{id}/execute\",status=\"202\"} 2",
        "cliptune_queue_depth{lane=\"device\"} 0",
        "cliptune_training_samples_per_second 0",
        "cliptune_embed_stage_seconds_total{stage=\"decode\"}",
        "cliptune_embed_stage_seconds_total{stage=\"device\"}",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_body_limit_and_error_shapes() {
    let s = fx::store(10).await;
    let mut config = fx::config();
    config.api_token = Some("s3cret".into());
    config.max_body_bytes = 1024;
    let server = fx::serve(&s, config).await;
    let (url, http) = (&server.url, reqwest::Client::new());
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret");

    let r = http.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200, "health needs no token");
    let r = http.get(format!("{url}/info")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_type"], "unauthorized");
    let r = http
        .get(format!("{url}/info"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let info: Value = auth(http.get(format!("{url}/info")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["auth"], true);
    assert_eq!(info["limits"]["max_body_bytes"], 1024);
    let r = auth(http.get(format!("{url}/ready"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["checks"]["store"], "ok", "{ready}");

    let cases: Vec<(reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (
            auth(http.post(format!("{url}/train")))
                .body(format!("{{\"model\": \"{}\"}}", "x".repeat(2000))),
            413,
            "payload_too_large",
            "",
        ),
        (
            auth(http.post(format!("{url}/train"))).body("not json"),
            400,
            "bad_request",
            "JSON",
        ),
        (
            auth(http.post(format!("{url}/train"))).json(&json!({})),
            422,
            "validation",
            "`model`",
        ),
        (
            auth(http.post(format!("{url}/train"))).json(&json!({"model": "m", "confg": {}})),
            422,
            "validation",
            "confg",
        ),
        (
            auth(http.post(format!("{url}/train")))
                .json(&json!({"model": "m", "config": {"batch_size": 1}})),
            422,
            "validation",
            "batch_size",
        ),
        (
            auth(http.post(format!("{url}/executions")))
                .json(&json!({"functionName": "fly", "input": {}})),
            404,
            "not_found",
            "fly",
        ),
        (
            auth(http.post(format!("{url}/embed"))).json(&json!({"items": []})),
            422,
            "validation",
            "items",
        ),
        (
            auth(http.get(format!("{url}/executions/0123456789abcdef01234567"))),
            404,
            "not_found",
            "",
        ),
        (
            auth(http.get(format!("{url}/executions?status=sleeping"))),
            422,
            "validation",
            "sleeping",
        ),
        (
            auth(http.get(format!("{url}/pipelines/nope"))),
            404,
            "not_found",
            "nope",
        ),
        (
            auth(http.patch(format!("{url}/pipelines/{}/variables", s.pipeline.id)))
                .json(&json!({"variables": [{"name": "Colour", "value": 1}]})),
            422,
            "validation",
            "Colour",
        ),
        (
            auth(http.patch(format!("{url}/pipelines/{}/variables", s.pipeline.id))).json(
                &json!({"variables": [{"name": "Base CLIP model", "value": "no-such-model"}]}),
            ),
            404,
            "not_found",
            "no-such-model",
        ),
        (
            auth(http.post(format!("{url}/pipelines/{}/execute", s.pipeline.id))),
            422,
            "validation",
            "Dataset with captions",
        ),
        (
            auth(http.get(format!("{url}/no/such/route"))),
            404,
            "not_found",
            "/no/such/route",
        ),
        // Query strings, wrong methods: the same JSON shape as every other error.
        (
            auth(http.get(format!("{url}/executions?limit=many"))),
            422,
            "validation",
            "limit",
        ),
        (
            auth(http.post(format!("{url}/train?wait=perhaps"))).json(&json!({"model": "m"})),
            422,
            "validation",
            "wait",
        ),
        (
            auth(http.delete(format!("{url}/info"))),
            405,
            "method_not_allowed",
            "",
        ),
        (
            auth(http.post(format!("{url}/create-model"))).json(&json!({
                "base_model": s.base.id, "dataset": s.dataset.id,
                "train_subset": {"filter": {"$bogus": 1}},
            })),
            422,
            "validation",
            "train_subset",
        ),
        // The adapter file is written into the model's folder: a path is refused at creation.
        (
            auth(http.post(format!("{url}/create-model"))).json(&json!({
                "base_model": s.base.id, "dataset": s.dataset.id,
                "model_config": {"weights_filename": "../best.pt"},
            })),
            422,
            "validation",
            "weights_filename",
        ),
        // Unknown entities are refused before anything is queued.
        (
            auth(http.post(format!("{url}/executions")))
                .json(&json!({"functionName": "train", "input": {"model": "no-such-model"}})),
            404,
            "not_found",
            "no-such-model",
        ),
        (
            auth(http.post(format!("{url}/create-model")))
                .json(&json!({"base_model": "no-such-model", "dataset": s.dataset.id})),
            404,
            "not_found",
            "no-such-model",
        ),
        (
            auth(http.post(format!("{url}/create-model")))
                .json(&json!({"base_model": s.base.id, "dataset": "no-such-dataset"})),
            404,
            "not_found",
            "no-such-dataset",
        ),
        (
            auth(http.post(format!("{url}/embed"))).json(&json!({"dataset_id": "no-such-dataset"})),
            404,
            "not_found",
            "no-such-dataset",
        ),
        (
            auth(http.post(format!("{url}/update-variable")))
                .json(&json!({"model": s.base.id, "pipeline": "no-such-pipeline"})),
            404,
            "not_found",
            "no-such-pipeline",
        ),
    ];
    for (i, (request, status, kind, needle)) in cases.into_iter().enumerate() {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "case {i}");
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("case {i}: not JSON: {e}"));
        assert_eq!(body["error_type"], kind, "case {i}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "case {i}: {body}"
        );
    }
    // Nothing was queued by the rejected requests.
    assert!(s
        .store
        .list_executions(&Default::default())
        .await
        .unwrap()
        .is_empty());

    // Terminating an ended execution is a conflict; a queued one ends canceled at once.
    let e = server
        .worker
        .submit(
            cliptune_worker::Function::Train,
            json!({"model": s.base.id}),
            None,
        )
        .await
        .unwrap();
    let done = server.worker.wait(&e.id).await.unwrap();
    assert_eq!(
        done.status.as_str(),
        "failed",
        "a pre-trained model is not trainable: {done:?}"
    );
    let r = auth(http.post(format!("{url}/executions/{}/terminate", e.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    server.stop().await;
}

/// A client that sends half its headers and stalls is cut off, and the server keeps
/// answering everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = fx::store(10).await;
    let mut config = fx::config();
    config.header_timeout_seconds = 1;
    let server = fx::serve(&s, config).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(c);
    }
    for mut c in stalled {
        let mut buf = Vec::new();
        // Without a header timeout this read never ends (the test's own limit fails it).
        let read = tokio::time::timeout(Duration::from_secs(15), c.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "a stalled connection was still open after 15 s"
        );
        assert!(
            buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }
    let r = reqwest::get(format!("{}/health", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
    let generated = cliptune_worker::openapi_document();
    if std::env::var_os("CLIPTUNE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is out of date: regenerate it with `cargo run --bin cliptune -- serve --openapi > openapi.json` \
         (or CLIPTUNE_UPDATE_OPENAPI=1 cargo test -p cliptune-worker --test pipeline_http)"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    for p in [
        "/train",
        "/embed",
        "/executions/{id}/terminate",
        "/pipelines/{id}/variables",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the document"
        );
    }
    // The nodes' bodies are their typed inputs, not bare objects.
    let schemas = &doc["components"]["schemas"];
    for (path, schema, field) in [
        ("/train", "TrainInput", "model"),
        ("/create-model", "CreateModelInput", "base_model"),
        ("/update-variable", "UpdateVariableInput", "variable"),
        ("/embed", "EmbedRequest", "items"),
    ] {
        assert!(
            schemas[schema]["properties"].get(field).is_some(),
            "{schema} has no property {field}: {}",
            schemas[schema]
        );
        let body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"]
            .as_str()
            .unwrap_or_default();
        assert!(body.starts_with("#/components/schemas/"), "{path}: {body}");
    }
    let embed = &schemas["EmbedBody"]["oneOf"];
    assert_eq!(embed.as_array().map(Vec::len), Some(2), "{embed}");
}
