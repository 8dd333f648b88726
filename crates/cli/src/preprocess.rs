//! `cliptune preprocess`: the exact tensor the image tower receives, as a .npy file.

use crate::{output, Ctx};
use anyhow::{Context, Result};
use clap::Args;
use cliptune_prep::{npy, Preprocessor, DEFAULT_MAX_PIXELS};
use serde::Serialize;
use std::path::PathBuf;

/// Write the normalised 3 x N x N float32 tensor of an image (OpenAI's preprocessing) to .npy.
///
/// Example: cliptune preprocess --image cat.jpg --size 224 --out cat.npy
/// (then in Python: numpy.load("cat.npy") to compare with your own pipeline)
#[derive(Args)]
pub struct PreprocessArgs {
    /// Image file (JPEG, PNG, WebP, GIF or BMP).
    #[arg(long)]
    image: PathBuf,
    /// Side of the square output (the model's image size: 224, or 336 for ViT-L/14@336px).
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Output .npy file.
    #[arg(long)]
    out: PathBuf,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

#[derive(Serialize)]
struct Written {
    out: String,
    shape: [usize; 3],
    min: f32,
    max: f32,
    mean: f64,
}

pub fn run(ctx: &Ctx, args: PreprocessArgs) -> Result<()> {
    let pre = Preprocessor::new(args.size).with_max_pixels(args.max_pixels);
    let pixels = pre.from_path(&args.image)?;
    let s = args.size as usize;
    let bytes = npy::to_npy_f32(&pixels, &[3, s, s])?;
    std::fs::write(&args.out, bytes).with_context(|| format!("writing {}", args.out.display()))?;
    let written = Written {
        out: args.out.display().to_string(),
        shape: [3, s, s],
        min: pixels.iter().copied().fold(f32::INFINITY, f32::min),
        max: pixels.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        mean: pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / pixels.len() as f64,
    };
    output::print(ctx, &written, |w| {
        format!(
            "wrote {} (float32 {}x{}x{}, min {:.4}, max {:.4}, mean {:.4})",
            w.out, w.shape[0], w.shape[1], w.shape[2], w.min, w.max, w.mean
        )
    });
    Ok(())
}
