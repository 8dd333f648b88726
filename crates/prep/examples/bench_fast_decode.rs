//! Single-thread decode+resize+normalise rate, exact vs fast (reduced-scale JPEG) decoding
//! (used by scripts/bench-fast-decode.sh). Files are read into memory first, so the figure
//! is the CPU work per image, not the disk. Two rates: per wall-clock second, and per second
//! the thread actually ran (Linux's /proc/thread-self/schedstat), which a machine loaded by
//! other processes disturbs much less.
//!
//! cargo run --release -p cliptune-prep --example bench_fast_decode -- DIR SIZE exact|fast

use cliptune_prep::Preprocessor;
use std::time::Instant;

/// Nanoseconds this thread has spent on a CPU (None off Linux).
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

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
    let (t, cpu0) = (Instant::now(), cpu_ns());
    let checksum = run();
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_ns()
        .zip(cpu0)
        .map_or(f64::NAN, |(b, a)| (b - a) as f64 * 1e-9);
    let n = files.len() as f64;
    println!(
        "{{\"mode\": \"{}\", \"images\": {}, \"size\": {size}, \"seconds\": {secs:.3}, \"images_per_s\": {:.1}, \"cpu_seconds\": {cpu:.3}, \"images_per_cpu_s\": {:.1}, \"checksum\": {checksum:.4}}}",
        if fast { "fast" } else { "exact" },
        files.len(),
        n / secs,
        n / cpu
    );
}
