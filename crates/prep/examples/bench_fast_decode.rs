//! Single-thread decode+resize+normalise rate, exact vs fast (reduced-scale JPEG) decoding
//! (used by scripts/bench-fast-decode.sh). Files are read into memory first, so the figure
//! is the CPU work per image, not the disk.
//!
//! cargo run --release -p cliptune-prep --example bench_fast_decode -- DIR SIZE exact|fast

use cliptune_prep::Preprocessor;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_fast_decode DIR SIZE exact|fast";
    let dir = args.get(1).expect(usage);
    let size: u32 = args.get(2).expect(usage).parse().expect("size");
    let fast = match args.get(3).map(String::as_str) {
        Some("exact") => false,
        Some("fast") => true,
        _ => panic!("{usage}"),
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("image directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    let files: Vec<(String, Vec<u8>)> = paths
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read(p).expect("read")))
        .collect();
    let pre = Preprocessor::new(size).with_fast_decode(fast);
    let mut out = vec![0f32; pre.tensor_len()];
    // On the calling thread, no rayon: the per-core rate.
    let mut run = || {
        let mut checksum = 0f64;
        for (name, bytes) in &files {
            pre.from_bytes_into(bytes, name, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
            checksum += f64::from(out[out.len() / 2]);
        }
        checksum
    };
    run();
    let t = Instant::now();
    let checksum = run();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"mode\": \"{}\", \"images\": {}, \"size\": {size}, \"seconds\": {secs:.3}, \"images_per_s\": {:.1}, \"checksum\": {checksum:.4}}}",
        if fast { "fast" } else { "exact" },
        files.len(),
        files.len() as f64 / secs
    );
}
