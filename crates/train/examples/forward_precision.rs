//! Image-tower forward throughput in f32 and under bf16 autocast (the embed node's two CPU
//! paths), random ViT-B/32 weights, no autograd. For docs/search.md.
//!
//! cargo run --release -p cliptune-train --example forward_precision -- [batch=32] [iters=4] [threads=2]

use cliptune_clip::{Clip, ClipConfig};
use cliptune_train::{precision::autocast, Precision};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (batch, iters, threads) = (arg(1, 32), arg(2, 4), arg(3, 2));
    tch::set_num_threads(threads as i32);
    let config = ClipConfig::preset("ViT-B/32").expect("preset");
    let clip = Clip::new(&config, Device::Cpu, Some(0)).expect("model");
    let s = config.vision.image_size;
    let pixels = Tensor::randn([batch as i64, 3, s, s], (Kind::Float, Device::Cpu));
    for (name, precision) in [("fp32", Precision::Fp32), ("bf16", Precision::Bf16)] {
        let run = || {
            autocast(precision, Device::Cpu, || {
                clip.image_features(&pixels, false)
            })
        };
        let _ = run().expect("warm-up");
        let start = Instant::now();
        for _ in 0..iters {
            let _ = run().expect("forward");
        }
        let per_s = (batch * iters) as f64 / start.elapsed().as_secs_f64();
        println!("{{\"precision\": \"{name}\", \"batch\": {batch}, \"threads\": {threads}, \"images_per_s\": {per_s:.2}}}");
    }
}
