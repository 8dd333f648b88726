//! Pipelines, variables and promotion; executions.

use super::*;

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
