//! A temporary store (real SQLite) with the drawn shapes imported as "shapes", a tiny
//! random-weight base model and the "CLIP Fine-tuning" template installed; and a real
//! server on an ephemeral port.

#![allow(dead_code)]

use cliptune_clip::{checkpoint, Clip, ClipConfig};
use cliptune_store::import::{import, ImportOptions};
use cliptune_store::*;
use cliptune_worker::{Worker, WorkerConfig};
use std::path::PathBuf;
use std::sync::Arc;

pub struct Store {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub store: Arc<LocalStore>,
    pub dataset: Dataset,
    pub base: Model,
    pub pipeline: Pipeline,
}

/// `images` drawn shapes (every fifth in validation).
pub async fn store(images: usize) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let store = Arc::new(LocalStore::open(&home).unwrap());
    let shapes = dir.path().join("shapes");
    cliptune_worker::demo::write_dataset(&shapes, images, 32, 5).unwrap();
    import(&store, &shapes, &ImportOptions::new("shapes"))
        .await
        .unwrap();
    let dataset = store.dataset_by_name("shapes").await.unwrap();
    let config = ClipConfig::from_json(&cliptune_worker::demo::tiny_architecture()).unwrap();
    let clip = Clip::new(&config, tch::Device::Cpu, Some(0)).unwrap();
    let weights = dir.path().join("base-weights");
    checkpoint::save(&clip, &weights).unwrap();
    let base = store
        .create_model(NewModel::new("tiny-base", ModelStatus::PreTrained))
        .await
        .unwrap();
    let base = store.upload_artifacts(&base.id, &weights).await.unwrap();
    let manifest_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dataloop.json");
    let manifest = cliptune_worker::read_manifest(Some(&manifest_path)).unwrap();
    let pipeline = cliptune_worker::install_pipeline(&*store, &manifest, None, None)
        .await
        .unwrap()
        .pipeline;
    Store {
        dir,
        home,
        store,
        dataset,
        base,
        pipeline,
    }
}

pub fn config() -> WorkerConfig {
    let mut c = WorkerConfig::local("cpu");
    c.torch_threads = 2;
    c.embed_batch_size = 16;
    c
}

pub async fn worker(s: &Store, config: WorkerConfig) -> Worker {
    let platform: Arc<dyn Platform> = s.store.clone();
    Worker::start(platform, config, s.home.clone())
        .await
        .unwrap()
}

pub struct Server {
    pub url: String,
    pub worker: Worker,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

pub async fn serve(s: &Store, config: WorkerConfig) -> Server {
    let worker = worker(s, config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let w = worker.clone();
    let handle = tokio::spawn(async move {
        cliptune_worker::serve(w, listener, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        url,
        worker,
        stop: Some(stop),
        handle: Some(handle),
    }
}
