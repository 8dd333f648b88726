//! Attached mode's refusals: a worker hands over only its own service's running executions,
//! and only in attached mode; the records it refuses are left as they were.

mod pipeline_fixture;

use cliptune_store::prelude::*;
use cliptune_store::{ExecutionStatus, NewExecution};
use cliptune_worker::AttachRequest;
use cliptune_worker::WorkerError;
use pipeline_fixture as fx;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_attached_workers_take_only_their_own_services_executions() {
    let s = fx::store(20).await;
    let train = |service: &str| NewExecution {
        function_name: "train_model".into(),
        service_name: Some(service.into()),
        pipeline: None,
        input: json!({"model": {"model_id": s.base.id}}),
    };
    let theirs = s
        .store
        .create_execution(train("another-app"))
        .await
        .unwrap();
    let request = |id: &str| AttachRequest {
        execution_id: id.into(),
        function: "train_model".into(),
        input: None,
    };

    let plain = fx::worker(&s, fx::config()).await;
    let err = plain.attach(request(&theirs.id)).await.unwrap_err();
    assert!(
        matches!(err, WorkerError::Conflict(ref m) if m.contains("--attached")),
        "{err}"
    );
    plain.shutdown().await;
    // A plain worker's restart recovery leaves another service's execution alone.
    let untouched = s.store.get_execution(&theirs.id).await.unwrap();
    assert_eq!(untouched.status, ExecutionStatus::Created);
    assert_eq!(untouched.status_log, theirs.status_log);

    let mut config = fx::config();
    config.attached = true;
    config.service_id = Some("cliptune".into());
    let worker = fx::worker(&s, config).await;
    let err = worker.attach(request(&theirs.id)).await.unwrap_err();
    assert!(
        matches!(err, WorkerError::Conflict(ref m) if m.contains("another-app")),
        "{err}"
    );
    let err = worker
        .attach(request("no-such-execution"))
        .await
        .unwrap_err();
    assert!(matches!(err, WorkerError::Store(_)), "{err}");
    // Nothing was written to the refused record.
    let after = s.store.get_execution(&theirs.id).await.unwrap();
    assert_eq!(after.status_log, theirs.status_log);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_run_reports_to_its_runner_and_writes_nothing_to_the_record() {
    let s = fx::store(10).await;
    let mut config = fx::config();
    config.attached = true;
    config.service_id = Some("cliptune".into());
    let worker = fx::worker(&s, config).await;
    let create = |function: &str| NewExecution {
        function_name: function.into(),
        service_name: Some("cliptune".into()),
        pipeline: None,
        input: json!({"base_model": s.base.id, "dataset": s.dataset.id}),
    };
    // An execution that already ended is refused, and left as it ended.
    let ended = s
        .store
        .create_execution(create("create_model"))
        .await
        .unwrap();
    let ended = s
        .store
        .finish_execution(&ended.id, ExecutionStatus::Success, None, None)
        .await
        .unwrap();
    let err = worker
        .attach(AttachRequest {
            execution_id: ended.id.clone(),
            function: "create_model".into(),
            input: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, WorkerError::Conflict(ref m) if m.contains("already ended")),
        "{err}"
    );

    // A live one runs here; its outcome goes to the runner, not to the record.
    let live = s
        .store
        .create_execution(create("create_model"))
        .await
        .unwrap();
    let view = worker
        .attach(AttachRequest {
            execution_id: live.id.clone(),
            function: "create_model".into(),
            input: None,
        })
        .await
        .unwrap();
    assert_eq!(view.execution_id, live.id);
    let mut view = view;
    for _ in 0..100 {
        view = worker
            .wait_attached(&live.id, std::time::Duration::from_millis(200))
            .await
            .unwrap();
        if !matches!(view.state.as_str(), "queued" | "running") {
            break;
        }
    }
    assert_eq!(view.state, "success", "{view:?}");
    assert_eq!(view.percent, 100);
    let model_id = view.output["new_model"]["model_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no new_model in {}", view.output));
    let model = s.store.get_model(model_id).await.unwrap();
    assert_ne!(model.id, s.base.id);
    let record = s.store.get_execution(&live.id).await.unwrap();
    assert_eq!(record.status, ExecutionStatus::Created);
    assert_eq!(record.status_log, live.status_log);
    worker.shutdown().await;
}
