//! Executions: create, progress, finish, list.

use super::*;

pub async fn executions(p: &dyn Platform) {
    let tag = suffix();
    let e = p
        .create_execution(NewExecution {
            function_name: format!("train-{tag}"),
            service_name: Some("cliptune".into()),
            pipeline: Some(ExecutionPipeline {
                id: "aaaaaaaaaaaaaaaaaaaaaaaa".into(),
                node_id: Some("train".into()),
                execution_id: Some(format!("bbbbbbbbbbbbbbbb{}", &tag[..8])),
            }),
            input: json!({"model": {"model_id": "x"}}),
        })
        .await
        .unwrap();
    assert!(is_id(&e.id));
    assert_eq!(e.status, ExecutionStatus::Created);
    assert_eq!(e.latest_status.percent_complete, 0);
    let e = p
        .progress_execution(
            &e.id,
            ExecutionProgress {
                percent_complete: Some(40),
                message: Some("epoch 2/5".into()),
                ..ExecutionProgress::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(e.status, ExecutionStatus::InProgress);
    assert_eq!(e.latest_status.percent_complete, 40);
    assert_eq!(e.latest_status.message.as_deref(), Some("epoch 2/5"));
    let got = p.get_execution(&e.id).await.unwrap();
    assert_eq!(got.latest_status, e.latest_status);
    assert_kind(
        p.progress_execution(
            &e.id,
            ExecutionProgress {
                percent_complete: Some(101),
                ..ExecutionProgress::default()
            },
        )
        .await
        .unwrap_err(),
        "validation",
        "101",
    );
    let listed = p
        .list_executions(&ExecutionQuery {
            function_name: Some(format!("train-{tag}")),
            status: Some(ExecutionStatus::InProgress),
            ..ExecutionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|x| &x.id).collect::<Vec<_>>(), [&e.id]);
    let by_run = p
        .list_executions(&ExecutionQuery {
            pipeline_execution_id: e.pipeline.as_ref().unwrap().execution_id.clone(),
            ..ExecutionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(by_run.len(), 1);

    let done = p
        .finish_execution(
            &e.id,
            ExecutionStatus::Success,
            Some(json!({"model_id": "m"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Success);
    assert_eq!(done.latest_status.percent_complete, 100);
    assert_eq!(done.output, json!({"model_id": "m"}));
    let log: Vec<ExecutionStatus> = done.status_log.iter().map(|s| s.status).collect();
    assert_eq!(
        log,
        [
            ExecutionStatus::Created,
            ExecutionStatus::InProgress,
            ExecutionStatus::Success
        ]
    );
    assert_kind(
        p.progress_execution(&e.id, ExecutionProgress::default())
            .await
            .unwrap_err(),
        "conflict",
        "already finished",
    );
    assert_kind(
        p.finish_execution(&e.id, ExecutionStatus::Failed, None, Some("late".into()))
            .await
            .unwrap_err(),
        "conflict",
        "already finished",
    );

    let f = p
        .create_execution(NewExecution {
            function_name: format!("embed-{tag}"),
            ..NewExecution::default()
        })
        .await
        .unwrap();
    let f = p
        .finish_execution(
            &f.id,
            ExecutionStatus::Failed,
            None,
            Some("out of memory".into()),
        )
        .await
        .unwrap();
    assert_eq!(f.latest_status.error.as_deref(), Some("out of memory"));
    assert_kind(
        p.get_execution("cccccccccccccccccccccccc")
            .await
            .unwrap_err(),
        "not_found",
        "cccccccccccccccccccccccc",
    );
}
