//! Models: create and clone payloads, system metadata, artifacts, metrics.

use super::*;

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
        .create_model(NewModel::new("from-app", ModelStatus::PreTrained))
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
    b2.create_model(NewModel::new("bare", ModelStatus::PreTrained))
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
        .create_model(NewModel::new("trained-1", ModelStatus::Training))
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
