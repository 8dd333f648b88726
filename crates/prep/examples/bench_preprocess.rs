//! Throughput of the batched preprocessing path (used by scripts/bench-preprocess.sh).
//!
//! cargo run --release -p cliptune-prep --example bench_preprocess -- DIR [SIZE] [THREADS]

use cliptune_prep::Preprocessor;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .expect("usage: bench_preprocess DIR [SIZE] [THREADS]");
    let size: u32 = args.get(2).map_or(224, |s| s.parse().expect("size"));
    let threads: usize = args.get(3).map_or(1, |s| s.parse().expect("threads"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("image directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    let pre = Preprocessor::new(size);
    // Same batching as the Python side's DataLoader (32), one warm-up pass, one timed pass.
    let run = || {
        let mut checksum = 0f64;
        for chunk in paths.chunks(32) {
            let batch = pre
                .batch_from_paths(chunk)
                .unwrap_or_else(|e| panic!("{e}"));
            checksum += f64::from(batch[batch.len() / 2]);
        }
        checksum
    };
    run();
    let t = Instant::now();
    let checksum = run();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"impl\": \"cliptune-prep\", \"images\": {}, \"threads\": {threads}, \"seconds\": {secs:.3}, \"images_per_s\": {:.1}, \"checksum\": {checksum:.4}}}",
        paths.len(),
        paths.len() as f64 / secs
    );
}
