//! `kill -9` during vector upserts and imports: the store stays consistent and keeps every
//! transaction the killed process saw committed. The child is the real store code
//! (`cliptune-store-stress`), killed at varying points in its write loop.

use cliptune_store::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const STRESS: &str = env!("CARGO_BIN_EXE_cliptune-store-stress");

/// Runs the child until it reported `min_commits` commits, waits `extra`, SIGKILLs it, and
/// returns every line it printed.
fn run_and_kill(args: &[&str], min_commits: usize, extra: Duration) -> Vec<String> {
    let mut child = Command::new(STRESS)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn stress child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while lines.len() < min_commits {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => lines.push(l),
            Err(e) => {
                let _ = child.kill();
                panic!("child stalled after {} lines: {e}", lines.len());
            }
        }
    }
    std::thread::sleep(extra);
    child.kill().expect("SIGKILL the child"); // Child::kill sends SIGKILL on Unix.
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn kill_during_vector_upserts_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let batch = 500u64;
    let mut committed = 0u64;
    for (round, extra_ms) in [0u64, 7, 23].into_iter().enumerate() {
        let lines = run_and_kill(
            &["upsert-loop", home.to_str().unwrap(), &batch.to_string()],
            3,
            Duration::from_millis(extra_ms),
        );
        let last: u64 = lines
            .iter()
            .filter_map(|l| l.strip_prefix("committed ")?.parse().ok())
            .max()
            .expect("some commits");
        committed = committed.max(last + 1);
        rt().block_on(async {
            let store = LocalStore::open(&home).unwrap();
            assert_eq!(
                store.check().await.unwrap(),
                Vec::<String>::new(),
                "round {round}"
            );
            let model = store.model_by_name("stress").await.unwrap();
            let fs = store
                .feature_set_for_model(&model.id, "stress", 64)
                .await
                .unwrap();
            let ids = store.vector_entities(&fs.id, None).await.unwrap();
            let n = ids.len() as u64;
            // Batches are atomic: never a partial one.
            assert_eq!(
                n % batch,
                0,
                "round {round}: {n} vectors is not whole batches"
            );
            assert!(
                n >= committed * batch,
                "round {round}: {n} vectors stored, {committed} batches were reported committed"
            );
            // Spot-check exact contents of the first and last committed vectors.
            for i in [0, committed * batch - 1] {
                let v = store
                    .get_vector(&fs.id, &format!("{i:024x}"))
                    .await
                    .unwrap();
                assert_eq!(v.value.len(), 64);
                let q = NearestQuery {
                    vector: v.value.clone(),
                    k: 1,
                    dataset_id: None,
                    filter: None,
                };
                let hit = store.nearest(&fs.id, &q).await.unwrap();
                assert_eq!(hit[0].entity_id, format!("{i:024x}"));
            }
        });
    }
}

#[test]
fn kill_during_import_leaves_whole_datasets_only() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let n = 200;
    let mut lines = String::new();
    for i in 0..n {
        // Distinct content per file so every import writes real blobs.
        std::fs::write(
            src.join(format!("{i}.jpg")),
            format!("image bytes {i} ").repeat(200),
        )
        .unwrap();
        lines.push_str(&format!(
            "{{\"file\":\"{i}.jpg\",\"caption\":\"caption {i}\"}}\n"
        ));
    }
    std::fs::write(src.join("captions.jsonl"), lines).unwrap();
    for (round, extra_ms) in [0u64, 5, 17].into_iter().enumerate() {
        let out = run_and_kill(
            &["import-loop", home.to_str().unwrap(), src.to_str().unwrap()],
            2,
            Duration::from_millis(extra_ms),
        );
        let reported: Vec<String> = out
            .iter()
            .filter_map(|l| {
                l.strip_prefix("committed ")?
                    .split(' ')
                    .next()
                    .map(String::from)
            })
            .collect();
        rt().block_on(async {
            let store = LocalStore::open(&home).unwrap();
            assert_eq!(
                store.check().await.unwrap(),
                Vec::<String>::new(),
                "round {round}"
            );
            let datasets = store.list_datasets().await.unwrap();
            for name in &reported {
                let d = datasets
                    .iter()
                    .find(|d| &d.name == name)
                    .unwrap_or_else(|| panic!("round {round}: committed dataset {name} lost"));
                assert_eq!(d.items_count, n, "round {round}: {name}");
            }
            for d in &datasets {
                // The import in flight at the kill is all or nothing.
                assert!(
                    d.items_count == n || d.items_count == 0,
                    "round {round}: {} has {} items",
                    d.name,
                    d.items_count
                );
                let items = store.all_items(&d.id, None).await.unwrap();
                for item in items.iter().step_by(37) {
                    let i: usize = item.name.trim_end_matches(".jpg").parse().unwrap();
                    assert_eq!(
                        store.item_bytes(&item.id).await.unwrap(),
                        format!("image bytes {i} ").repeat(200).as_bytes()
                    );
                    assert_eq!(
                        item.description.as_deref(),
                        Some(format!("caption {i}").as_str())
                    );
                }
            }
        });
    }
}
