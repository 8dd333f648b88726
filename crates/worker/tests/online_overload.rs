//! Past `--max-inflight` (CLIPTUNE_MAX_INFLIGHT) online requests, new ones answer 429 at once.

mod search_fixture;

use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_answers_429_at_once() {
    let f = search_fixture::start_with(|c| c.max_inflight = 2).await;
    let http = reqwest::Client::new();

    // Hold the device so that admitted requests stay in flight.
    let hold = Duration::from_millis(1500);
    let device = f.worker.device.clone();
    let busy = tokio::spawn(async move { device.run(move |_| std::thread::sleep(hold)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let http = http.clone();
        let u = format!("{}/search", f.url);
        let body = json!({"text": format!("query {i}"), "model_id": f.base.id, "k": 3});
        tasks.push(tokio::spawn(async move {
            let r = http.post(u).json(&body).send().await.unwrap();
            let at = started.elapsed();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, at, body)
        }));
        // Keep the arrival order deterministic: the first two are admitted.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    busy.await.unwrap().unwrap();
    let ok = outcomes.iter().filter(|o| o.0 == 200).count();
    let rejected: Vec<_> = outcomes.iter().filter(|o| o.0 == 429).collect();
    assert_eq!(ok, 2, "{outcomes:?}");
    assert_eq!(rejected.len(), 4, "{outcomes:?}");
    for (_, at, body) in &rejected {
        assert_eq!(body["error_type"], "overloaded");
        assert!(*at < hold, "a 429 must not wait for the device ({at:?})");
    }
    // Once the load is gone, requests are admitted again.
    let r = http
        .post(format!("{}/search", f.url))
        .json(&json!({"text": "again", "model_id": f.base.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    f.stop().await;
}
