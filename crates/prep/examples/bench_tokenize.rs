//! Tokenizer throughput on the parity corpus, repeated to COUNT captions (default 10,000).
//!
//! cargo run --release -p cliptune-prep --example bench_tokenize -- [COUNT] [THREADS]

use cliptune_prep::{Tokenizer, CONTEXT_LENGTH};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).map_or(10_000, |s| s.parse().expect("count"));
    let threads: usize = args.get(2).map_or(1, |s| s.parse().expect("threads"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/prep/tokens.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("tokens.json")).expect("JSON");
    let corpus: Vec<String> = doc["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("text").to_string())
        .collect();
    let texts: Vec<&str> = corpus
        .iter()
        .cycle()
        .take(count)
        .map(String::as_str)
        .collect();
    let t = Instant::now();
    let tok = Tokenizer::new().expect("tokenizer");
    let build = t.elapsed().as_secs_f64();
    // A fresh tokenizer has an empty BPE cache: this is the cold figure.
    let t = Instant::now();
    let ids = tok.tokenize_batch(&texts, CONTEXT_LENGTH);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"captions\": {count}, \"threads\": {threads}, \"build_seconds\": {build:.3}, \"seconds\": {secs:.3}, \"captions_per_s\": {:.0}, \"nonzero_ids\": {}}}",
        count as f64 / secs,
        ids.iter().filter(|&&i| i != 0).count()
    );
}
