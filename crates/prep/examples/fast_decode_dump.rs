//! Writes, for each `.jpg` in DIR, the S x S RGB image that preprocessing hands to
//! normalisation, as an RGB PNG of the same stem in OUT. An S x S RGB PNG goes through the
//! exact path unchanged (no resize, identity crop, lossless), so any tool that embeds image
//! files (`cliptune embed`, `cliptune eval --data`) embeds exactly these pixels: that is how
//! scripts/bench-fast-decode.sh measures the fast path's embeddings without a CLI flag.
//! Prints a JSON summary: images per JPEG scale denominator, and the exact-vs-fast difference
//! of the normalised tensors (max and mean |diff|).
//!
//! cargo run --release -p cliptune-prep --example fast_decode_dump -- DIR SIZE OUT [exact|fast]

use cliptune_prep::{jpeg_scale_denom, Preprocessor, MEAN, STD};
use image::ExtendedColorType;
use std::collections::BTreeMap;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: fast_decode_dump DIR SIZE OUT [exact|fast]";
    let dir = args.get(1).expect(usage);
    let size: u32 = args.get(2).expect(usage).parse().expect("size");
    let out = std::path::Path::new(args.get(3).expect(usage));
    let fast = args.get(4).is_none_or(|m| m == "fast");
    std::fs::create_dir_all(out).expect("output directory");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("image directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    let exact = Preprocessor::new(size);
    let chosen = exact.with_fast_decode(fast);
    let norm = |v: u8, c: usize| (f32::from(v) / 255.0 - MEAN[c]) / STD[c];
    let (mut max, mut sum, mut n) = (0f32, 0f64, 0usize);
    let mut denoms: BTreeMap<usize, usize> = BTreeMap::new();
    for p in &paths {
        let name = p.display().to_string();
        let bytes = std::fs::read(p).expect("read");
        let (w, h) = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .expect("format")
            .into_dimensions()
            .expect("dimensions");
        let d = if fast {
            jpeg_scale_denom(w as usize, h as usize, size as usize)
        } else {
            1
        };
        *denoms.entry(d).or_default() += 1;
        let a = exact
            .rgb_from_bytes(&bytes, &name)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = chosen
            .rgb_from_bytes(&bytes, &name)
            .unwrap_or_else(|e| panic!("{e}"));
        for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
            let diff = (norm(x, i % 3) - norm(y, i % 3)).abs();
            max = max.max(diff);
            sum += f64::from(diff);
        }
        n += a.len();
        let png = out.join(p.file_stem().expect("stem")).with_extension("png");
        image::save_buffer(&png, &b, size, size, ExtendedColorType::Rgb8).expect("write png");
    }
    let denoms: Vec<String> = denoms
        .iter()
        .map(|(d, c)| format!("\"1/{d}\": {c}"))
        .collect();
    println!(
        "{{\"mode\": \"{}\", \"images\": {}, \"size\": {size}, \"denominators\": {{{}}}, \"max_abs_diff\": {max:.4}, \"mean_abs_diff\": {:.5}}}",
        if fast { "fast" } else { "exact" },
        paths.len(),
        denoms.join(", "),
        sum / n.max(1) as f64
    );
}
