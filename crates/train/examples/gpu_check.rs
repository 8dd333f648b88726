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
    let precision = match args.get(3).map(String::as_str).unwrap_or("bf16") {
        "bf16" => Precision::Bf16,
        "fp16" => Precision::Fp16,
        "fp32" => Precision::Fp32,
        other => {
            eprintln!("precision {other:?}: expected bf16, fp16 or fp32");
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
    let params = clip
        .var_store()
        .variables()
        .into_iter()
        .map(|(name, var)| {
            let t = treatment(&name, &var.size(), &model, &cfg);
            (name, var, t.lr_scale, t.decay)
        })
        .collect();
    let mut opt = AdamW::new(params, cfg.betas, cfg.epsilon, cfg.weight_decay);
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
        "ViT-B/32, batch {batch}, {precision:?}, {} timed steps: {sps:.1} samples/s, {achieved:.1} TFLOP/s, last loss {loss:.4}",
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
}
