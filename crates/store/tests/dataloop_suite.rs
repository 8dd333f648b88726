//! The shared behavioural suite (tests/suite) on the Dataloop backend, each part against a
//! fresh fake gate (crates/gate) that enforces the documented request shapes.

use cliptune_gate as fake_gate;
mod suite;

use cliptune_store::{DataloopBackend, Platform};
use fake_gate::FakeGate;

async fn backend() -> (FakeGate, DataloopBackend, tempfile::TempDir) {
    let gate = FakeGate::start().await;
    // Bot login, so every call also exercises the token path.
    let b = DataloopBackend::new(gate.bot_config()).unwrap();
    (gate, b, tempfile::tempdir().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_and_items() {
    let (_g, b, _d) = backend().await;
    suite::datasets_and_items(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dql_queries() {
    let (_g, b, _d) = backend().await;
    suite::dql_queries(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_subsets() {
    let (_g, b, _d) = backend().await;
    suite::template_subsets(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_updates() {
    let (_g, b, _d) = backend().await;
    suite::item_updates(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captions() {
    let (_g, b, _d) = backend().await;
    suite::captions(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models() {
    let (_g, b, d) = backend().await;
    suite::models(&b, d.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_variables() {
    let (_g, b, d) = backend().await;
    suite::pipelines_and_variables(&b, d.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions() {
    let (_g, b, _d) = backend().await;
    suite::executions(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_sets_and_vectors() {
    let (_g, b, _d) = backend().await;
    suite::feature_sets_and_vectors(&b).await;
}

/// The whole suite on one gate behind `Arc<dyn Platform>`, as the worker holds it, with
/// clones that stay `cloning` for a few polls and tokens that need refreshing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_gate() {
    let (gate, b, d) = backend().await;
    gate.with(|s| {
        s.clone_polls = 2;
        s.token_ttl = 30;
    });
    let p: std::sync::Arc<dyn Platform> = std::sync::Arc::new(b);
    suite::run_all(p.as_ref(), d.path()).await;
    assert!(gate.with(|s| s.refreshes) > 0);
}
