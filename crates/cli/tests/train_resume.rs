//! `cliptune train` killed with SIGKILL mid-run, then run again with `--resume`, ends with
//! exactly the metrics of an uninterrupted run (CPU, same seed). Also: `eval --json` keys and
//! config errors naming their key.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_cliptune");

const ARCH: &str = r#"{"embed_dim": 16, "activation": "quick_gelu",
 "vision": {"width": 32, "layers": 1, "heads": 2, "patch_size": 4, "image_size": 16, "mlp_dim": 64},
 "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 12, "vocab_size": 49408, "mlp_dim": 64}}"#;

fn cliptune(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--home").arg(home).args(args);
    c
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn make_data(root: &Path) -> PathBuf {
    let dir = root.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let colors = [
        ("red", [220u8, 30, 30]),
        ("green", [30, 200, 40]),
        ("blue", [30, 40, 220]),
    ];
    let mut lines = String::new();
    let mut s = 7u64;
    for i in 0..36 {
        let (name, rgb) = colors[i % 3];
        let img =
            image::RgbImage::from_fn(16, 16, |_, _| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = s >> 33;
                image::Rgb([0, 1, 2].map(|c| {
                    (rgb[c] as i64 + ((r >> (8 * c)) & 31) as i64 - 16).clamp(0, 255) as u8
                }))
            });
        img.save(dir.join(format!("{i}.png"))).unwrap();
        lines.push_str(&format!(
            "{{\"file\": \"{i}.png\", \"caption\": \"a {name} square\"}}\n"
        ));
    }
    std::fs::write(dir.join("captions.jsonl"), lines).unwrap();
    dir
}

fn train_args<'a>(data: &'a str, base: &'a str) -> Vec<&'a str> {
    vec![
        "--json",
        "train",
        "--data",
        data,
        "--base-model",
        base,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--decode-threads",
        "1",
        "--config",
        r#"{"batch_size": 4, "num_epochs": 3, "learning_rate": 1e-3, "early_stopping": false, "seed": 3, "eval_batch_size": 4}"#,
    ]
}

#[test]
fn kill_9_then_resume_matches_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = make_data(tmp.path());
    let data = data.to_str().unwrap();
    let arch = tmp.path().join("arch.json");
    std::fs::write(&arch, ARCH).unwrap();
    // The same seeded base model in two homes: one run is left alone, the other killed.
    let create = |home: &Path| -> String {
        let out = cliptune(
            home,
            &[
                "--json",
                "models",
                "create",
                "--arch",
                arch.to_str().unwrap(),
                "--name",
                "base",
                "--seed",
                "0",
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let home_a = tmp.path().join("a");
    let home_b = tmp.path().join("b");
    let base_a = create(&home_a);
    let base_b = create(&home_b);
    let base = base_a.as_str();
    let whole = cliptune(&home_a, &train_args(data, base)).output().unwrap();
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let whole = json_lines(&whole.stdout);
    let done = whole.last().unwrap();
    assert_eq!(done["event"], "done");

    // Same run in another home, killed with SIGKILL as soon as epoch 2 starts training.
    let base = base_b.as_str();
    let mut child = cliptune(&home_b, &train_args(data, base))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "progress" && v["phase"] == "training" && v["epoch"] == 2 {
            child.kill().unwrap(); // SIGKILL
            killed = true;
            break;
        }
    }
    assert!(killed, "never saw epoch 2 start");
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        home_b.join("runs").is_dir(),
        "the killed run left its checkpoints"
    );

    let resumed = cliptune(&home_b, &{
        let mut a = train_args(data, base);
        a.push("--resume");
        a
    })
    .output()
    .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let resumed = json_lines(&resumed.stdout);
    let epochs: Vec<i64> = resumed
        .iter()
        .filter(|v| v["event"] == "epoch")
        .map(|v| v["epoch"].as_i64().unwrap())
        .collect();
    assert_eq!(epochs, vec![2, 3], "resumed from the last completed epoch");
    let done_b = resumed.last().unwrap();
    assert_eq!(done_b["metrics"], done["metrics"]);
    assert_eq!(done_b["baseline"], done["baseline"]);
    assert_eq!(done_b["best_epoch"], done["best_epoch"]);
    // Per-epoch metrics of the uninterrupted run's epochs 2 and 3 equal the resumed ones.
    let per_epoch = |lines: &[Value], e: i64| {
        lines
            .iter()
            .find(|v| v["event"] == "epoch" && v["epoch"] == e)
            .cloned()
            .unwrap()
    };
    for e in [2, 3] {
        assert_eq!(
            per_epoch(&whole, e)["val_loss"],
            per_epoch(&resumed, e)["val_loss"]
        );
        assert_eq!(
            per_epoch(&whole, e)["train_loss"],
            per_epoch(&resumed, e)["train_loss"]
        );
    }

    // eval --json on the new model prints the documented keys, as fractions.
    let new_id = done_b["id"].as_str().unwrap();
    let ev = cliptune(
        &home_b,
        &[
            "--json", "eval", "--model", new_id, "--data", data, "--device", "cpu",
        ],
    )
    .output()
    .unwrap();
    assert!(
        ev.status.success(),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
    let ev: Value = serde_json::from_slice(&ev.stdout).unwrap();
    for k in [
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "caption_accuracy",
    ] {
        let x = ev[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {ev}"));
        assert!((0.0..=1.0).contains(&x), "{k} = {x}");
    }
    assert!(ev["val_loss"].as_f64().unwrap() > 0.0);
    assert_eq!(ev["pairs"], 36);

    // A bad config fails before any work, naming the key.
    let bad = cliptune(
        &home_b,
        &[
            "--json",
            "train",
            "--data",
            data,
            "--base-model",
            base,
            "--device",
            "cpu",
            "--config",
            r#"{"batch_size": 1}"#,
        ],
    )
    .output()
    .unwrap();
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stdout);
    assert!(msg.contains("batch_size"), "{msg}");
}

/// Runs `cliptune` and returns its stdout, failing the test (with stderr) unless it succeeds.
fn run_ok(home: &Path, args: &[&str]) -> Vec<u8> {
    let out = cliptune(home, args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The folder `data` imported as store dataset "squares" and a tiny model "base" in `home`.
fn store_with_dataset(tmp: &Path, home: &Path, data: &Path) {
    let arch = tmp.join("arch.json");
    std::fs::write(&arch, ARCH).unwrap();
    let data = data.to_str().unwrap();
    run_ok(home, &["datasets", "import", data, "--name", "squares"]);
    let arch = arch.to_str().unwrap();
    run_ok(
        home,
        &["models", "create", "--arch", arch, "--name", "base"],
    );
}

/// One epoch of `train --dataset squares` from "base"; returns its JSON lines.
fn train_on_squares(home: &Path) -> Vec<Value> {
    let config = r#"{"batch_size": 4, "num_epochs": 1, "seed": 3, "eval_batch_size": 4}"#;
    json_lines(&run_ok(
        home,
        &[
            "--json",
            "train",
            "--dataset",
            "squares",
            "--base-model",
            "base",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--config",
            config,
        ],
    ))
}

/// `eval --dataset squares` of "base" (every pair: the items are untagged).
fn eval_on_squares(home: &Path) -> Value {
    let out = run_ok(
        home,
        &["--json", "eval", "--model", "base", "--dataset", "squares"],
    );
    serde_json::from_slice(&out).unwrap()
}

/// `--dataset` reads the pairs of a store dataset instead of a folder (untagged items: the
/// seeded split a folder without a subset column gets).
#[test]
fn train_and_eval_from_a_store_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = make_data(tmp.path());
    store_with_dataset(tmp.path(), &home, &data);
    let lines = train_on_squares(&home);
    let done = lines.last().unwrap();
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["epochs_run"], 1);
    // Training's progress lines say where the epoch's time goes, stage by stage.
    let stages = &lines
        .iter()
        .rfind(|l| l["event"] == "progress" && l["phase"] == "training")
        .expect("a training progress line")["stages"];
    for stage in ["read", "decode", "device"] {
        assert!(stages[stage]["items"].as_u64().unwrap() > 0, "{stages}");
        assert!(stages[stage]["seconds"].as_f64().unwrap() > 0.0, "{stages}");
        assert!(
            stages[stage]["items_per_s"].as_f64().unwrap() > 0.0,
            "{stages}"
        );
    }
    assert!(stages["decode_threads"].as_u64().unwrap() >= 1, "{stages}");
    assert!(
        ["read", "decode", "device"].contains(&stages["bottleneck"].as_str().unwrap_or("")),
        "{stages}"
    );
    let all = eval_on_squares(&home);
    assert_eq!(all["pairs"], 36, "{all}");
    assert!(all["i2t_r1"].as_f64().unwrap() >= 0.0);
    // Neither or both sources is a usage error that names the flags.
    let out = cliptune(&home, &["train", "--base-model", "base"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dataset"));
}

/// A corrupt image in a store dataset is skipped and reported by `train --dataset` and
/// `eval --dataset`, not fatal (1 of 37 pairs, under the 5% limit).
#[test]
fn store_dataset_with_a_corrupt_image() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = make_data(tmp.path());
    std::fs::write(data.join("bad.png"), b"\x89PNG but not really").unwrap();
    let mut captions = std::fs::read_to_string(data.join("captions.jsonl")).unwrap();
    captions.push_str("{\"file\": \"bad.png\", \"caption\": \"a red square\"}\n");
    std::fs::write(data.join("captions.jsonl"), captions).unwrap();
    store_with_dataset(tmp.path(), &home, &data);
    let done = train_on_squares(&home).pop().unwrap();
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["skipped_pairs"], 1, "{done}");
    let all = eval_on_squares(&home);
    assert_eq!(all["pairs"], 36, "{all}");
    let skipped = all["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{all}");
}
