//! A query and a stored vector are computed the same way: the online path (the batcher
//! behind `POST /embed` and `POST /search`) and the dataset embed node give bit-identical
//! vectors for the same image and the same text, at every precision the CPU runs
//! (fp32 and bf16 autocast; fp16 needs CUDA, which `--embed-precision` enforces).

mod search_fixture;

use cliptune_clip::Precision;
use cliptune_store::*;
use cliptune_worker::Function;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_query_and_embed_node_give_identical_vectors() {
    let caption = "a note about two red circles";
    let mut fp32_image: Option<Vec<u32>> = None;
    for precision in [Precision::Fp32, Precision::Bf16] {
        // A worker per precision.
        let f = search_fixture::start_with(|c| c.embed_precision = precision.to_string()).await;
        let (store, worker) = (&f.store, &f.worker);
        // A model of its own, so that its vectors are the embed node's over these two items
        // (a batch's make-up changes the last bits).
        let model = &cliptune_worker::demo::tiny_model(
            &**store,
            &format!("tiny-{precision}"),
            0,
            &f.dir.path().join("weights"),
        )
        .await
        .unwrap();
        assert_eq!(worker.embed_precision, precision);
        let text_item = store
            .upload_item(
                &f.dataset.id,
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
            .all_items(&f.dataset.id, None)
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.kind() == ItemKind::Image)
            .unwrap();
        let image_bytes = store.item_bytes(&image_item.id).await.unwrap();

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
        let set = cliptune_worker::search::feature_set(&**store, model)
            .await
            .unwrap();
        let stored_image = store.get_vector(&set.id, &image_item.id).await.unwrap();
        let stored_text = store.get_vector(&set.id, &text_item.id).await.unwrap();

        // Online: the same content as a query, through the batcher.
        let vectors = cliptune_worker::embed_batched(
            worker,
            &model.id,
            &[caption],
            &[(&image_bytes, "query.png")],
        )
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
        f.stop().await;
    }
}
