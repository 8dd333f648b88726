//! `cliptune embed`: text and image embeddings from any checkpoint `models import` accepts,
//! through the worker's inference path (`cliptune_worker::LocalEncoder`), so they equal what
//! the embed node stores and what a query gets at the same precision.

use crate::{models, output, Ctx};
use anyhow::{bail, Context, Result};
use clap::Args;
use cliptune_clip::{checkpoint, parse_device, LoadOptions, Precision};
use cliptune_worker::{Input, LocalEncoder, Prepared};
use serde::Serialize;
use std::path::PathBuf;

/// Print embeddings of texts and images, in input order (L2-normalised unless --raw).
///
/// Example: cliptune embed --model ./clip-vit-base-patch32 --text "a cat" --image cat.jpg --json
#[derive(Args)]
pub struct EmbedArgs {
    /// Registry id or name, or a checkpoint path (HF directory, OpenAI/open_clip state dict, native).
    #[arg(long)]
    model: String,
    /// A text to embed (repeatable).
    #[arg(long = "text")]
    texts: Vec<String>,
    /// An image file to embed (repeatable).
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Print the projections as they are, without L2 normalisation.
    #[arg(long)]
    raw: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// fp32 (exact), bf16 (autocast) or fp16 (CUDA only).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
}

#[derive(Serialize)]
struct Embeddings {
    text: Vec<Vec<f32>>,
    image: Vec<Vec<f32>>,
}

pub fn run(ctx: &Ctx, args: EmbedArgs) -> Result<()> {
    if args.texts.is_empty() && args.images.is_empty() {
        bail!("nothing to embed: give --text and/or --image");
    }
    let device = parse_device(&args.device)?;
    if args.precision == Precision::Fp16 && !device.is_cuda() {
        bail!("--precision fp16 needs a CUDA device; use bf16 or fp32");
    }
    let path = models::resolve(ctx, &args.model)?;
    let config = checkpoint::inspect(&path, &LoadOptions::default())
        .with_context(|| format!("reading {}", path.display()))?
        .config;
    let name = path.display().to_string();
    let (id, dir) = (name.clone(), path.clone());
    let model = if args.texts.is_empty() {
        Prepared::images_only(id, name, dir, config, false)?
    } else {
        Prepared::new(id, name, dir, config, false)?
    };
    let mut inputs: Vec<Input> = args.texts.iter().map(|t| model.text(t)).collect();
    for p in &args.images {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let name = p.display().to_string();
        inputs.push(
            model
                .image(&bytes, &name)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
        );
    }
    let encoder = LocalEncoder::load(model, device, args.precision)
        .with_context(|| format!("loading {}", path.display()))?;
    let mut text = encoder.embed(inputs, !args.raw)?;
    let image = text.split_off(args.texts.len());

    let out = Embeddings { text, image };
    output::print(ctx, &out, |e| {
        serde_json::to_string(e).expect("serializable")
    });
    Ok(())
}
