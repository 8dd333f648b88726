//! The forward pass of inference: one batch of inputs to vectors, under a precision.

use crate::error::{Result, WorkerError};
use cliptune_clip::{autocast, Clip, Precision};

/// Vectors, one per input.
pub type Rows = Vec<Vec<f32>>;

/// Features of a batch (L2-normalized unless `normalize` is false): images through the
/// image tower, texts through the text tower. Texts are padded only to the longest text of
/// the batch: the causal mask means a text's features do not depend on padding after its
/// EOT, and short queries cost a fraction of a full 77-token row.
///
/// Under bf16/fp16 autocast the weights stay f32 and the matrix products run in the lower
/// precision; the vectors are normalized in f32 outside the autocast region.
pub fn encode(
    clip: &Clip,
    precision: Precision,
    images: Vec<Vec<f32>>,
    texts: Vec<Vec<i64>>,
    normalize: bool,
) -> Result<(Rows, Rows)> {
    let config = clip.config();
    let device = clip.device();
    let run = |f: &dyn Fn() -> cliptune_clip::Result<tch::Tensor>| -> Result<tch::Tensor> {
        let t = autocast(precision, device, f)?.to_kind(tch::Kind::Float);
        Ok(if normalize {
            cliptune_clip::normalize(&t)
        } else {
            t
        })
    };
    let img = if images.is_empty() {
        Vec::new()
    } else {
        let s = config.vision.image_size;
        let mut pixels = cliptune_clip::pixel_batch(&images, s)?;
        if device.is_cuda() {
            // From page-locked memory the copy to the GPU is one DMA, not a staging copy
            // through a pinned bounce buffer (cf. PyTorch's DataLoader pin_memory). Where
            // pinning fails the model copies from pageable memory as before.
            if let Ok(pinned) = pixels.f_pin_memory(device) {
                pixels = pinned.to_device_(device, tch::Kind::Float, true, false);
            }
        }
        rows(&run(&|| clip.image_features(&pixels, false))?)?
    };
    let txt = if texts.is_empty() {
        Vec::new()
    } else {
        let ctx = config.text.context_length as usize;
        let len = texts.iter().map(Vec::len).max().unwrap_or(1).clamp(1, ctx);
        let mut flat = vec![0i64; texts.len() * len];
        for (row, ids) in flat.chunks_mut(len).zip(&texts) {
            let n = ids.len().min(len);
            row[..n].copy_from_slice(&ids[..n]);
        }
        let ids = tch::Tensor::from_slice(&flat).view([texts.len() as i64, len as i64]);
        rows(&run(&|| clip.text_features(&ids, false))?)?
    };
    Ok((img, txt))
}

/// A `[N, D]` tensor (on any device) as N vectors.
pub fn rows(t: &tch::Tensor) -> Result<Rows> {
    let dim = t.size().last().copied().unwrap_or(1).max(1) as usize;
    let flat = Vec::<f32>::try_from(t.to_device(tch::Device::Cpu).contiguous().flatten(0, -1))
        .map_err(|e| WorkerError::Internal(format!("reading features: {e}")))?;
    Ok(flat.chunks(dim).map(<[f32]>::to_vec).collect())
}
