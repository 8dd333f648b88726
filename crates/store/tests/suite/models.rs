//! Models (create, clone, artifacts, status), pipelines and their variables.

use super::*;

/// Writes a small fake checkpoint folder (nested files) and returns it.
fn write_checkpoint(dir: &Path, seed: u8) -> std::path::PathBuf {
    let ck = dir.join(format!("ck-{}-{seed}", suffix()));
    std::fs::create_dir_all(ck.join("sub")).unwrap();
    std::fs::write(ck.join("config.json"), format!("{{\"seed\": {seed}}}")).unwrap();
    let weights: Vec<u8> = (0..100_000u32)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    std::fs::write(ck.join("sub/model.safetensors"), weights).unwrap();
    ck
}

fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub async fn base_model(p: &dyn Platform, scratch: &Path) -> Model {
    let base = p
        .create_model(NewModel {
            name: format!("suite-base-{}", suffix()),
            status: ModelStatus::PreTrained,
            configuration: json!({"model_name": "ViT-B/32", "embeddings_size": 512, "batch_size": 128, "betas": [0.9, 0.98]})
                .as_object()
                .unwrap()
                .clone(),
            dataset_id: None,
            description: Some("base".into()),
            metadata: json!({}),
        })
        .await
        .expect("create model");
    let ck = write_checkpoint(scratch, 3);
    p.upload_artifacts(&base.id, &ck)
        .await
        .expect("upload artifacts")
}

pub async fn models(p: &dyn Platform, scratch: &Path) {
    let base = base_model(p, scratch).await;
    assert!(is_id(&base.id));
    assert_eq!(base.status, ModelStatus::PreTrained);
    assert_eq!(base.artifacts.len(), 2);
    assert_eq!(p.model_by_name(&base.name).await.unwrap().id, base.id);
    assert_eq!(p.resolve_model(&base.name).await.unwrap().id, base.id);
    assert!(p
        .list_models()
        .await
        .unwrap()
        .iter()
        .any(|m| m.id == base.id));
    assert_kind(
        p.create_model(NewModel {
            name: base.name.clone(),
            status: ModelStatus::Created,
            configuration: Default::default(),
            dataset_id: None,
            description: None,
            metadata: json!({}),
        })
        .await
        .unwrap_err(),
        "conflict",
        &base.name,
    );

    // Artifacts round trip into a fresh folder.
    let out = scratch.join(format!("download-{}", suffix()));
    p.download_artifacts(&base.id, &out).await.unwrap();
    let src = scratch.join(
        std::fs::read_dir(scratch)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .find(|n| {
                n.to_string_lossy().starts_with("ck-")
                    && read_tree(&scratch.join(n)) == read_tree(&out)
            })
            .expect("downloaded artifacts equal an uploaded checkpoint"),
    );
    assert_eq!(read_tree(&src).len(), 2);

    // Clone: name template, shallow merge, subsets, base id, no artifacts, status created.
    let ds = p
        .create_dataset(&format!("suite-train-{}", suffix()))
        .await
        .unwrap();
    let clone = p
        .clone_model(
            &base.id,
            CloneModel {
                configuration: Some(
                    json!({"num_epochs": 2, "betas": [0.8]})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
                dataset_id: Some(ds.id.clone()),
                ..CloneModel::default()
            },
        )
        .await
        .unwrap();
    let stamp = clone
        .name
        .strip_prefix(&format!("{}_", base.name))
        .unwrap_or_else(|| {
            panic!(
                "clone name {} does not start with the base name",
                clone.name
            )
        });
    let shape: String = stamp
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999_99_99-T99_99_99", "clone name {}", clone.name);
    assert_eq!(clone.status, ModelStatus::Created);
    assert_eq!(clone.base_model_id.as_deref(), Some(base.id.as_str()));
    assert_eq!(clone.dataset_id.as_deref(), Some(ds.id.as_str()));
    assert!(clone.artifacts.is_empty());
    assert_eq!(clone.configuration["model_name"], json!("ViT-B/32"));
    assert_eq!(clone.configuration["num_epochs"], json!(2));
    assert_eq!(
        clone.configuration["betas"],
        json!([0.8]),
        "merge is shallow"
    );
    assert_eq!(clone.subsets(), Some(Subsets::default_filters()));

    // A clash gets `_v1`, then `_v2`.
    let named = |n: &str| CloneModel {
        name: Some(n.to_string()),
        subsets: Some(Subsets {
            train: json!({"metadata.system.tags.train": true}),
            validation: json!({"metadata.system.tags.validation": true}),
        }),
        ..CloneModel::default()
    };
    let v1 = p.clone_model(&base.id, named(&clone.name)).await.unwrap();
    assert_eq!(v1.name, format!("{}_v1", clone.name));
    assert_eq!(
        v1.subsets().unwrap().train,
        json!({"metadata.system.tags.train": true})
    );
    let v2 = p.clone_model(&base.id, named(&clone.name)).await.unwrap();
    assert_eq!(v2.name, format!("{}_v2", clone.name));

    // Lifecycle and update.
    let mut m = clone.clone();
    m.status = ModelStatus::Training;
    let m = p.update_model(&m).await.unwrap();
    assert_eq!(
        p.get_model(&m.id).await.unwrap().status,
        ModelStatus::Training
    );
    let mut renamed = m.clone();
    renamed.name = base.name.clone();
    assert_kind(
        p.update_model(&renamed).await.unwrap_err(),
        "conflict",
        &base.name,
    );

    // Metrics keep their order.
    let samples: Vec<MetricSample> = (0..3)
        .flat_map(|e| {
            ["train", "val"].map(|legend| MetricSample {
                model_id: m.id.clone(),
                dataset_id: Some(ds.id.clone()),
                figure: "loss".into(),
                legend: legend.into(),
                data: MetricPoint {
                    x: f64::from(e),
                    y: 1.0 / f64::from(e + 1),
                },
                created_at: String::new(),
            })
        })
        .collect();
    assert_eq!(p.publish_metrics(&samples).await.unwrap(), 6);
    let got = p.list_metrics(&m.id).await.unwrap();
    assert_eq!(got.len(), 6);
    for (g, s) in got.iter().zip(&samples) {
        assert_eq!((g.legend.as_str(), g.data), (s.legend.as_str(), s.data));
    }
    assert!(p.list_metrics(&base.id).await.unwrap().is_empty());
}

pub async fn pipelines_and_variables(p: &dyn Platform, scratch: &Path) {
    let base = base_model(p, scratch).await;
    let name = format!("suite-pipeline-{}", suffix());
    let pipe = p
        .create_pipeline(NewPipeline {
            name: name.clone(),
            nodes: vec![json!({"id": "n1", "name": "train"})],
            connections: vec![],
            start_nodes: vec![json!({"nodeId": "n1", "type": "root"})],
            variables: vec![
                Variable {
                    id: String::new(),
                    name: "Newest CLIP model".into(),
                    reference: String::new(),
                    var_type: "Model".into(),
                    value: json!(base.id),
                    description: None,
                },
                Variable {
                    id: String::new(),
                    name: "Model config".into(),
                    reference: String::new(),
                    var_type: "Json".into(),
                    value: json!({"num_epochs": 1}),
                    description: Some("trainer config".into()),
                },
            ],
        })
        .await
        .unwrap();
    assert!(is_id(&pipe.id));
    assert_eq!(pipe.nodes.len(), 1);
    assert_eq!(pipe.variables.len(), 2);
    assert_eq!(pipe.variables[0].reference, pipe.id);
    assert_eq!(p.resolve_pipeline(&name).await.unwrap().id, pipe.id);
    assert!(p
        .list_pipelines()
        .await
        .unwrap()
        .iter()
        .any(|x| x.id == pipe.id));
    assert_kind(
        p.create_pipeline(NewPipeline {
            name: name.clone(),
            ..NewPipeline::default()
        })
        .await
        .unwrap_err(),
        "conflict",
        &name,
    );

    let vars = p
        .update_variables(
            &pipe.id,
            &[VariableUpdate {
                name: "Model config".into(),
                value: json!({"num_epochs": 5}),
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        vars.iter()
            .find(|v| v.name == "Model config")
            .unwrap()
            .value,
        json!({"num_epochs": 5})
    );
    // All or nothing: an unknown name fails and leaves the others as they were.
    let err = p
        .update_variables(
            &pipe.id,
            &[
                VariableUpdate {
                    name: "Model config".into(),
                    value: json!(null),
                },
                VariableUpdate {
                    name: "Nope".into(),
                    value: json!(1),
                },
            ],
        )
        .await
        .unwrap_err();
    assert_kind(err, "not_found", "Nope");
    let pipe_now = p.get_pipeline(&pipe.id).await.unwrap();
    assert_eq!(
        pipe_now.variable("Model config").unwrap().value,
        json!({"num_epochs": 5})
    );

    // Promotion only for a trained model with stored artifacts.
    let new = p
        .clone_model(&base.id, CloneModel::default())
        .await
        .unwrap();
    let var = "Newest CLIP model";
    assert_kind(
        p.promote_model_variable(&pipe.id, var, &new.id)
            .await
            .unwrap_err(),
        "conflict",
        "not trained",
    );
    let mut trained = new.clone();
    trained.status = ModelStatus::Trained;
    p.update_model(&trained).await.unwrap();
    assert_kind(
        p.promote_model_variable(&pipe.id, var, &new.id)
            .await
            .unwrap_err(),
        "conflict",
        "no stored artifacts",
    );
    assert_eq!(
        p.get_variables(&pipe.id).await.unwrap()[0].value,
        json!(base.id),
        "failed promotions leave the variable unchanged"
    );
    p.upload_artifacts(&new.id, &write_checkpoint(scratch, 5))
        .await
        .unwrap();
    let v = p
        .promote_model_variable(&pipe.id, var, &new.id)
        .await
        .unwrap();
    assert_eq!(v.value, json!(new.id));
    assert_eq!(
        p.get_pipeline(&pipe.id)
            .await
            .unwrap()
            .variable(var)
            .unwrap()
            .value,
        json!(new.id)
    );
    assert_kind(
        p.promote_model_variable(&pipe.id, "Model config", &new.id)
            .await
            .unwrap_err(),
        "validation",
        "Model config",
    );
}
