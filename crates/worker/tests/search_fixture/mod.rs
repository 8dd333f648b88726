//! A real server on an ephemeral port over a temporary store: the demo's drawn shapes
//! imported as a dataset, two tiny random-weight models ("tiny-base" and its clone
//! "tiny-tuned", the pipeline's "Newest CLIP model"), both with the dataset embedded by the
//! embed node.

#![allow(dead_code)]

use cliptune_clip::{checkpoint, Clip, ClipConfig};
use cliptune_store::import::{import, ImportOptions};
use cliptune_store::*;
use cliptune_worker::{Function, Worker, WorkerConfig};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub worker: Worker,
    pub store: Arc<LocalStore>,
    pub dataset: Dataset,
    pub base: Model,
    pub tuned: Model,
    /// The drawn images and `captions.jsonl`.
    pub images: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
    }
}

/// "tiny-tuned": a clone of `base` with other random weights.
async fn tuned(store: &LocalStore, base: &Model, dir: &std::path::Path) -> Model {
    let config = ClipConfig::from_json(&cliptune_worker::demo::tiny_architecture()).unwrap();
    let clip = Clip::new(&config, tch::Device::Cpu, Some(1)).unwrap();
    let out = dir.join("weights-1");
    checkpoint::save(&clip, &out).unwrap();
    let created = store
        .clone_model(
            &base.id,
            CloneModel {
                name: Some("tiny-tuned".into()),
                status: Some(ModelStatus::Trained),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store.upload_artifacts(&created.id, &out).await.unwrap()
}

#[allow(dead_code)] // not every test binary that shares this module uses both
pub async fn start() -> Fixture {
    start_with(|_| {}).await
}

/// [`start`] with the worker's settings adjusted by `configure`.
pub async fn start_with(configure: impl FnOnce(&mut WorkerConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let store = Arc::new(LocalStore::open(&home).unwrap());
    let images = dir.path().join("shapes");
    cliptune_worker::demo::write_dataset(&images, 20, 32, 3).unwrap();
    import(&store, &images, &ImportOptions::new("shapes"))
        .await
        .unwrap();
    let dataset = store.dataset_by_name("shapes").await.unwrap();

    let base =
        cliptune_worker::demo::tiny_model(&*store, "tiny-base", 0, &dir.path().join("weights-0"))
            .await
            .unwrap();
    let tuned = tuned(&store, &base, dir.path()).await;

    let manifest_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dataloop.json");
    let manifest = cliptune_worker::read_manifest(Some(&manifest_path)).unwrap();
    let installed = cliptune_worker::install_pipeline(&*store, &manifest, None, None)
        .await
        .unwrap();
    cliptune_worker::set_pipeline_variables(
        &*store,
        &installed.pipeline,
        &[(
            cliptune_worker::NEWEST_MODEL_VARIABLE.to_string(),
            json!(tuned.id),
        )],
    )
    .await
    .unwrap();

    let mut config = WorkerConfig::local("cpu");
    config.torch_threads = 2;
    config.embed_batch_size = 8;
    configure(&mut config);
    let platform: Arc<dyn Platform> = store.clone();
    let worker = Worker::start(platform, config, home).await.unwrap();
    for m in [&base, &tuned] {
        let e = worker
            .submit(
                Function::Embed,
                json!({"dataset_id": dataset.id, "model": m.id}),
                None,
            )
            .await
            .unwrap();
        let done = worker.wait(&e.id).await.unwrap();
        assert_eq!(
            done.status,
            ExecutionStatus::Success,
            "embedding with {}: {:?}",
            m.name,
            done.latest_status
        );
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let w = worker.clone();
    let server = tokio::spawn(async move {
        cliptune_worker::serve(w, listener, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Fixture {
        dir,
        url,
        worker,
        store,
        dataset,
        base,
        tuned,
        images,
        stop: Some(stop),
        server: Some(server),
    }
}

/// The drawn images with their captions, in `captions.jsonl` order.
pub fn captions(f: &Fixture) -> Vec<(PathBuf, String)> {
    std::fs::read_to_string(f.images.join("captions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                f.images.join(v["file"].as_str().unwrap()),
                v["caption"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
