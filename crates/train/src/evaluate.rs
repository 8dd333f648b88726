//! Evaluation of a model on a list of pairs: validation loss as a per-pair mean over
//! fixed-size batches, retrieval recall both ways, caption accuracy.

use crate::config::Precision;
use crate::data::Pair;
use crate::loader::Loader;
use crate::metrics::{retrieval, Metrics};
use crate::precision::autocast;
use crate::{loss, Result, TrainError};
use cliptune_clip::{normalize, Clip};
use cliptune_prep::Codec;
use std::collections::HashMap;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// What evaluation needs besides the model.
pub struct EvalSetup {
    pub codec: Arc<Codec>,
    pub pool: Arc<rayon::ThreadPool>,
    pub batch_size: usize,
    pub precision: Precision,
    pub prefetch: usize,
}

/// Distinct captions and, per pair, the index of its caption (first-occurrence order).
pub fn distinct_captions(pairs: &[Pair]) -> (Vec<usize>, usize) {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let caption_of = pairs
        .iter()
        .map(|p| {
            let n = index.len();
            *index.entry(p.caption.as_str()).or_insert(n)
        })
        .collect();
    (caption_of, index.len())
}

/// Evaluates `clip` on `pairs` (in their order; batches of `setup.batch_size`, the last one
/// possibly smaller). `progress(done, total)` is called after each batch.
pub fn evaluate(
    clip: &Clip,
    pairs: Arc<Vec<Pair>>,
    setup: &EvalSetup,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Metrics> {
    let n = pairs.len();
    if n < 2 {
        return Err(TrainError::Data(format!(
            "evaluation needs at least 2 usable pairs, got {n}"
        )));
    }
    let (caption_of, captions) = distinct_captions(&pairs);
    let batches: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(setup.batch_size)
        .map(<[usize]>::to_vec)
        .collect();
    let loader = Loader::spawn(
        pairs.clone(),
        batches,
        setup.codec.clone(),
        None,
        setup.pool.clone(),
        setup.prefetch,
    );
    let device = clip.device();
    let mut loss_sum = 0.0;
    let mut images = Vec::new();
    let mut texts: Vec<Option<Tensor>> = (0..captions).map(|_| None).collect();
    let mut done = 0;
    for batch in loader {
        let batch = batch?;
        let (img, txt, pair_loss) = tch::no_grad(|| -> Result<_> {
            autocast(setup.precision, device, || -> Result<_> {
                let img = clip.encode_image(&batch.pixels.to_device(device))?;
                let txt = clip.encode_text(&batch.tokens.to_device(device))?;
                let img = img.to_kind(Kind::Float);
                let txt = txt.to_kind(Kind::Float);
                let logits = clip.logits(&img, &txt);
                Ok((normalize(&img), normalize(&txt), loss::per_pair(&logits)))
            })
        })?;
        loss_sum += pair_loss
            .to_kind(Kind::Double)
            .sum(Kind::Double)
            .double_value(&[]);
        for (row, &i) in batch.indices.iter().enumerate() {
            let c = caption_of[i];
            if texts[c].is_none() {
                texts[c] = Some(txt.get(row as i64));
            }
        }
        images.push(img);
        done += batch.indices.len();
        progress(done, n);
    }
    if done != n {
        return Err(TrainError::Data(format!(
            "evaluation read {done} of {n} pairs"
        )));
    }
    let images = Tensor::cat(&images, 0);
    let texts: Vec<Tensor> = texts
        .into_iter()
        .map(|t| t.expect("every caption seen"))
        .collect();
    let texts = Tensor::stack(&texts, 0);
    let r = retrieval(&caption_of, captions, 1024, |range| {
        images
            .narrow(0, range.start as i64, (range.end - range.start) as i64)
            .matmul(&texts.tr())
    });
    Ok(Metrics {
        val_loss: loss_sum / n as f64,
        i2t_r1: r.i2t[0],
        i2t_r5: r.i2t[1],
        i2t_r10: r.i2t[2],
        t2i_r1: r.t2i[0],
        t2i_r5: r.t2i[1],
        t2i_r10: r.t2i[2],
        caption_accuracy: r.caption_accuracy,
    })
}
