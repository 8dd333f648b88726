//! End-to-end training on a tiny model: accumulation, best-checkpoint selection, bad data,
//! cancel + resume, locking, WiSE-FT, bf16 autocast on the CPU.

mod common;

use cliptune_clip::{checkpoint, LoadOptions, LOGIT_SCALE_MAX};
use cliptune_train::{
    data, loader::Batch, trainer, Event, Job, Precision, TrainConfig, TrainError,
};
use common::*;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

fn config(v: serde_json::Value) -> TrainConfig {
    TrainConfig::from_layers(&[&v]).unwrap().config
}

fn job(base: &Path, data: &Path, runs: &Path, cfg: TrainConfig, resume: bool) -> Job {
    Job {
        base: base.to_path_buf(),
        base_name: "tiny".into(),
        source: data::read_folder(data).unwrap(),
        config: cfg,
        warnings: vec![],
        runs_root: runs.to_path_buf(),
        device: Device::Cpu,
        resume,
        decode_threads: 1,
    }
}

fn quiet(_: Event<'_>) {}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(dir.join(checkpoint::NATIVE_WEIGHTS)).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn same_weights(a: &Path, b: &Path, filter: impl Fn(&str) -> bool) -> bool {
    weights(a)
        .iter()
        .zip(weights(b))
        .filter(|(x, _)| filter(&x.0))
        .all(|((_, x), (_, y))| x.equal(&y))
}

/// The adapter's `best.pt` beside the native files holds the same model: equal weights and
/// embeddings, read with the architecture the adapter's `model_name` would give (a state
/// dict does not record the head count or the activation); the folder itself still reads
/// as cliptune's own format.
fn same_model_in_best_pt(native: &cliptune_clip::Clip, dir: &Path) {
    assert_eq!(checkpoint::detect(dir).unwrap(), checkpoint::Format::Native);
    let options = LoadOptions {
        activation: None,
        config: Some(native.config().clone()),
    };
    let adapter = checkpoint::load(&dir.join("best.pt"), Device::Cpu, &options).unwrap();
    let theirs = adapter.var_store().variables();
    for (name, t) in native.var_store().variables() {
        assert!(t.equal(&theirs[&name]), "{name} differs");
    }
    let size = native.config().vision.image_size;
    let pixels = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
    let ids = Tensor::arange(
        native.config().text.context_length,
        (Kind::Int64, Device::Cpu),
    )
    .remainder(native.config().text.vocab_size)
    .view([1, -1]);
    let a = native.image_features(&pixels, true).unwrap();
    let b = adapter.image_features(&pixels, true).unwrap();
    assert!(a.equal(&b), "image embeddings differ");
    let a = native.text_features(&ids, true).unwrap();
    let b = adapter.text_features(&ids, true).unwrap();
    assert!(a.equal(&b), "text embeddings differ");
}

#[test]
fn trains_keeps_best_epoch_and_reports() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let data = make_folder(tmp.path(), 40, true);
    let cfg = config(json!({
        "batch_size": 8, "num_epochs": 4, "learning_rate": 2e-3, "warmup_steps": 2,
        "eval_batch_size": 5, "early_stopping_epochs": 2, "weight_decay": 0.1
    }));
    let mut epochs = Vec::new();
    let mut progress = 0;
    let out = trainer::run(
        job(&base, &data, &tmp.path().join("runs"), cfg, false),
        &mut |e| match e {
            Event::Epoch(r) => epochs.push(r.epoch),
            Event::Progress(p) => {
                assert!((0.0..=100.0).contains(&p.percent));
                progress += 1;
            }
            Event::Warning(w) => panic!("unexpected warning {w}"),
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    let r = &out.report;
    assert_eq!(epochs[0], 0, "baseline first");
    assert!(progress > 4 * 4, "a progress event per step");
    assert_eq!((r.data.train, r.data.validation), (32, 8));
    assert_eq!(r.history.len(), r.epochs_run + 1);
    assert!(
        r.history[r.best_epoch].metrics.val_loss
            <= r.history
                .iter()
                .map(|h| h.metrics.val_loss)
                .fold(f64::INFINITY, f64::min)
    );
    assert!(
        r.best_epoch > 0,
        "a learnable task beats the random baseline: {:?}",
        r.history
    );
    // The model is the best epoch's weights, whatever came after it.
    assert_eq!(r.final_metrics, r.history[r.best_epoch].metrics);
    let clip = checkpoint::load(&out.model_dir, Device::Cpu, &LoadOptions::default()).unwrap();
    let scale = clip.logit_scale().double_value(&[]);
    assert!((0.0..=LOGIT_SCALE_MAX).contains(&scale));
    let (again, bad, n) = trainer::evaluate_pairs(
        &clip,
        &data::read_folder(&data).unwrap(),
        Some("validation"),
        5,
        Precision::Fp32,
        0.05,
        1,
    )
    .unwrap();
    assert!(bad.is_empty());
    assert_eq!(n, 8);
    assert!(
        (again.val_loss - r.final_metrics.val_loss).abs() < 1e-5,
        "{again:?} vs {:?}",
        r.final_metrics
    );
    assert_eq!(again.i2t_r1, r.final_metrics.i2t_r1);
    for f in [
        "report.json",
        "report.html",
        "train_config.json",
        "clip_config.json",
        "best.pt",
    ] {
        assert!(out.model_dir.join(f).is_file(), "{f}");
    }
    same_model_in_best_pt(&clip, &out.model_dir);
    let html = std::fs::read_to_string(out.model_dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("polyline"));
}

fn batch_from(pixels: &Tensor, tokens: &Tensor, range: std::ops::Range<i64>) -> Batch {
    Batch {
        pixels: pixels.narrow(0, range.start, range.end - range.start),
        tokens: tokens.narrow(0, range.start, range.end - range.start),
        indices: range.map(|i| i as usize).collect(),
    }
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // one micro-batch is the point
fn feature_cached_accumulation_equals_the_full_batch_gradient() {
    tch::set_num_threads(1);
    let clip = cliptune_clip::Clip::new(&tiny_config(), Device::Cpu, Some(1)).unwrap();
    tch::manual_seed(3);
    let pixels = Tensor::randn([8, 3, 16, 16], (Kind::Float, Device::Cpu));
    let tokens = Tensor::randint_low(1, 4000, [8, 12], (Kind::Int64, Device::Cpu));
    let grads = |splits: &[std::ops::Range<i64>]| -> (f64, Vec<(String, Tensor)>) {
        let mut vars: Vec<(String, Tensor)> = clip.var_store().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, v) in vars.iter_mut() {
            v.zero_grad();
        }
        let batches: Vec<Batch> = splits
            .iter()
            .map(|r| batch_from(&pixels, &tokens, r.clone()))
            .collect();
        let loss = trainer::backward(&clip, &batches, Precision::Fp32, 1.0).unwrap();
        (
            loss,
            vars.into_iter()
                .map(|(k, v)| (k, v.grad().copy()))
                .collect(),
        )
    };
    let (l1, full) = grads(&[0..8]);
    for splits in [vec![0..4, 4..8], vec![0..2, 2..4, 4..6, 6..8]] {
        let (l2, acc) = grads(&splits);
        assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
        for ((name, a), (_, b)) in full.iter().zip(&acc) {
            let diff = (a - b).abs().max().double_value(&[]);
            let size = a.abs().max().double_value(&[]);
            assert!(
                diff <= 1e-5 + 1e-4 * size,
                "{name}: {diff} (max |g| {size})"
            );
        }
        // logit_scale gets its gradient once, not once per micro-batch.
        let ls = |g: &Vec<(String, Tensor)>| {
            g.iter()
                .find(|(k, _)| k == "logit_scale")
                .unwrap()
                .1
                .double_value(&[])
        };
        assert!((ls(&full) - ls(&acc)).abs() < 1e-5);
    }
}

#[test]
fn bad_pairs_are_skipped_and_listed_or_fail_the_run() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let data = make_folder(tmp.path(), 40, true);
    std::fs::write(data.join("img001.png"), b"definitely not a png").unwrap();
    std::fs::remove_file(data.join("img002.png")).unwrap();
    let mut manifest = std::fs::read_to_string(data.join("captions.jsonl")).unwrap();
    manifest = manifest.replace(
        "\"file\": \"img003.png\", \"caption\": \"a photo of a yellow thing\"",
        "\"file\": \"img003.png\", \"caption\": \"  \"",
    );
    manifest.push_str("{\"oops\": 1}\n");
    std::fs::write(data.join("captions.jsonl"), manifest).unwrap();

    // 4 of 41 entries are bad: more than the default 5%.
    let cfg = config(json!({"batch_size": 8, "num_epochs": 1}));
    let err = trainer::run(
        job(&base, &data, &tmp.path().join("runs"), cfg, false),
        &mut quiet,
        &AtomicBool::new(false),
    )
    .err()
    .expect("too many bad pairs");
    match &err {
        TrainError::TooManyBad {
            bad, total, list, ..
        } => {
            assert_eq!((*bad, *total), (4, 41));
            let all = list.join("\n");
            for needle in [
                "img001.png",
                "img002.png",
                "img003.png: empty caption",
                "line 41",
            ] {
                assert!(all.contains(needle), "{needle} missing from {all}");
            }
        }
        other => panic!("expected TooManyBad, got {other}"),
    }
    assert!(err.to_string().contains("img001.png"));

    let cfg = config(json!({"batch_size": 8, "num_epochs": 1, "max_bad_fraction": 0.1}));
    let mut warned = false;
    let out = trainer::run(
        job(&base, &data, &tmp.path().join("runs"), cfg, false),
        &mut |e| {
            if let Event::Warning(w) = e {
                warned |= w.contains("4 of 41");
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(warned);
    assert_eq!(out.report.data.bad.len(), 4);
    assert_eq!(out.report.data.train + out.report.data.validation, 37);
    let report = std::fs::read_to_string(out.model_dir.join("report.json")).unwrap();
    assert!(report.contains("img002.png"));
}

#[test]
fn fewer_than_two_usable_pairs_fail_before_training() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let data = make_folder(tmp.path(), 8, true); // validation: items 4 only
    let cfg = config(json!({"batch_size": 2, "num_epochs": 1}));
    let mut events = 0;
    let err = trainer::run(
        job(&base, &data, &tmp.path().join("runs"), cfg, false),
        &mut |e| {
            if matches!(e, Event::Epoch(_)) {
                events += 1;
            }
        },
        &AtomicBool::new(false),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("subset validation has 1 usable pair"),
        "{err}"
    );
    assert_eq!(events, 0, "nothing was evaluated");
}

#[test]
fn cancel_then_resume_ends_like_an_uninterrupted_run() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let data = make_folder(tmp.path(), 24, false);
    let cfg = config(json!({
        "batch_size": 4, "num_epochs": 3, "learning_rate": 1e-3, "augment": true, "seed": 5,
        "grad_accumulation": 2, "early_stopping": false, "eval_batch_size": 3
    }));
    let whole = trainer::run(
        job(&base, &data, &tmp.path().join("a"), cfg.clone(), false),
        &mut quiet,
        &AtomicBool::new(false),
    )
    .unwrap();

    let runs = tmp.path().join("b");
    let cancel = AtomicBool::new(false);
    let err = trainer::run(
        job(&base, &data, &runs, cfg.clone(), false),
        &mut |e| {
            if let Event::Epoch(r) = e {
                if r.epoch == 1 {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        },
        &cancel,
    )
    .err()
    .unwrap();
    assert!(matches!(err, TrainError::Cancelled), "{err}");
    let mut seen = Vec::new();
    let resumed = trainer::run(
        job(&base, &data, &runs, cfg, true),
        &mut |e| {
            if let Event::Epoch(r) = e {
                seen.push(r.epoch);
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(seen, vec![2, 3], "resumed after epoch 1");
    assert_eq!(resumed.report.history.len(), 4);
    for (a, b) in whole.report.history.iter().zip(&resumed.report.history) {
        assert_eq!(a.metrics, b.metrics, "epoch {}", a.epoch);
        assert_eq!(a.train_loss, b.train_loss, "epoch {}", a.epoch);
    }
    assert!(same_weights(&whole.model_dir, &resumed.model_dir, |_| true));
}

#[test]
fn locked_tower_wise_ft_and_bf16() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_model(tmp.path());
    let data = make_folder(tmp.path(), 20, true);
    // Image tower locked except its head (ln_post + proj); WiSE-FT alpha 0 gives back the base.
    let cfg = config(json!({
        "batch_size": 4, "num_epochs": 1, "learning_rate": 1e-2, "lock_image_tower": true,
        "lock_image_unlocked_layers": 1, "early_stopping": false
    }));
    let out = trainer::run(
        job(&base, &data, &tmp.path().join("r1"), cfg, false),
        &mut quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    if out.report.best_epoch == 1 {
        let frozen = |k: &str| {
            k.starts_with("visual.") && !k.starts_with("visual.ln_post") && k != "visual.proj"
        };
        assert!(
            same_weights(&base, &out.model_dir, frozen),
            "locked weights moved"
        );
        assert!(
            !same_weights(&base, &out.model_dir, |k| k == "visual.proj"),
            "head did not train"
        );
        assert!(!same_weights(&base, &out.model_dir, |k| k.starts_with("transformer.")));
    }
    let cfg = config(
        json!({"batch_size": 4, "num_epochs": 1, "learning_rate": 1e-2, "wise_ft_alpha": 0.0}),
    );
    let out = trainer::run(
        job(&base, &data, &tmp.path().join("r2"), cfg, false),
        &mut quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(same_weights(&base, &out.model_dir, |_| true));
    assert_eq!(out.report.final_metrics, out.report.history[0].metrics);

    let cfg = config(json!({"batch_size": 4, "num_epochs": 1, "precision": "bf16"}));
    let out = trainer::run(
        job(&base, &data, &tmp.path().join("r3"), cfg, false),
        &mut quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    let e1 = &out.report.history[1];
    assert!(e1.train_loss.unwrap().is_finite() && e1.metrics.val_loss.is_finite());
    // Master weights stay f32 in bf16 runs.
    assert!(weights(&out.model_dir)
        .iter()
        .all(|(_, t)| t.kind() == Kind::Float));
}
