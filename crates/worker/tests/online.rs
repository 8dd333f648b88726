//! Online embedding, search and the page's API against a real server (see search_fixture).

mod http_json;
mod search_fixture;
use http_json::get_json;

use base64::Engine;
use cliptune_clip::{checkpoint, ClipConfig};
use cliptune_prep::Codec;
use cliptune_store::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Features computed the plain way: one input at a time, texts padded to the full context.
struct Reference {
    clip: cliptune_clip::Clip,
    codec: Codec,
    config: ClipConfig,
}

impl Reference {
    async fn load(store: &dyn Platform, model_id: &str, dir: &std::path::Path) -> Self {
        store.download_artifacts(model_id, dir).await.unwrap();
        let clip = checkpoint::load(dir, tch::Device::Cpu, &Default::default()).unwrap();
        let config = clip.config().clone();
        Self {
            codec: Codec::new(
                config.vision.image_size as u32,
                config.text.context_length as usize,
            ),
            clip,
            config,
        }
    }

    fn text(&self, t: &str) -> Vec<f32> {
        let ids = self.codec.tokens(t);
        assert_eq!(ids.len() as i64, self.config.text.context_length);
        let ids = tch::Tensor::from_slice(&ids).view([1, -1]);
        Vec::<f32>::try_from(self.clip.text_features(&ids, true).unwrap().flatten(0, -1)).unwrap()
    }

    fn image(&self, bytes: &[u8]) -> Vec<f32> {
        let px = self.codec.image(bytes, "reference").unwrap();
        let s = self.config.vision.image_size;
        let px = tch::Tensor::from_slice(&px).view([1, 3, s, s]);
        Vec::<f32>::try_from(self.clip.image_features(&px, true).unwrap().flatten(0, -1)).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embed_search_and_page_api() {
    // fp32: the vectors are compared with one-by-one fp32 references at 1e-4 (`auto` is bf16
    // on CPUs with native bf16; bf16 is covered by the embed-dataset CLI test).
    let f = search_fixture::start_with(|c| c.embed_precision = "fp32".into()).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", f.url);
    let shapes = search_fixture::captions(&f);
    let reference = Reference::load(&*f.store, &f.base.id, &f.dir.path().join("ref-base")).await;

    // ---- POST /embed: texts, images and item ids, in input order, as computed one by one.
    let texts = [
        "a red circle",
        "a small blue square on the right of a noisy picture",
        "x",
    ];
    let img0 = std::fs::read(&shapes[0].0).unwrap();
    let img1 = std::fs::read(&shapes[1].0).unwrap();
    let items = f.store.all_items(&f.dataset.id, None).await.unwrap();
    let item = &items[2];
    let r = http
        .post(url("/embed"))
        .json(&json!({"texts": texts, "images": [b64(&img0), format!("data:image/png;base64,{}", b64(&img1))],
                      "item_ids": [item.id], "model_id": f.base.name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for h in [
        "server-timing",
        "x-queue-ms",
        "x-device-ms",
        "x-preprocess-ms",
        "x-total-ms",
        "x-batch-inputs",
    ] {
        assert!(r.headers().contains_key(h), "missing timing header {h}");
    }
    assert!(r.headers()["server-timing"]
        .to_str()
        .unwrap()
        .contains("device;dur="));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["model_id"], json!(f.base.id));
    let got_texts = vectors(&body["texts"]);
    let got_images = vectors(&body["images"]);
    let got_items = vectors(&body["items"]);
    assert_eq!(
        (got_texts.len(), got_images.len(), got_items.len()),
        (3, 2, 1)
    );
    for (t, v) in texts.iter().zip(&got_texts) {
        assert!(
            close(v, &reference.text(t), 1e-4),
            "text {t:?} differs from its one-by-one full-context vector"
        );
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalized: {norm}");
    }
    assert!(close(&got_images[0], &reference.image(&img0), 1e-4));
    assert!(close(&got_images[1], &reference.image(&img1), 1e-4));
    assert!(
        !close(&got_images[0], &got_images[1], 1e-3),
        "two different images gave the same vector"
    );
    let set = cliptune_worker::search::feature_set(&*f.store, &f.base)
        .await
        .unwrap();
    let stored = f.store.get_vector(&set.id, &item.id).await.unwrap();
    assert_eq!(
        got_items[0], stored.value,
        "an embedded item answers its stored vector"
    );

    // The default model is the pipeline's "Newest CLIP model".
    let r = http
        .post(url("/embed"))
        .json(&json!({"texts": ["a cross"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["model_id"],
        json!(f.tuned.id)
    );

    // Bad inputs name the field.
    let r = http
        .post(url("/embed"))
        .json(&json!({"images": ["not base64!"], "model_id": f.base.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("images[0]"));
    let r = http
        .post(url("/embed"))
        .json(&json!({"images": [b64(b"not an image")], "model_id": f.base.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = http
        .post(url("/embed"))
        .json(&json!({"item_ids": ["0123456789abcdef01234567"], "model_id": f.base.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // ---- Dynamic batching: with the device busy, concurrent requests share batches and
    // each still gets its own vector.
    let device = f.worker.device.clone();
    let busy = tokio::spawn(async move {
        device
            .run(|_| std::thread::sleep(Duration::from_millis(400)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queries: Vec<String> = (0..24)
        .map(|i| format!("shape number {i} in {}", ["red", "green", "blue"][i % 3]))
        .collect();
    let answers = futures_join(queries.iter().map(|q| {
        let http = http.clone();
        let u = url("/embed");
        let body = json!({"texts": [q], "model_id": f.base.id});
        async move { http.post(u).json(&body).send().await.unwrap() }
    }))
    .await;
    busy.await.unwrap().unwrap();
    let mut largest = 0usize;
    for (q, r) in queries.iter().zip(answers) {
        assert_eq!(r.status(), 200);
        let inputs: usize = r.headers()["x-batch-inputs"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        largest = largest.max(inputs);
        let v = vectors(&r.json::<Value>().await.unwrap()["texts"]);
        assert!(
            close(&v[0], &reference.text(q), 1e-4),
            "{q:?} got another request's vector"
        );
    }
    assert!(
        largest > 1,
        "requests queued behind a busy device must share a batch (largest batch {largest})"
    );

    // ---- POST /search
    let r = http
        .post(url("/search"))
        .json(&json!({"text": shapes[0].1, "model_id": f.base.id, "k": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["server-timing"]
        .to_str()
        .unwrap()
        .contains("search;dur="));
    let body: Value = r.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(body["query"], "text");
    let scores: Vec<f64> = results
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "not best first: {scores:?}"
    );
    let qv = reference.text(&shapes[0].1);
    for (i, h) in results.iter().enumerate() {
        assert_eq!(h["rank"], json!(i + 1));
        assert!(h["name"].is_string() && h["caption"].is_string(), "{h}");
        assert_eq!(
            h["image_item_id"], h["item_id"],
            "an image item shows itself"
        );
        let v = f
            .store
            .get_vector(&set.id, h["item_id"].as_str().unwrap())
            .await
            .unwrap()
            .value;
        let cos: f32 = v.iter().zip(&qv).map(|(a, b)| a * b).sum();
        assert!(
            (cos as f64 - scores[i]).abs() < 1e-4,
            "score {} is not the cosine {cos}",
            scores[i]
        );
    }
    // Every other item scores at most the 5th.
    for it in &items {
        if results.iter().any(|h| h["item_id"] == json!(it.id)) {
            continue;
        }
        let v = f.store.get_vector(&set.id, &it.id).await.unwrap().value;
        let cos: f32 = v.iter().zip(&qv).map(|(a, b)| a * b).sum();
        assert!(
            cos as f64 <= scores[4] + 1e-5,
            "{} scores {cos} but is not in the top 5",
            it.name
        );
    }

    // An image identical to an item finds that item first, at cosine 1.
    let r = http
        .post(url("/search"))
        .json(&json!({"image": b64(&img0), "dataset": "shapes", "model_id": f.base.id, "k": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let top = &body["results"][0];
    let file0 = shapes[0].0.file_name().unwrap().to_str().unwrap();
    assert_eq!(top["name"], json!(file0));
    assert!(top["score"].as_f64().unwrap() > 0.9999, "{top}");
    assert_eq!(body["dataset_id"], json!(f.dataset.id));

    // More like this: an item's stored vector as the query.
    let r = http
        .post(url("/search"))
        .json(&json!({"item_id": item.id, "model": f.tuned.id, "k": 2}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["results"][0]["item_id"], json!(item.id));
    assert_eq!(body["query"], "item");

    // A DQL filter narrows the candidates to the matching items.
    let r = http
        .post(url("/search"))
        .json(
            &json!({"text": "red", "model_id": f.base.id, "dataset_id": f.dataset.id, "k": 10,
                      "filter": {"name": file0}}),
        )
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let names: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![file0]);

    // Errors.
    for (bad, field, code) in [
        (json!({"text": "a", "k": 0}), "k", 422),
        (
            json!({"text": "a", "image": b64(&img0)}),
            "exactly one",
            422,
        ),
        (json!({"text": "a", "filter": {"name": "x"}}), "filter", 422),
        (
            json!({"text": "a", "model_id": "no-such-model"}),
            "no-such-model",
            404,
        ),
        (
            json!({"text": "a", "dataset_id": "no-such-dataset"}),
            "no-such-dataset",
            404,
        ),
        (
            json!({"text": "a", "model_id": f.base.id, "dataset_id": f.dataset.id, "filter": {"$bogus": 1}}),
            "$bogus",
            422,
        ),
        (json!({"txt": "a"}), "txt", 422),
    ] {
        let r = http.post(url("/search")).json(&bad).send().await.unwrap();
        assert_eq!(r.status().as_u16(), code, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains(field), "{bad}: {e}");
    }

    // ---- The page and what it reads.
    let r = http.get(url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"search-form\"") && html.contains("/ui/app.js"));
    for (path, kind) in [
        ("/ui/app.js", "javascript"),
        ("/ui/style.css", "css"),
        ("/training", "html"),
    ] {
        let r = http.get(url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"].to_str().unwrap().contains(kind),
            "{path}"
        );
    }
    let list: Value = get_json(&http, url("/models")).await;
    assert_eq!(list["default_model_id"], json!(f.tuned.id));
    let tuned = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == json!(f.tuned.id))
        .unwrap();
    assert_eq!(tuned["base_model_id"], json!(f.base.id));
    assert!(tuned["feature_set_id"].is_string());
    let datasets: Value = get_json(&http, url("/datasets")).await;
    assert_eq!(datasets[0]["name"], "shapes");
    assert_eq!(datasets[0]["items_count"], json!(20));
    let metrics: Value = get_json(&http, url(&format!("/models/{}/metrics", f.tuned.name))).await;
    assert_eq!(metrics["model"]["id"], json!(f.tuned.id));
    assert!(metrics["samples"].is_array());
    let r = http
        .get(url(&format!("/items/{}/stream", items[0].id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let want = f.store.item_bytes(&items[0].id).await.unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), want);

    f.stop().await;
}

/// Runs futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
