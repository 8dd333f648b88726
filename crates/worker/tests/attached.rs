//! Attached mode's refusals: a worker hands over only its own service's running executions,
//! and only in attached mode; the records it refuses are left as they were.

mod pipeline_fixture;

use cliptune_store::{ExecutionStatus, NewExecution, Platform};
use cliptune_worker::attached::AttachRequest;
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
