//! CUDA check: a few hundred training steps of ViT-B/32 at batch 128 on synthetic data with
//! bf16 autocast (f32 master weights), then samples/s and MFU against the device's bf16 peak.
//!
//! Run: scripts/gpu-check.sh  (or cargo run --release -p cliptune-train --example gpu_check --
//! STEPS PEAK_TFLOPS [bf16|fp16|fp32])

use cliptune_clip::{Clip, ClipConfig};
use cliptune_train::loader::Batch;
use cliptune_train::optim::{treatment, AdamW};
use cliptune_train::precision::LossScale;
use cliptune_train::trainer::train_step;
use cliptune_train::{Precision, TrainConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// open_clip's profile of ViT-B/32: 14.78 GFLOPs forward per image-text pair; a training
/// step (forward + backward) costs about 3x.
const TRAIN_FLOPS_PER_PAIR: f64 = 3.0 * 14.78e9;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let peak_tflops: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let precision: Precision = match args.get(3).map_or("bf16", String::as_str).parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("precision {e}");
            std::process::exit(2);
        }
    };
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device visible to libtorch: build with `make setup CUDA=1` (see docs/training.md)");
        std::process::exit(1);
    }
    let device = Device::Cuda(0);
    let batch = 128;
    let model = ClipConfig::preset("ViT-B/32").expect("preset");
    let clip = Clip::new(&model, device, Some(0)).expect("model");
    let cfg = TrainConfig {
        batch_size: batch,
        learning_rate: 1e-5,
        precision,
        ..TrainConfig::default()
    };
    let optimizer = |clip: &Clip, cfg: &TrainConfig| {
        let params = clip
            .var_store()
            .variables()
            .into_iter()
            .map(|(name, var)| {
                let t = treatment(&name, &var.size(), &model, cfg);
                (name, var, t.lr_scale, t.decay)
            })
            .collect();
        AdamW::new(params, cfg.betas, cfg.epsilon, cfg.weight_decay)
    };
    let mut opt = optimizer(&clip, &cfg);
    let mut scale = LossScale::new(precision);
    tch::manual_seed(0);
    let make = || Batch {
        pixels: Tensor::randn([batch as i64, 3, 224, 224], (Kind::Float, device)),
        tokens: Tensor::randint_low(1, 49406, [batch as i64, 77], (Kind::Int64, device)),
        indices: (0..batch).collect(),
    };
    let warmup = 20.min(steps / 4);
    let mut timed = Instant::now();
    let mut loss = 0.0;
    for step in 0..steps {
        if step == warmup {
            tch::Cuda::synchronize(0);
            timed = Instant::now();
        }
        let b = [make()];
        loss = train_step(&clip, &mut opt, &b, &cfg, &mut scale, 1e-5).expect("step");
    }
    tch::Cuda::synchronize(0);
    let secs = timed.elapsed().as_secs_f64();
    let sps = ((steps - warmup) * batch) as f64 / secs;
    let achieved = sps * TRAIN_FLOPS_PER_PAIR / 1e12;
    println!(
        "ViT-B/32, batch {batch}, {precision:?}, {} optimizer, {} timed steps: {sps:.1} samples/s, {achieved:.1} TFLOP/s, last loss {loss:.4}",
        if opt.is_fused() { "fused" } else { "per-parameter" },
        steps - warmup
    );
    if peak_tflops > 0.0 {
        println!(
            "MFU {:.1}% of {peak_tflops} TFLOP/s (the GPU's bf16 dense peak)",
            100.0 * achieved / peak_tflops
        );
    } else {
        println!("MFU: pass the device's bf16 dense peak in TFLOP/s as the second argument");
    }

    // Where a step's time goes: forward + backward alone, and the per-parameter optimizer.
    let timed_steps = 30;
    let per_step = |f: &mut dyn FnMut()| {
        for _ in 0..5 {
            f();
        }
        tch::Cuda::synchronize(0);
        let t = Instant::now();
        for _ in 0..timed_steps {
            f();
        }
        tch::Cuda::synchronize(0);
        t.elapsed().as_secs_f64() * 1000.0 / timed_steps as f64
    };
    let b = [make()];
    let fwd_bwd = per_step(&mut || {
        opt.zero_grad();
        cliptune_train::trainer::backward(&clip, &b, precision, 1.0).expect("backward");
    });
    let fused = per_step(&mut || {
        train_step(&clip, &mut opt, &b, &cfg, &mut scale, 1e-5).expect("step");
    });
    opt.set_fused(false);
    let unfused = per_step(&mut || {
        train_step(&clip, &mut opt, &b, &cfg, &mut scale, 1e-5).expect("step");
    });
    println!(
        "per step: forward+backward {fwd_bwd:.1} ms; whole step {fused:.1} ms with the fused optimizer, {unfused:.1} ms with the per-parameter one"
    );

    // The fused kernel against the per-parameter ops on CUDA: 3 fp32 steps from one init.
    let cfg32 = TrainConfig {
        precision: Precision::Fp32,
        learning_rate: 1e-4,
        ..cfg.clone()
    };
    let batches: Vec<[Batch; 1]> = (0..3).map(|_| [make()]).collect();
    let run = |fused: bool| {
        let clip = Clip::new(&model, device, Some(1)).expect("model");
        let mut opt = optimizer(&clip, &cfg32);
        opt.set_fused(fused);
        for b in &batches {
            train_step(&clip, &mut opt, b, &cfg32, &mut None, 1e-4).expect("step");
        }
        (clip, opt.is_fused())
    };
    let (a, _) = run(false);
    let (f, was_fused) = run(true);
    let init = Clip::new(&model, device, Some(1)).expect("model");
    let (mut diff, mut moved) = (0f64, 0f64);
    let vars_f = f.var_store().variables();
    let vars_i = init.var_store().variables();
    for (name, va) in a.var_store().variables() {
        let vf = &vars_f[&name];
        diff = diff.max((&va - vf).abs().max().double_value(&[]));
        moved = moved.max((&va - &vars_i[&name]).abs().max().double_value(&[]));
    }
    println!(
        "fused ({was_fused}) vs per-parameter AdamW after 3 fp32 steps: max |difference| {diff:.2e} (largest parameter change {moved:.2e})"
    );
}
