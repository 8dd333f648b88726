//! `cliptune embed`: text and image embeddings from any checkpoint `models import` accepts.

use crate::{models, output, Ctx};
use anyhow::{bail, Context, Result};
use clap::Args;
use cliptune_clip::tch::Tensor;
use cliptune_clip::{checkpoint, parse_device, LoadOptions};
use cliptune_prep::{Preprocessor, Tokenizer, VOCAB_SIZE};
use serde::Serialize;
use std::path::PathBuf;

/// Images per forward pass: bounds memory on large inputs.
const IMAGE_BATCH: usize = 32;

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
}

#[derive(Serialize)]
struct Embeddings {
    text: Vec<Vec<f32>>,
    image: Vec<Vec<f32>>,
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let size = t.size();
    let dim = *size.last().context("empty feature tensor")? as usize;
    let flat: Vec<f32> = Vec::try_from(t.contiguous().view([-1]))?;
    Ok(flat.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
}

pub fn run(ctx: &Ctx, args: EmbedArgs) -> Result<()> {
    if args.texts.is_empty() && args.images.is_empty() {
        bail!("nothing to embed: give --text and/or --image");
    }
    let device = parse_device(&args.device)?;
    let path = models::resolve(ctx, &args.model)?;
    let clip = checkpoint::load(&path, device, &LoadOptions::default())
        .with_context(|| format!("loading {}", path.display()))?;
    let config = clip.config().clone();
    let normalized = !args.raw;

    let mut text = Vec::new();
    if !args.texts.is_empty() {
        if config.text.vocab_size < VOCAB_SIZE as i64 {
            bail!(
                "{} has a vocabulary of {} tokens; CLIP's tokenizer needs {VOCAB_SIZE}",
                path.display(),
                config.text.vocab_size
            );
        }
        let ctx_len = config.text.context_length as usize;
        let ids = Tokenizer::shared().tokenize_batch(&args.texts, ctx_len);
        let ids = Tensor::from_slice(&ids).view([args.texts.len() as i64, ctx_len as i64]);
        text = rows(&clip.text_features(&ids, normalized)?)?;
    }

    let mut image = Vec::new();
    let s = config.vision.image_size;
    let pre = Preprocessor::new(u32::try_from(s).context("image size")?);
    for chunk in args.images.chunks(IMAGE_BATCH) {
        let pixels = pre.batch_from_paths(chunk)?;
        let pixels = Tensor::from_slice(&pixels).view([chunk.len() as i64, 3, s, s]);
        image.extend(rows(&clip.image_features(&pixels, normalized)?)?);
    }

    let out = Embeddings { text, image };
    output::print(ctx, &out, |e| {
        serde_json::to_string(e).expect("serializable")
    });
    Ok(())
}
