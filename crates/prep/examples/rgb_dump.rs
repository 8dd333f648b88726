//! Debugging aid for image parity: writes the S x S RGB crop (HWC bytes) that the
//! preprocessing feeds to normalisation, to diff against PIL.
//!
//! cargo run -p cliptune-prep --example rgb_dump -- IMAGE SIZE > out.rgb

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("image file");
    let size: u32 = args[2].parse().expect("size");
    let rgb = cliptune_prep::Preprocessor::new(size)
        .rgb_from_bytes(&bytes, &args[1])
        .unwrap_or_else(|e| panic!("{e}"));
    std::io::stdout().write_all(&rgb).expect("stdout");
}
