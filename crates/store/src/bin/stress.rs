//! `cliptune-store-stress`: drives the embedded store hard, for the crash test and benchmarks.
//!
//! - `upsert-loop HOME BATCH`: upserts batches of deterministic vectors forever, printing
//!   `committed <batch index>` after each commit (the crash test kills it mid-way).
//! - `import-loop HOME SRC`: imports SRC into datasets `ds-0`, `ds-1`, ... forever, printing
//!   `committed <dataset> <items>` after each import.
//! - `bench-vectors N DIM QUERIES`: top-10 cosine query latency over N random vectors.
//! - `bench-import N KB`: imports a generated folder of N files of KB kilobytes with captions.jsonl.
//!
//! Output of the benches is one JSON object on stdout.

use cliptune_store::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn usage() -> ! {
    eprintln!(
        "usage: cliptune-store-stress upsert-loop HOME BATCH | import-loop HOME SRC | bench-vectors N DIM QUERIES | bench-import N KB"
    );
    std::process::exit(2)
}

/// The value of vector `i` (so the crash test can check exact contents).
pub fn value(i: u64, dim: usize) -> Vec<f32> {
    let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage())
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1)
}

async fn model_and_set(store: &LocalStore, dim: u32) -> (Dataset, FeatureSet) {
    let ds = match store.dataset_by_name("vectors").await {
        Ok(d) => d,
        Err(_) => store
            .create_dataset("vectors")
            .await
            .unwrap_or_else(|e| fail(e)),
    };
    let model = match store.model_by_name("stress").await {
        Ok(m) => m,
        Err(_) => store
            .create_model(NewModel::new("stress", ModelStatus::Trained))
            .await
            .unwrap_or_else(|e| fail(e)),
    };
    let fs = store
        .feature_set_for_model(&model.id, "stress", dim)
        .await
        .unwrap_or_else(|e| fail(e));
    (ds, fs)
}

/// Entity ids are synthetic (`e` + zero-padded index, hex-safe): vectors need no items.
pub fn entity(i: u64) -> String {
    format!("{i:024x}")
}

async fn upsert_loop(home: &Path, batch: u64) {
    let store = LocalStore::open(home).unwrap_or_else(|e| fail(e));
    let (ds, fs) = model_and_set(&store, 64).await;
    let start = store
        .vector_entities(&fs.id, None)
        .await
        .unwrap_or_else(|e| fail(e))
        .len() as u64
        / batch;
    for b in start.. {
        let vs: Vec<NewVector> = (b * batch..(b + 1) * batch)
            .map(|i| NewVector {
                entity_id: entity(i),
                dataset_id: ds.id.clone(),
                value: value(i, 64),
            })
            .collect();
        store
            .upsert_vectors(&fs.id, &vs)
            .await
            .unwrap_or_else(|e| fail(e));
        println!("committed {b}");
        let _ = std::io::stdout().flush();
    }
}

async fn import_loop(home: &Path, src: &Path) {
    let store = LocalStore::open(home).unwrap_or_else(|e| fail(e));
    for i in 0.. {
        let name = format!("ds-{i}");
        let r = import::import(&store, src, &import::ImportOptions::new(&name))
            .await
            .unwrap_or_else(|e| fail(e));
        println!("committed {name} {}", r.dataset.items_count);
        let _ = std::io::stdout().flush();
    }
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("cliptune-stress-{}", new_id()));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| fail(e));
    d
}

async fn bench_vectors(n: u64, dim: usize, queries: usize) {
    let dir = tempdir();
    let store = LocalStore::open(&dir).unwrap_or_else(|e| fail(e));
    let (ds, fs) = model_and_set(&store, dim as u32).await;
    let t = Instant::now();
    let batch = 10_000;
    for b in (0..n).step_by(batch) {
        let vs: Vec<NewVector> = (b..(b + batch as u64).min(n))
            .map(|i| NewVector {
                entity_id: entity(i),
                dataset_id: ds.id.clone(),
                value: value(i, dim),
            })
            .collect();
        store
            .upsert_vectors(&fs.id, &vs)
            .await
            .unwrap_or_else(|e| fail(e));
    }
    let upsert_s = t.elapsed().as_secs_f64();
    let q = |i: u64| NearestQuery {
        vector: value(u64::MAX - i, dim),
        k: 10,
        dataset_id: None,
        filter: None,
    };
    let t = Instant::now();
    store
        .nearest(&fs.id, &q(0))
        .await
        .unwrap_or_else(|e| fail(e));
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut ms: Vec<f64> = (1..=queries as u64)
        .map(|i| {
            let t = Instant::now();
            let rt = tokio::runtime::Handle::current();
            let hits = tokio::task::block_in_place(|| rt.block_on(store.nearest(&fs.id, &q(i))))
                .unwrap_or_else(|e| fail(e));
            assert_eq!(hits.len(), 10);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "vectors": n, "dim": dim, "queries": queries, "k": 10,
            "threads": rayon::current_num_threads(),
            "upsert_seconds": upsert_s,
            "first_query_ms_including_load": first_ms,
            "query_ms_median": pct(0.5), "query_ms_p95": pct(0.95), "query_ms_max": pct(1.0),
        })
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn bench_import(n: usize, kb: usize) {
    let dir = tempdir();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("images")).unwrap_or_else(|e| fail(e));
    let mut lines = String::new();
    for i in 0..n {
        let bytes: Vec<u8> = value(i as u64, kb * 256)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(src.join(format!("images/{i:05}.jpg")), bytes).unwrap_or_else(|e| fail(e));
        let subset = if i % 10 == 0 { "validation" } else { "train" };
        lines.push_str(&format!(
            "{{\"file\":\"images/{i:05}.jpg\",\"caption\":\"picture number {i}\",\"subset\":\"{subset}\"}}\n"
        ));
    }
    std::fs::write(src.join("captions.jsonl"), lines).unwrap_or_else(|e| fail(e));
    let store = LocalStore::open(&dir.join("home")).unwrap_or_else(|e| fail(e));
    let t = Instant::now();
    let r = import::import(&store, &src, &import::ImportOptions::new("bench"))
        .await
        .unwrap_or_else(|e| fail(e));
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let again = import::import(&store, &src, &import::ImportOptions::new("bench"))
        .await
        .unwrap_or_else(|e| fail(e));
    let second = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "files": n, "kb_each": kb, "created": r.items.created,
            "import_seconds": first, "reimport_seconds": second,
            "reimport_unchanged": again.items.unchanged,
        })
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upsert-loop") => {
            upsert_loop(Path::new(&arg::<String>(&args, 2)), arg(&args, 3)).await
        }
        Some("import-loop") => {
            import_loop(
                Path::new(&arg::<String>(&args, 2)),
                Path::new(&arg::<String>(&args, 3)),
            )
            .await
        }
        Some("bench-vectors") => bench_vectors(arg(&args, 2), arg(&args, 3), arg(&args, 4)).await,
        Some("bench-import") => bench_import(arg(&args, 2), arg(&args, 3)).await,
        _ => usage(),
    }
}
