//! The search page in headless Chromium against a real server (scripts/browser-test.mjs
//! drives the browser). Needs Node.js and Debian's chromium, so it is ignored by a plain
//! `cargo test`; `scripts/browser-test.sh` (run by `make test`) installs chromium when
//! missing and runs it.

mod search_fixture;

use cliptune_store::prelude::*;
use cliptune_store::{MetricPoint, MetricSample};
use serde_json::{json, Value};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs chromium and node: run scripts/browser-test.sh"]
async fn search_page_in_headless_chromium() {
    let f = search_fixture::start().await;
    // Training curves for the page to draw: what the train node publishes per epoch
    // (figures loss and recall@1/@5, x = epoch). Values are made up: this checks drawing.
    let mut samples = Vec::new();
    for epoch in 0..4 {
        let x = epoch as f64;
        for (figure, legend, y) in [
            ("loss", "train", 2.0 - 0.3 * x),
            ("loss", "val", 2.1 - 0.25 * x),
            ("recall@1", "image-to-text", 0.1 + 0.1 * x),
            ("recall@1", "text-to-image", 0.12 + 0.09 * x),
        ] {
            if figure == "loss" && legend == "train" && epoch == 0 {
                continue;
            }
            samples.push(MetricSample {
                model_id: f.tuned.id.clone(),
                dataset_id: Some(f.dataset.id.clone()),
                figure: figure.into(),
                legend: legend.into(),
                data: MetricPoint { x, y },
                created_at: String::new(),
            });
        }
    }
    f.store.publish_metrics(&samples).await.unwrap();

    let query = "a small red circle on the left";
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let url = f.url.clone();
    let (base, tuned) = (f.base.id.clone(), f.tuned.id.clone());
    let script = root.join("scripts/browser-test.mjs");
    let run = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("node")
            .arg(&script)
            .args([&url, query, &base, &tuned])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node is needed for the browser test");
        // The script has its own 90 s deadline; this one guards against node itself hanging.
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("the browser test did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut out = String::new();
        let mut err = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, out, err)
    });
    let (status, out, err) = run.await.unwrap();
    assert!(status.success(), "browser test failed:\n{err}\n{out}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();

    // What the page rendered is what the API answers for the same query and model.
    let api: Value = reqwest::Client::new()
        .post(format!("{}/search", f.url))
        .json(&json!({"text": query, "model_id": f.tuned.id, "k": 12}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_items: Vec<&str> = api["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["item_id"].as_str().unwrap())
        .collect();
    let page_items: Vec<&str> = summary["single"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        page_items, api_items,
        "the page shows the API's results in order"
    );
    let page_scores: Vec<String> = summary["single"]["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let api_scores: Vec<String> = api["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{:.3}", h["score"].as_f64().unwrap()))
        .collect();
    assert_eq!(page_scores, api_scores);
    assert!(
        summary["url"]
            .as_str()
            .unwrap()
            .contains("q=a+small+red+circle"),
        "the query is kept in the URL: {summary}"
    );
    f.stop().await;
}
