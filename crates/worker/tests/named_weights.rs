//! Dataloop's marketplace CLIP model (`openai-clip`) carries no artifacts: its weights are
//! found by the configuration's `model_name` in the weights directory. Without one, the
//! create-model node says which file it expected where; with one, the model trains and
//! embeds like any other.

mod pipeline_fixture;

use cliptune_store::prelude::*;
use cliptune_store::{ExecutionStatus, ModelStatus, NewModel};
use cliptune_worker::Function;
use pipeline_fixture as fx;
use serde_json::{json, Value};

async fn run(
    worker: &cliptune_worker::Worker,
    f: Function,
    input: Value,
) -> cliptune_store::Execution {
    let e = worker.submit(f, input, None).await.unwrap();
    worker.wait(&e.id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifactless_marketplace_model_trains_and_embeds_from_the_weights_dir() {
    let s = fx::store(20).await;
    let market = s
        .store
        .create_model(NewModel {
            name: "openai-clip".into(),
            status: ModelStatus::PreTrained,
            configuration: json!({"model_name": "ViT-B/32"})
                .as_object()
                .unwrap()
                .clone(),
            dataset_id: None,
            description: None,
            metadata: json!({}),
        })
        .await
        .unwrap();
    assert!(market.artifacts.is_empty());
    let create = json!({
        "base_model": {"model_id": market.id},
        "dataset": {"dataset_id": s.dataset.id},
        "model_config": {"num_epochs": 1, "batch_size": 8, "eval_batch_size": 8, "learning_rate": 1e-5, "early_stopping": false},
    });

    // No weights directory: a clear error naming the variable and the file.
    let worker = fx::worker(&s, fx::config()).await;
    let e = run(&worker, Function::CreateModel, create.clone()).await;
    assert_eq!(e.status, ExecutionStatus::Failed, "{e:?}");
    let err = e.latest_status.error.clone().unwrap();
    assert!(
        err.contains("CLIPTUNE_WEIGHTS_DIR") && err.contains("ViT-B-32.pt"),
        "{err}"
    );
    worker.shutdown().await;

    // A weights directory without that file: the error names the directory and the files tried.
    let weights = s.dir.path().join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    let mut config = fx::config();
    config.weights_dir = Some(weights.clone());
    let worker = fx::worker(&s, config.clone()).await;
    let e = run(&worker, Function::CreateModel, create.clone()).await;
    assert_eq!(e.status, ExecutionStatus::Failed, "{e:?}");
    let err = e.latest_status.error.clone().unwrap();
    assert!(
        err.contains("ViT-B-32.pt") && err.contains(&weights.display().to_string()),
        "{err}"
    );
    worker.shutdown().await;

    // The checkpoint laid out under OpenAI's name: a ViT-B/32 (random weights: no pretrained
    // ones are reachable here; the trainer checks `model_name` against the architecture, so
    // it must be the real shape), as a cliptune directory `ViT-B-32/`. Create, train, and
    // embed with the marketplace model.
    let b32 = cliptune_clip::ClipConfig::preset("ViT-B/32").unwrap();
    let clip = cliptune_clip::Clip::new(&b32, tch::Device::Cpu, Some(0)).unwrap();
    cliptune_clip::checkpoint::save(&clip, &weights.join("ViT-B-32")).unwrap();
    drop(clip);
    let worker = fx::worker(&s, config).await;
    let created = run(&worker, Function::CreateModel, create).await;
    assert_eq!(created.status, ExecutionStatus::Success, "{created:?}");
    let model_id = created.output["new_model"]["model_id"]
        .as_str()
        .unwrap()
        .to_string();
    let trained = run(
        &worker,
        Function::Train,
        json!({"model": {"model_id": model_id}}),
    )
    .await;
    assert_eq!(trained.status, ExecutionStatus::Success, "{trained:?}");
    let model = s.store.get_model(&model_id).await.unwrap();
    assert_eq!(model.status, ModelStatus::Trained);
    assert!(!model.artifacts.is_empty());
    let embedded = run(
        &worker,
        Function::Embed,
        json!({"dataset_id": s.dataset.id, "model": market.id}),
    )
    .await;
    assert_eq!(embedded.status, ExecutionStatus::Success, "{embedded:?}");
    assert_eq!(embedded.output["embedded"], 20, "{embedded:?}");
    worker.shutdown().await;
}
