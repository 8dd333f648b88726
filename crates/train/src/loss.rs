//! Symmetric InfoNCE (CLIP's contrastive loss).

use tch::{Kind, Reduction, Tensor};

/// Per-pair loss `[B]` for logits `[B, B]` (`logits[i][j]`: image `i` vs text `j`; the
/// matching text of image `i` is text `i`): the mean of the image-to-text and the
/// text-to-image cross-entropies of that pair. Computed in f32 whatever the input kind.
pub fn per_pair(logits: &Tensor) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let n = logits.size()[0];
    let labels = Tensor::arange(n, (Kind::Int64, logits.device()));
    let i2t = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::None, -100, 0.0);
    let t2i = logits
        .tr()
        .cross_entropy_loss::<Tensor>(&labels, None, Reduction::None, -100, 0.0);
    (i2t + t2i) * 0.5
}

/// The batch loss: `(CE(logits, arange) + CE(logits.T, arange)) / 2`, as open_clip's `ClipLoss`.
pub fn clip_loss(logits: &Tensor) -> Tensor {
    per_pair(logits).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_derived_two_by_two() {
        // logits [[a, b], [c, d]]: i2t row 0 = -log(e^a / (e^a + e^b)), etc.
        let (a, b, c, d) = (2.0f64, 0.5, -1.0, 1.5);
        let t = Tensor::from_slice(&[a, b, c, d])
            .view([2, 2])
            .to_kind(Kind::Float);
        let lse = |x: f64, y: f64| (x.exp() + y.exp()).ln();
        let i2t = [lse(a, b) - a, lse(c, d) - d];
        let t2i = [lse(a, c) - a, lse(b, d) - d];
        let want = [(i2t[0] + t2i[0]) / 2.0, (i2t[1] + t2i[1]) / 2.0];
        let got = Vec::<f64>::try_from(per_pair(&t).to_kind(Kind::Double)).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        let mean = clip_loss(&t).double_value(&[]);
        assert!((mean - (want[0] + want[1]) / 2.0).abs() < 1e-6);
    }

    #[test]
    fn uniform_logits_give_log_n() {
        let t = Tensor::zeros([5, 5], (Kind::Float, tch::Device::Cpu));
        assert!((clip_loss(&t).double_value(&[]) - 5f64.ln()).abs() < 1e-6);
    }
}
