//! Retrieval metrics over a whole validation set.
//!
//! Items with identical captions are equivalent: an image's retrieval succeeds at K when
//! fewer than K *non-equivalent* texts score at least as high as its best equivalent text,
//! and likewise for texts. Ties count against the model, so a collapsed model (all
//! embeddings equal) scores 0, not 1.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// The evaluation keys of `cliptune eval --json` (fractions in [0, 1], loss in nats).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub val_loss: f64,
    pub i2t_r1: f64,
    pub i2t_r5: f64,
    pub i2t_r10: f64,
    pub t2i_r1: f64,
    pub t2i_r5: f64,
    pub t2i_r10: f64,
    /// Share of images whose own caption scores strictly highest among the distinct captions.
    pub caption_accuracy: f64,
}

/// Recall part of [`Metrics`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieval {
    pub i2t: [f64; 3],
    pub t2i: [f64; 3],
    pub caption_accuracy: f64,
}

const KS: [i64; 3] = [1, 5, 10];

/// Recall@1/5/10 both ways and caption accuracy. `caption_of[i]` is the distinct-caption
/// index of item `i`; `scores(range)` returns the `[len, C]` image-vs-distinct-caption
/// similarities of the images in `range` (computed on demand so memory stays `O(chunk * C)`).
pub fn retrieval(
    caption_of: &[usize],
    captions: usize,
    chunk: usize,
    mut scores: impl FnMut(std::ops::Range<usize>) -> Tensor,
) -> Retrieval {
    let n = caption_of.len();
    assert!(n > 0 && captions > 0, "retrieval over an empty set");
    let device = scores(0..1).device();
    let all_caps = Tensor::from_slice(&caption_of.iter().map(|&c| c as i64).collect::<Vec<_>>())
        .to_device(device);
    let mult = Tensor::zeros([captions as i64], (Kind::Float, device)).index_add(
        0,
        &all_caps,
        &Tensor::ones([n as i64], (Kind::Float, device)),
    );
    let columns = Tensor::arange(captions as i64, (Kind::Int64, device)).unsqueeze(0);
    let mut i2t_hits = [0i64; 3];
    let mut best = Tensor::full([captions as i64], f64::NEG_INFINITY, (Kind::Float, device));
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let s = scores(start..end).to_kind(Kind::Float);
        let caps = all_caps
            .narrow(0, start as i64, (end - start) as i64)
            .unsqueeze(1);
        let pos = s.gather(1, &caps, false);
        let other = columns.ne_tensor(&caps);
        // Non-equivalent texts (with their multiplicity) scoring >= the right caption.
        let wrong = (s.ge_tensor(&pos).logical_and(&other).to_kind(Kind::Float)
            * mult.unsqueeze(0))
        .sum_dim_intlist(1, false, Kind::Float);
        for (h, k) in i2t_hits.iter_mut().zip(KS) {
            *h += wrong.lt(k as f64).sum(Kind::Int64).int64_value(&[]);
        }
        // Per caption, the best score among this chunk's images of that caption.
        let own = columns.eq_tensor(&caps);
        let chunk_best = pos
            .expand_as(&s)
            .masked_fill(&own.logical_not(), f64::NEG_INFINITY)
            .amax([0], false);
        best = best.maximum(&chunk_best);
        start = end;
    }
    // Second pass: for each caption, the images of other captions that score at least as
    // high as the caption's best own image.
    let mut wrong_per_caption = Tensor::zeros([captions as i64], (Kind::Float, device));
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let s = scores(start..end).to_kind(Kind::Float);
        let caps = all_caps
            .narrow(0, start as i64, (end - start) as i64)
            .unsqueeze(1);
        let other = columns.ne_tensor(&caps);
        let wrong = s
            .ge_tensor(&best.unsqueeze(0))
            .logical_and(&other)
            .to_kind(Kind::Float);
        wrong_per_caption += wrong.sum_dim_intlist(0, false, Kind::Float);
        start = end;
    }
    let mut t2i = [0.0; 3];
    for (r, k) in t2i.iter_mut().zip(KS) {
        let hit = wrong_per_caption.lt(k as f64).to_kind(Kind::Float);
        *r = (hit * &mult).sum(Kind::Float).double_value(&[]) / n as f64;
    }
    let i2t = i2t_hits.map(|h| h as f64 / n as f64);
    Retrieval {
        i2t,
        t2i,
        caption_accuracy: i2t[0],
    }
}

/// [`retrieval`] on a full `[N, C]` score matrix (for tests and small sets).
pub fn retrieval_from_scores(scores: &Tensor, caption_of: &[usize]) -> Retrieval {
    let c = scores.size()[1] as usize;
    retrieval(caption_of, c, 3, |r| {
        scores
            .narrow(0, r.start as i64, (r.end - r.start) as i64)
            .to_device(Device::Cpu)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[&[f32]]) -> Tensor {
        let c = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, c])
    }

    #[test]
    fn all_distinct_captions() {
        // 4 items, 4 distinct captions. Image 0 ranks its text 1st, image 1 2nd,
        // image 2 3rd, image 3 4th.
        let s = matrix(&[
            &[0.9, 0.1, 0.2, 0.3],
            &[0.8, 0.7, 0.1, 0.0],
            &[0.6, 0.9, 0.5, 0.0],
            &[0.9, 0.8, 0.7, 0.1],
        ]);
        let r = retrieval_from_scores(&s, &[0, 1, 2, 3]);
        assert_eq!(r.i2t, [0.25, 1.0, 1.0]);
        assert_eq!(r.caption_accuracy, 0.25);
        // Text 0: own image 0.9, image 3 ties at 0.9 -> rank 2 (ties count against).
        // Text 1: own 0.7, images 2 (0.9), 3 (0.8) above -> rank 3.
        // Text 2: own 0.5, image 3 (0.7) above -> rank 2. Text 3: own 0.1, images 0 above -> 2.
        assert_eq!(r.t2i, [0.0, 1.0, 1.0]);
    }

    #[test]
    fn identical_captions_are_equivalent_and_counted_with_multiplicity() {
        // Items 0,1,2 share caption 0; item 3 has caption 1; item 4 caption 2.
        // Columns are distinct captions.
        let s = matrix(&[
            &[0.9, 0.1, 0.0], // right
            &[0.2, 0.5, 0.1], // caption 1 beats caption 0
            &[0.3, 0.1, 0.4], // caption 2 beats caption 0
            &[0.8, 0.7, 0.0], // caption 0 (x3) beats caption 1: rank 4
            &[0.1, 0.2, 0.6], // right
        ]);
        let r = retrieval_from_scores(&s, &[0, 0, 0, 1, 2]);
        // i2t ranks: 1, 2, 2, 4, 1 -> R@1 2/5, R@5 5/5.
        assert_eq!(r.i2t, [0.4, 1.0, 1.0]);
        assert_eq!(r.caption_accuracy, 0.4);
        // t2i: caption 0's best own image scores 0.9 -> no other above -> hit@1 (x3 texts).
        // caption 1: best own 0.7; images 1 (0.5) no; 0 (0.1) no -> rank 1.
        // caption 2: best own 0.6; image 2 (0.4) no -> rank 1.
        assert_eq!(r.t2i, [1.0, 1.0, 1.0]);
    }

    #[test]
    fn collapsed_model_scores_zero() {
        let s = Tensor::zeros([12, 12], (Kind::Float, Device::Cpu));
        let caps: Vec<usize> = (0..12).collect();
        let r = retrieval_from_scores(&s, &caps);
        assert_eq!(r.i2t, [0.0, 0.0, 0.0]);
        assert_eq!(r.t2i, [0.0, 0.0, 0.0]);
    }

    #[test]
    fn recall_at_10_needs_more_than_ten_items() {
        // 12 distinct items; every image's own text is ranked 6th.
        let n = 12;
        let mut rows = vec![vec![1f32; n]; n];
        for (i, row) in rows.iter_mut().enumerate() {
            for k in 1..=5 {
                row[(i + k) % n] = 10.0 + k as f32;
            }
            row[i] = 5.5; // above everything but 5
        }
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let r = retrieval_from_scores(&matrix(&refs), &(0..n).collect::<Vec<_>>());
        assert_eq!(r.i2t, [0.0, 0.0, 1.0]);
    }
}
