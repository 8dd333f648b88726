//! The behavioural suite every [`Platform`] backend must pass.
//!
//! Each function takes a backend (`&dyn Platform`) and a scratch folder, creates what it
//! needs through the trait (names get a random suffix, so functions can share one backend
//! and run in any order), and panics on the first broken expectation. To run it against a
//! backend, include this file from an integration test (`#[path = "suite/mod.rs"] mod suite;`)
//! and call [`run_all`] or the single functions.

#![allow(dead_code)]

use cliptune_store::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;

mod executions;
mod features;
mod items;
mod models;

pub use executions::*;
pub use features::*;
pub use items::*;
pub use models::*;

/// Runs every check in sequence on `p`.
pub async fn run_all(p: &dyn Platform, scratch: &Path) {
    datasets_and_items(p).await;
    dql_queries(p).await;
    template_subsets(p).await;
    item_updates(p).await;
    captions(p).await;
    models(p, scratch).await;
    pipelines_and_variables(p, scratch).await;
    executions(p).await;
    feature_sets_and_vectors(p).await;
}

pub fn suffix() -> String {
    new_id()[16..].to_string()
}

fn image(filename: &str, bytes: &[u8], description: Option<&str>, metadata: Value) -> NewItem {
    NewItem {
        filename: filename.into(),
        bytes: bytes.to_vec(),
        mimetype: Some("image/png".into()),
        description: description.map(String::from),
        metadata,
        hidden: false,
    }
}

fn names(items: &[Item]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|i| i.filename.clone()).collect();
    v.sort();
    v
}

fn assert_kind(err: StoreError, kind: &str, mentions: &str) {
    assert_eq!(err.kind().as_str(), kind, "wrong error kind for {err}");
    assert!(
        err.to_string().contains(mentions),
        "error {err:?} should mention {mentions:?}"
    );
}

/// A small dataset used by several checks: 5 files (one hidden), tags, metadata numbers.
pub async fn sample_dataset(p: &dyn Platform) -> Dataset {
    let ds = p
        .create_dataset(&format!("suite-{}", suffix()))
        .await
        .expect("create dataset");
    let items = [
        image(
            "/cats/a.png",
            b"cat a",
            Some("a cat"),
            json!({"system": {"tags": {"train": true}}, "user": {"score": 3, "label": "cat"}}),
        ),
        image(
            "/cats/b.png",
            b"cat b",
            None,
            json!({"system": {"description": "another cat", "tags": {"validation": true}}, "user": {"score": 7.5, "label": "cat"}}),
        ),
        image(
            "/dogs/c.jpg",
            b"dog c",
            Some("a dog"),
            json!({"system": {"tags": {"train": true}}, "user": {"score": 10, "label": "dog"}}),
        ),
        NewItem {
            filename: "notes/d.txt".into(),
            bytes: b"a text about birds".to_vec(),
            mimetype: Some("text/plain".into()),
            description: None,
            metadata: json!({"user": {"flag": false}}),
            hidden: false,
        },
        NewItem {
            hidden: true,
            ..image("/hidden/e.png", b"hidden e", Some("hidden"), json!({}))
        },
    ];
    for it in items {
        p.upload_item(&ds.id, it).await.expect("upload item");
    }
    p.get_dataset(&ds.id).await.expect("get dataset")
}
