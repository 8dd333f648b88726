//! `cliptune search` and `cliptune features export` on a store whose dataset the embed node
//! embedded (drawn shapes, a tiny random-weight model).

use cliptune_store::import::{import, ImportOptions};
use cliptune_store::*;
use cliptune_worker::{Function, Worker, WorkerConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

struct Setup {
    dir: tempfile::TempDir,
    model: Model,
    dataset: Dataset,
    set: FeatureSet,
    store: Arc<LocalStore>,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let store = Arc::new(LocalStore::open(&home).unwrap());
        let images = dir.path().join("shapes");
        cliptune_worker::demo::write_dataset(&images, 12, 32, 5).unwrap();
        import(&store, &images, &ImportOptions::new("shapes"))
            .await
            .unwrap();
        let dataset = store.dataset_by_name("shapes").await.unwrap();
        // A text item too: it is embedded by the text tower and exported as text_emb.
        store
            .upload_item(
                &dataset.id,
                NewItem {
                    filename: "/notes/red.txt".into(),
                    bytes: b"a note about red circles".to_vec(),
                    mimetype: Some("text/plain".into()),
                    description: None,
                    metadata: json!({}),
                    hidden: false,
                },
            )
            .await
            .unwrap();
        let model =
            cliptune_worker::demo::tiny_model(&*store, "tiny", 0, &dir.path().join("weights"))
                .await
                .unwrap();
        let mut wc = WorkerConfig::local("cpu");
        wc.torch_threads = 2;
        let platform: Arc<dyn Platform> = store.clone();
        let worker = Worker::start(platform, wc, home).await.unwrap();
        let e = worker
            .submit(
                Function::Embed,
                json!({"dataset_id": dataset.id, "model": model.id}),
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
        Setup {
            dir,
            model,
            dataset,
            set,
            store,
        }
    })
}

/// A text query's arguments, shared by `cliptune search` and `cliptune demo query`.
const RED_CIRCLE_TOP_4: [&str; 8] = [
    "--dataset",
    "shapes",
    "--model",
    "tiny",
    "--text",
    "a red circle",
    "-k",
    "4",
];

fn cliptune(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cliptune"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn search_and_export() {
    let s = setup();
    let home = s.dir.path().join("home");
    let items = block(s.store.all_items(&s.dataset.id, None)).unwrap();
    let image_item = items.iter().find(|i| i.kind() == ItemKind::Image).unwrap();
    let image_path = s
        .dir
        .path()
        .join("shapes")
        .join(image_item.filename.trim_start_matches('/'));
    assert!(image_path.is_file(), "{}", image_path.display());

    // An image identical to an item finds it first at cosine 1.
    let (ok, out, err) = cliptune(
        &home,
        &[
            "--json",
            "search",
            "--dataset",
            "shapes",
            "--model",
            "tiny",
            "--image",
            image_path.to_str().unwrap(),
            "-k",
            "3",
        ],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["item_id"], json!(image_item.id));
    assert!(
        results[0]["score"].as_f64().unwrap() > 0.9999,
        "{}",
        results[0]
    );
    assert!(results[0]["score"].as_f64() >= results[1]["score"].as_f64());

    // A text query: scores are the cosines with the stored vectors, best first; a filter narrows.
    let (ok, out, err) = cliptune(
        &home,
        &[
            "--json",
            "search",
            "--dataset",
            &s.dataset.id,
            "--model",
            &s.model.id,
            "--text",
            "a red circle",
            "--filter",
            r#"{"dir": "/notes"}"#,
        ],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["red.txt"]);
    let (ok, out, _) = cliptune(&home, &[&["search"][..], &RED_CIRCLE_TOP_4[..]].concat());
    assert!(ok);
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        4,
        "{out}"
    );

    // Errors name the problem and exit 1.
    for (args, want) in [
        (
            vec![
                "search",
                "--dataset",
                "shapes",
                "--model",
                "nope",
                "--text",
                "x",
            ],
            "nope",
        ),
        (
            vec![
                "search",
                "--dataset",
                "shapes",
                "--model",
                "tiny",
                "--text",
                "x",
                "-k",
                "0",
            ],
            "k",
        ),
        (
            vec![
                "search",
                "--dataset",
                "shapes",
                "--model",
                "tiny",
                "--text",
                "x",
                "--filter",
                "{",
            ],
            "--filter",
        ),
        (
            vec![
                "search",
                "--dataset",
                "shapes",
                "--model",
                "tiny",
                "--image",
                "/no/such.jpg",
            ],
            "/no/such.jpg",
        ),
    ] {
        let (ok, _, err) = cliptune(&home, &args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // Export, float32: every stored vector, rows aligned with the metadata lines.
    let out_dir = s.dir.path().join("export32");
    let (ok, out, err) = cliptune(
        &home,
        &[
            "--json",
            "features",
            "export",
            "--model",
            "tiny",
            "--dataset",
            "shapes",
            "--out",
            out_dir.to_str().unwrap(),
            "--dtype",
            "float32",
        ],
    );
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["image"]["rows"], json!(12));
    assert_eq!(report["text"]["rows"], json!(1));
    assert_eq!(report["missing"], json!(0));
    for (npy, meta) in [
        ("img_emb/img_emb_0.npy", "metadata/metadata_0.jsonl"),
        ("text_emb/text_emb_0.npy", "text_metadata/metadata_0.jsonl"),
    ] {
        let arr =
            cliptune_prep::npy::from_npy(&std::fs::read(out_dir.join(npy)).unwrap(), npy).unwrap();
        let lines: Vec<Value> = std::fs::read_to_string(out_dir.join(meta))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(arr.shape, vec![lines.len(), s.set.size as usize]);
        for (row, m) in arr.data.chunks(s.set.size as usize).zip(&lines) {
            let stored = block(
                s.store
                    .get_vector(&s.set.id, m["item_id"].as_str().unwrap()),
            )
            .unwrap();
            assert_eq!(row, &stored.value[..], "row of {}", m["image_path"]);
            assert!(m["image_path"].as_str().unwrap().starts_with('/'));
        }
        if npy.starts_with("img") {
            assert!(lines
                .iter()
                .all(|m| m["caption"].as_str().is_some_and(|c| !c.is_empty())));
        }
    }

    // float16 (the default, as clip-retrieval): the same rows within half precision.
    let out16 = s.dir.path().join("export16");
    let (ok, _, err) = cliptune(
        &home,
        &[
            "features",
            "export",
            "--model",
            "tiny",
            "--dataset",
            "shapes",
            "--out",
            out16.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let a32 = cliptune_prep::npy::from_npy(
        &std::fs::read(out_dir.join("img_emb/img_emb_0.npy")).unwrap(),
        "32",
    )
    .unwrap();
    let a16 = cliptune_prep::npy::from_npy(
        &std::fs::read(out16.join("img_emb/img_emb_0.npy")).unwrap(),
        "16",
    )
    .unwrap();
    assert_eq!(a16.dtype, cliptune_prep::npy::Dtype::F16);
    assert_eq!(a16.shape, a32.shape);
    assert!(a16
        .data
        .iter()
        .zip(&a32.data)
        .all(|(h, f)| (h - f).abs() <= f.abs() * 1e-3 + 1e-4));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out16.join("export.json")).unwrap()).unwrap();
    assert_eq!(manifest["dtype"], "float16");
    assert_eq!(manifest["model"]["name"], "tiny");
}

/// `cliptune demo query` (the text embedded on a worker's device) ranks as `cliptune search`
/// (embedded in-process) does, with the same scores; an unknown dataset and a model without
/// vectors are refused with a message naming them.
#[test]
fn demo_query_ranks_as_search_does() {
    let s = setup();
    let home = s.dir.path().join("home");
    let query = |cmd: &[&str]| {
        let mut args = vec!["--json"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&RED_CIRCLE_TOP_4);
        let (ok, out, err) = cliptune(&home, &args);
        assert!(ok, "{cmd:?}: {err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let demo = query(&["demo", "query"]);
    let search = query(&["search"]);
    assert_eq!(demo["model_id"], json!(s.model.id));
    let ranked = |v: &Value, list: &str| -> Vec<(String, f64)> {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["item_id"].as_str().unwrap().to_string(),
                    h["score"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (d, q) = (ranked(&demo, "matches"), ranked(&search, "results"));
    assert_eq!(d.len(), 4);
    assert_eq!(
        d.iter().map(|h| &h.0).collect::<Vec<_>>(),
        q.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
    for ((_, a), (_, b)) in d.iter().zip(&q) {
        assert!((a - b).abs() < 1e-5, "{d:?} vs {q:?}");
    }

    let (ok, _, err) = cliptune(
        &home,
        &[
            "demo",
            "query",
            "--dataset",
            "no-such-set",
            "--model",
            "tiny",
            "--text",
            "x",
        ],
    );
    assert!(!ok && err.contains("no-such-set"), "{err}");
    block(cliptune_worker::demo::tiny_model(
        &*s.store,
        "bare",
        1,
        &s.dir.path().join("bare"),
    ))
    .unwrap();
    let (ok, _, err) = cliptune(
        &home,
        &[
            "demo",
            "query",
            "--dataset",
            "shapes",
            "--model",
            "bare",
            "--text",
            "x",
        ],
    );
    assert!(!ok && err.contains("has no vectors yet"), "{err}");
}
