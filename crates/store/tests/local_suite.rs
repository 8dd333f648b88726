//! The behavioural suite on the embedded backend, each part on a fresh store in a temp dir.

mod suite;

use cliptune_store::LocalStore;

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("home")).unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_and_items() {
    let (_d, s) = store();
    suite::datasets_and_items(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dql_queries() {
    let (_d, s) = store();
    suite::dql_queries(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_subsets() {
    let (_d, s) = store();
    suite::template_subsets(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_updates() {
    let (_d, s) = store();
    suite::item_updates(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captions() {
    let (_d, s) = store();
    suite::captions(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models() {
    let (d, s) = store();
    suite::models(&s, d.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_variables() {
    let (d, s) = store();
    suite::pipelines_and_variables(&s, d.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions() {
    let (_d, s) = store();
    suite::executions(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_sets_and_vectors() {
    let (_d, s) = store();
    suite::feature_sets_and_vectors(&s).await;
}

/// The whole suite on one store behind `Arc<dyn Platform>`, as the worker holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_one_store() {
    let (d, s) = store();
    let p: std::sync::Arc<dyn cliptune_store::Platform> = std::sync::Arc::new(s);
    suite::run_all(p.as_ref(), d.path()).await;
    let again = LocalStore::open(&d.path().join("home")).unwrap();
    assert!(again.check().await.unwrap().is_empty());
}
