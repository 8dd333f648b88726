//! `cliptune embed-dataset` killed with SIGKILL mid-run, then run again: the rerun resumes
//! the execution the killed process left, embeds only what is missing, stores exactly one
//! vector per readable item (equal to an uninterrupted run's) and lists the corrupt image.

use cliptune_store::prelude::*;
use cliptune_store::LocalStore;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cliptune");

/// Big enough that embedding 160 images one thread at a time takes a few seconds.
const ARCH: &str = r#"{"embed_dim": 32, "activation": "quick_gelu",
 "vision": {"width": 192, "layers": 6, "heads": 4, "patch_size": 8, "image_size": 64, "mlp_dim": 768},
 "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 16, "vocab_size": 49408, "mlp_dim": 64}}"#;

const IMAGES: usize = 160;

fn cliptune(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--home")
        .arg(home)
        .args(args)
        .env("CLIPTUNE_LOG", "error");
    c
}

fn ok(mut c: Command) -> Value {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

const EMBED: &[&str] = &[
    "--json",
    "embed-dataset",
    "--dataset",
    "shapes",
    "--model",
    "m",
    "--device",
    "cpu",
    "--batch-size",
    "4",
    "--torch-threads",
    "1",
];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// (entity id, vector) of every vector the model's feature set holds.
fn vectors(home: &Path) -> Vec<(String, Vec<f32>)> {
    rt().block_on(async {
        let store = LocalStore::open(home).unwrap();
        let mut all = Vec::new();
        for set in store.list_feature_sets().await.unwrap() {
            for id in store.vector_entities(&set.id, None).await.unwrap() {
                let v = store.get_vector(&set.id, &id).await.unwrap();
                all.push((id, v.value));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    })
}

fn count(home: &Path) -> usize {
    rt().block_on(async {
        let store = LocalStore::open(home).unwrap();
        let mut n = 0;
        for set in store.list_feature_sets().await.unwrap() {
            n += store.vector_entities(&set.id, None).await.unwrap().len();
        }
        n
    })
}

/// A store under `root/home` with a drawn dataset "shapes" of `images` images (plus a corrupt
/// JPEG when `corrupt`) and the model "m" (ARCH, seeded). Returns the home.
fn setup(root: &Path, images: usize, seed: &str, corrupt: bool) -> std::path::PathBuf {
    let home = root.join("home");
    let data = root.join("data");
    let count = images.to_string();
    let out = data.to_str().unwrap();
    ok(cliptune(
        &home,
        &[
            "demo", "data", "--out", out, "--count", &count, "--size", "64",
        ],
    ));
    if corrupt {
        std::fs::write(data.join("bad.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
        let mut captions = std::fs::read_to_string(data.join("captions.jsonl")).unwrap();
        captions.push_str("{\"file\": \"bad.jpg\", \"caption\": \"a broken image\"}\n");
        std::fs::write(data.join("captions.jsonl"), captions).unwrap();
    }
    let arch = root.join("arch.json");
    std::fs::write(&arch, ARCH).unwrap();
    ok(cliptune(
        &home,
        &["datasets", "import", out, "--name", "shapes"],
    ));
    let arch = arch.to_str().unwrap();
    ok(cliptune(
        &home,
        &[
            "models", "create", "--arch", arch, "--name", "m", "--seed", seed,
        ],
    ));
    home
}

#[test]
fn kill_9_then_rerun_embeds_the_rest_once() {
    let tmp = tempfile::tempdir().unwrap();
    let home = setup(tmp.path(), IMAGES, "1", true);
    // An untouched copy for the uninterrupted run.
    let clean = tmp.path().join("clean");
    copy_dir(&home, &clean);

    let mut child = cliptune(&home, EMBED)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let n = count(&home);
        if n > 0 {
            assert!(
                n < IMAGES,
                "the run finished before it could be killed ({n} vectors)"
            );
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "embed-dataset exited early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no vector after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = count(&home);
    assert!(
        before > 0 && before < IMAGES,
        "{before} vectors at the kill"
    );

    let rerun = ok(cliptune(&home, EMBED));
    assert_eq!(rerun["status"], "success", "{rerun}");
    let embedded = rerun["embedded"].as_u64().unwrap() as usize;
    let already = rerun["already_embedded"].as_u64().unwrap() as usize;
    assert_eq!(already, before, "{rerun}");
    assert_eq!(embedded + already, IMAGES, "{rerun}");
    let failed = rerun["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{rerun}");
    assert!(!failed[0]["reason"].as_str().unwrap().is_empty());
    // The killed run's execution was resumed: there is one embed execution, not two.
    let executions = rt().block_on(async {
        let store = LocalStore::open(&home).unwrap();
        store.list_executions(&Default::default()).await.unwrap()
    });
    let embeds: Vec<_> = executions
        .iter()
        .filter(|e| e.function_name == "embed")
        .collect();
    assert_eq!(embeds.len(), 1, "{embeds:?}");
    assert_eq!(
        embeds[0].id.as_str(),
        rerun["execution_id"].as_str().unwrap()
    );

    // A third run finds nothing to do.
    let third = ok(cliptune(&home, EMBED));
    assert_eq!(third["embedded"], 0, "{third}");
    assert_eq!(third["already_embedded"].as_u64().unwrap() as usize, IMAGES);

    // One vector per readable item, equal to an uninterrupted run's.
    let resumed = vectors(&home);
    assert_eq!(resumed.len(), IMAGES);
    let whole = ok(cliptune(&clean, EMBED));
    assert_eq!(
        whole["embedded"].as_u64().unwrap() as usize,
        IMAGES,
        "{whole}"
    );
    let reference = vectors(&clean);
    assert_eq!(reference.len(), IMAGES);
    for ((a, va), (b, vb)) in resumed.iter().zip(&reference) {
        assert_eq!(a, b);
        let diff = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{a}: vectors differ by {diff}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `--precision bf16` (CPU autocast) gives vectors close to fp32's; fp16 on the CPU and an
/// unknown dataset are refused with messages that say what to do.
#[test]
fn precision_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let home = setup(tmp.path(), 24, "2", false);
    let bf16_home = tmp.path().join("bf16");
    copy_dir(&home, &bf16_home);
    let run = |home: &Path, precision: &str| {
        let mut args = EMBED.to_vec();
        args.extend(["--precision", precision]);
        ok(cliptune(home, &args))
    };
    let (fp32, bf16) = (run(&home, "fp32"), run(&bf16_home, "bf16"));
    assert_eq!(fp32["embedded"], 24);
    assert_eq!(bf16["embedded"], 24);
    // Every stage reports its time and items; the slowest is named.
    let stages = &fp32["stages"];
    for stage in ["read", "decode", "device", "write"] {
        assert_eq!(stages[stage]["items"], 24, "{stage}: {stages}");
        assert!(
            stages[stage]["seconds"].as_f64().unwrap() > 0.0,
            "{stage}: {stages}"
        );
    }
    assert!(
        ["read", "decode", "device", "write"].contains(&stages["bottleneck"].as_str().unwrap()),
        "{stages}"
    );
    // The output says which precision ran.
    assert_eq!(
        (&fp32["precision"], &bf16["precision"]),
        (&json!("fp32"), &json!("bf16"))
    );
    let (a, b) = (vectors(&home), vectors(&bf16_home));
    assert_eq!(a.len(), 24);
    for ((ia, va), (ib, vb)) in a.iter().zip(&b) {
        assert_eq!(ia, ib);
        let cos: f32 = va.iter().zip(vb).map(|(x, y)| x * y).sum();
        assert!(cos > 0.99, "{ia}: bf16 vs fp32 cosine {cos}");
    }

    let mut args = EMBED.to_vec();
    args.extend(["--precision", "fp16"]);
    let out = cliptune(&home, &args).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fp16 needs a CUDA device"), "{err}");

    let out = cliptune(
        &home,
        &[
            "embed-dataset",
            "--dataset",
            "nope",
            "--model",
            "m",
            "--device",
            "cpu",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dataset \"nope\" not found"), "{err}");

    // A filter that is not JSON is refused before anything runs; the vectors stay.
    let mut args = EMBED.to_vec();
    args.extend(["--filter", "{dir: /cats"]);
    let out = cliptune(&home, &args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--filter is not JSON"), "{err}");
    assert_eq!(vectors(&home).len(), 24);
}

/// `--fast-decode` engages on JPEGs at least twice the input size (here 160x128 for a 64 px
/// model: 1/2 scale) and keeps every vector close to the exact path's.
#[test]
fn fast_decode_is_close_to_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("jpegs");
    std::fs::create_dir_all(&data).unwrap();
    let mut captions = String::new();
    for i in 0..12u32 {
        // Smooth gradients with an edge: photo-like content for the DCT.
        let img = image::RgbImage::from_fn(160, 128, |x, y| {
            let edge = if (x + 3 * i) % 70 < 35 { 60 } else { 0 };
            image::Rgb([
                (x * 255 / 160) as u8,
                (y * 255 / 128) as u8,
                ((i * 20) as u8).wrapping_add(edge),
            ])
        });
        let name = format!("{i:02}.jpg");
        img.save_with_format(data.join(&name), image::ImageFormat::Jpeg)
            .unwrap();
        captions.push_str(&format!(
            "{{\"file\": \"{name}\", \"caption\": \"gradient {i}\"}}\n"
        ));
    }
    std::fs::write(data.join("captions.jsonl"), captions).unwrap();
    let exact_home = tmp.path().join("exact");
    let arch = tmp.path().join("arch.json");
    std::fs::write(&arch, ARCH).unwrap();
    ok(cliptune(
        &exact_home,
        &[
            "datasets",
            "import",
            data.to_str().unwrap(),
            "--name",
            "shapes",
        ],
    ));
    ok(cliptune(
        &exact_home,
        &[
            "models",
            "create",
            "--arch",
            arch.to_str().unwrap(),
            "--name",
            "m",
            "--seed",
            "3",
        ],
    ));
    let fast_home = tmp.path().join("fast");
    copy_dir(&exact_home, &fast_home);
    let mut args = EMBED.to_vec();
    args.extend(["--precision", "fp32"]);
    assert_eq!(ok(cliptune(&exact_home, &args))["embedded"], 12);
    args.push("--fast-decode");
    assert_eq!(ok(cliptune(&fast_home, &args))["embedded"], 12);
    let (exact, fast) = (vectors(&exact_home), vectors(&fast_home));
    assert_eq!(exact.len(), 12);
    let mut differ = 0;
    for ((ia, va), (ib, vb)) in exact.iter().zip(&fast) {
        assert_eq!(ia, ib);
        let cos: f32 = va.iter().zip(vb).map(|(x, y)| x * y).sum();
        assert!(cos > 0.99, "{ia}: fast vs exact cosine {cos}");
        differ += usize::from(va != vb);
    }
    assert!(
        differ > 0,
        "--fast-decode changed no vector: it did not engage"
    );
}

/// Several decode threads store exactly one vector per readable item, equal to one thread's,
/// and a corrupt image among many is reported without losing any other item.
#[test]
fn decode_threads_store_each_item_once_as_one_thread_does() {
    let tmp = tempfile::tempdir().unwrap();
    let home = setup(tmp.path(), 60, "4", true);
    let many_home = tmp.path().join("many");
    copy_dir(&home, &many_home);
    let run = |home: &Path, threads: &str| {
        let mut args = EMBED.to_vec();
        args.extend(["--precision", "fp32", "--decode-threads", threads]);
        ok(cliptune(home, &args))
    };
    let (one, many) = (run(&home, "1"), run(&many_home, "4"));
    for (out, threads) in [(&one, 1), (&many, 4)] {
        assert_eq!(out["embedded"], 60, "{out}");
        assert_eq!(out["stages"]["decode_threads"], threads, "{out}");
        // Every item went through the decoders once, the corrupt one included.
        assert_eq!(out["stages"]["decode"]["items"], 61, "{out}");
        let failed = out["failed"].as_array().unwrap();
        assert_eq!(failed.len(), 1, "{out}");
        assert!(!failed[0]["reason"].as_str().unwrap().is_empty(), "{out}");
    }
    assert_eq!(one["failed"][0]["item_id"], many["failed"][0]["item_id"]);
    let (a, b) = (vectors(&home), vectors(&many_home));
    assert_eq!(a.len(), 60);
    let ids: std::collections::HashSet<_> = b.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 60, "one vector per item");
    for ((ia, va), (ib, vb)) in a.iter().zip(&b) {
        assert_eq!(ia, ib);
        // Batches hold other items in another order; the rows' arithmetic is the same.
        let worst = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{ia}: one vs four threads differ by {worst}");
    }
    let bad = "--decode-threads";
    let mut args = EMBED.to_vec();
    args.extend([bad, "many"]);
    let out = cliptune(&home, &args).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(bad));
}
