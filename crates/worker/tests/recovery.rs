//! Restarts: executions a dead process left behind are failed or re-queued, never left
//! hanging; a shutdown during training keeps its checkpoint and the next process resumes it.

mod pipeline_fixture;

use cliptune_store::prelude::*;
use cliptune_store::{
    ExecutionPipeline, ExecutionProgress, ExecutionStatus, ModelStatus, NewExecution,
};
use cliptune_worker::Function;
use pipeline_fixture as fx;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_fails_or_requeues_what_a_dead_process_left() {
    let s = fx::store(20).await;
    let store = &s.store;
    // What a killed process leaves: two executions in progress, one never started.
    let left = |function: &str, input: serde_json::Value| {
        let store = store.clone();
        let function = function.to_string();
        async move {
            store
                .create_execution(NewExecution {
                    function_name: function,
                    service_name: Some(cliptune_worker::SERVICE_NAME.into()),
                    pipeline: None,
                    input,
                })
                .await
                .unwrap()
        }
    };
    let create = left(
        "create-model",
        json!({"base_model": s.base.id, "dataset": s.dataset.id}),
    )
    .await;
    let embed = left(
        "embed",
        json!({"dataset_id": s.dataset.id, "model": s.base.id}),
    )
    .await;
    let update = left(
        "update-variable",
        json!({"model": s.base.id, "pipeline": s.pipeline.id}),
    )
    .await;
    for id in [&create.id, &embed.id] {
        store
            .progress_execution(
                id,
                ExecutionProgress {
                    status: Some(ExecutionStatus::InProgress),
                    percent_complete: Some(40),
                    message: Some("working".into()),
                    output: None,
                },
            )
            .await
            .unwrap();
    }

    let worker = fx::worker(&s, fx::config()).await;
    let create = worker.wait(&create.id).await.unwrap();
    assert_eq!(create.status, ExecutionStatus::Failed);
    assert!(
        create
            .latest_status
            .error
            .as_deref()
            .unwrap()
            .contains("interrupted"),
        "{create:?}"
    );
    let embed = worker.wait(&embed.id).await.unwrap();
    assert_eq!(embed.status, ExecutionStatus::Success, "{embed:?}");
    assert_eq!(embed.output["embedded"], 20);
    assert!(embed
        .status_log
        .iter()
        .any(|e| e.status == ExecutionStatus::Rerun));
    // Never started: it runs now (and the store refuses to promote a model that was not
    // trained here, which shows it really ran).
    let update = worker.wait(&update.id).await.unwrap();
    assert_eq!(update.status, ExecutionStatus::Failed, "{update:?}");
    assert!(
        update
            .latest_status
            .error
            .as_deref()
            .unwrap()
            .contains("not trained"),
        "{update:?}"
    );
    let hanging = store
        .list_executions(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.status.is_terminal())
        .count();
    assert_eq!(hanging, 0);
    // A second start finds nothing to recover.
    let again = worker.recover().await.unwrap();
    assert!(
        again.failed.is_empty() && again.requeued.is_empty(),
        "{again:?}"
    );
    // One worker per store: a second one would recover (re-run) the first one's work.
    let platform: std::sync::Arc<dyn Platform> = s.store.clone();
    let err = cliptune_worker::Worker::start(platform.clone(), fx::config(), s.home.clone())
        .await
        .err()
        .expect("a second worker on the same store is refused");
    assert!(err.to_string().contains("another cliptune worker"), "{err}");
    // ... whatever its --work-dir says: the lock is on the store, not the work directory.
    let mut elsewhere = fx::config();
    elsewhere.work_dir = Some(s.home.join("other-work"));
    let err = cliptune_worker::Worker::start(platform.clone(), elsewhere, s.home.clone())
        .await
        .err()
        .expect("a second worker with another work dir on the same store is refused");
    assert!(err.to_string().contains("another cliptune worker"), "{err}");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "names the holder's pid: {err}"
    );
    worker.shutdown().await;
    let next = cliptune_worker::Worker::start(platform, fx::config(), s.home.clone())
        .await
        .unwrap();
    next.shutdown().await;
}

/// What a SIGKILLed worker leaves (its lock file, an old pid file) names a pid that can be
/// alive again: in a container the worker is pid 1 on every start. Here it is this very
/// process. Only a held lock refuses a start, never a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_left_by_a_killed_worker_never_block_a_restart() {
    let s = fx::store(10).await;
    let me = std::process::id().to_string();
    std::fs::create_dir_all(s.home.join("work")).unwrap();
    std::fs::write(s.home.join("worker.lock"), &me).unwrap();
    std::fs::write(s.home.join("work").join("worker.pid"), &me).unwrap();
    let worker = fx::worker(&s, fx::config()).await;
    worker.shutdown().await;
    let again = fx::worker(&s, fx::config()).await;
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_checkpoints_training_and_the_next_process_resumes_it() {
    let s = fx::store(20).await;
    let mut config = fx::config();
    config.drain_seconds = 0;
    let first = fx::worker(&s, config.clone()).await;
    let created = first
        .submit(
            Function::CreateModel,
            json!({
                "base_model": {"model_id": s.base.id},
                "dataset": {"dataset_id": s.dataset.id},
                "model_config": {"num_epochs": 12, "batch_size": 4, "eval_batch_size": 8, "learning_rate": 1e-4, "early_stopping": false},
            }),
            Some(ExecutionPipeline {
                id: s.pipeline.id.clone(),
                node_id: None,
                execution_id: None,
            }),
        )
        .await
        .unwrap();
    let created = first.wait(&created.id).await.unwrap();
    assert_eq!(created.status, ExecutionStatus::Success, "{created:?}");
    let model_id = created.output["new_model"]["model_id"]
        .as_str()
        .unwrap()
        .to_string();
    let train = first
        .submit(
            Function::Train,
            json!({"model": {"model_id": model_id}}),
            None,
        )
        .await
        .unwrap();
    // Wait until a few epochs are checkpointed, then stop the process.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = s.store.get_execution(&train.id).await.unwrap();
        assert!(
            !e.status.is_terminal(),
            "training ended before the shutdown: {e:?}"
        );
        if e.latest_status.percent_complete >= 40 {
            break;
        }
        assert!(Instant::now() < deadline, "no training progress: {e:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.shutdown().await;
    let stopped = s.store.get_execution(&train.id).await.unwrap();
    assert_eq!(
        stopped.status,
        ExecutionStatus::Rerun,
        "{:?}",
        stopped.latest_status
    );
    assert_eq!(
        s.store.get_model(&model_id).await.unwrap().status,
        ModelStatus::Training
    );
    let epochs_before = s
        .store
        .list_metrics(&model_id)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.figure == "loss" && m.legend == "val")
        .count();
    assert!(
        epochs_before >= 2,
        "baseline and at least one epoch were evaluated before the stop"
    );
    drop(first);

    let second = fx::worker(&s, config).await;
    let done = second.wait(&train.id).await.unwrap();
    assert_eq!(
        done.status,
        ExecutionStatus::Success,
        "{:?}",
        done.latest_status
    );
    assert_eq!(done.output["epochs_run"], 12);
    assert_eq!(
        s.store.get_model(&model_id).await.unwrap().status,
        ModelStatus::Trained
    );
    // Resumed, not restarted: every epoch (and the baseline, epoch 0) was evaluated once.
    let val: Vec<f64> = s
        .store
        .list_metrics(&model_id)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.figure == "loss" && m.legend == "val")
        .map(|m| m.data.x)
        .collect();
    assert_eq!(
        val,
        (0..=12).map(f64::from).collect::<Vec<_>>(),
        "epochs evaluated: {val:?}"
    );
    second.shutdown().await;
}
