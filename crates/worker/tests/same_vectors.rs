//! A query and a stored vector are computed the same way: the online path (the batcher
//! behind `POST /embed` and `POST /search`) and the dataset embed node give bit-identical
//! vectors for the same image and the same text, at every precision the CPU runs
//! (fp32 and bf16 autocast; fp16 needs CUDA, which `--embed-precision` enforces).

use cliptune_clip::{checkpoint, Clip, ClipConfig, Precision};
use cliptune_store::import::{import, ImportOptions};
use cliptune_store::*;
use cliptune_worker::http::online::Online;
use cliptune_worker::{Function, Worker, WorkerConfig};
use serde_json::json;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_query_and_embed_node_give_identical_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let store = Arc::new(LocalStore::open(&home).unwrap());
    let images = dir.path().join("shapes");
    cliptune_worker::demo::write_dataset(&images, 10, 32, 7).unwrap();
    import(&store, &images, &ImportOptions::new("shapes"))
        .await
        .unwrap();
    let dataset = store.dataset_by_name("shapes").await.unwrap();
    let caption = "a note about two red circles";
    let text_item = store
        .upload_item(
            &dataset.id,
            NewItem {
                filename: "/notes/red.txt".into(),
                bytes: caption.as_bytes().to_vec(),
                mimetype: Some("text/plain".into()),
                description: None,
                metadata: json!({}),
                hidden: false,
            },
        )
        .await
        .unwrap();
    let image_item = store
        .all_items(&dataset.id, None)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.kind() == ItemKind::Image)
        .unwrap();
    let image_bytes = store.item_bytes(&image_item.id).await.unwrap();

    let config = ClipConfig::from_json(&cliptune_worker::demo::tiny_architecture()).unwrap();
    let clip = Clip::new(&config, tch::Device::Cpu, Some(0)).unwrap();
    checkpoint::save(&clip, &dir.path().join("weights")).unwrap();

    let mut fp32_image: Option<Vec<u32>> = None;
    for precision in [Precision::Fp32, Precision::Bf16] {
        // A model per precision: each gets its own feature set.
        let model = store
            .create_model(NewModel {
                name: format!("tiny-{precision}"),
                status: ModelStatus::Trained,
                configuration: Default::default(),
                dataset_id: None,
                description: None,
                metadata: json!({}),
            })
            .await
            .unwrap();
        let model = store
            .upload_artifacts(&model.id, &dir.path().join("weights"))
            .await
            .unwrap();
        let mut wc = WorkerConfig::local("cpu");
        wc.torch_threads = 2;
        wc.embed_precision = precision.to_string();
        let platform: Arc<dyn Platform> = store.clone();
        let worker = Worker::start(platform, wc, home.clone()).await.unwrap();
        assert_eq!(worker.embed_precision, precision);

        // Stored: the embed node over the two items.
        let e = worker
            .submit(
                Function::Embed,
                json!({"items": [{"item_id": image_item.id}, {"item_id": text_item.id}],
                       "model": model.id}),
                None,
            )
            .await
            .unwrap();
        let done = worker.wait(&e.id).await.unwrap();
        assert_eq!(
            done.status,
            ExecutionStatus::Success,
            "{:?}",
            done.latest_status
        );
        let set = cliptune_worker::search::feature_set(&*store, &model)
            .await
            .unwrap();
        let stored_image = store.get_vector(&set.id, &image_item.id).await.unwrap();
        let stored_text = store.get_vector(&set.id, &text_item.id).await.unwrap();

        // Online: the same content as a query, through the batcher.
        let online = Online::new(&worker);
        let prepared = online.model(Some(&model.id), None).await.unwrap();
        let permit = online.batcher.admit().unwrap();
        let inputs = vec![
            prepared.text(caption),
            prepared.image(&image_bytes, "query.png").unwrap(),
        ];
        let (vectors, _) = online
            .batcher
            .embed(&permit, prepared.clone(), inputs)
            .await
            .unwrap();

        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&vectors[0]),
            bits(&stored_text.value),
            "{precision}: text query differs from the stored text vector"
        );
        assert_eq!(
            bits(&vectors[1]),
            bits(&stored_image.value),
            "{precision}: image query differs from the stored image vector"
        );
        // bf16 really ran lower: its image vector is not fp32's.
        match &fp32_image {
            None => fp32_image = Some(bits(&stored_image.value)),
            Some(fp32) => assert_ne!(fp32, &bits(&stored_image.value)),
        }
        worker.shutdown().await;
    }
}
