//! Forward throughput of both towers (no autograd), for scripts/bench-forward.sh.
//!
//! cargo run --release -p cliptune-clip --example bench_forward -- [preset] [batch] [iters] [threads]

use cliptune_clip::{Clip, ClipConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map_or("ViT-B/32", String::as_str);
    let batch: i64 = args.get(2).map_or(32, |s| s.parse().expect("batch"));
    let iters: usize = args.get(3).map_or(10, |s| s.parse().expect("iters"));
    let threads: i32 = args.get(4).map_or(1, |s| s.parse().expect("threads"));
    tch::set_num_threads(threads);
    let config = ClipConfig::preset(preset).expect("preset");
    let clip = Clip::new(&config, Device::Cpu, Some(0)).expect("model");
    let s = config.vision.image_size;
    let pixels = Tensor::randn([batch, 3, s, s], (Kind::Float, Device::Cpu));
    // Typical caption lengths: 20 tokens then padding, as a tokenizer produces.
    let ids = Tensor::randint_low(1, 49000, [batch, 77], (Kind::Int64, Device::Cpu));
    let _ = ids.narrow(1, 20, 57).fill_(0);
    let _ = ids.narrow(1, 19, 1).fill_(49407);
    let time = |f: &dyn Fn()| {
        f(); // warm-up
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        start.elapsed().as_secs_f64() / iters as f64
    };
    let image = time(&|| {
        let _ = clip.image_features(&pixels, false).unwrap();
    });
    let text = time(&|| {
        let _ = clip.text_features(&ids, false).unwrap();
    });
    println!(
        "{{\"impl\": \"cliptune\", \"preset\": \"{preset}\", \"batch\": {batch}, \"threads\": {threads}, \"image_per_s\": {:.2}, \"text_per_s\": {:.2}}}",
        batch as f64 / image,
        batch as f64 / text
    );
}
