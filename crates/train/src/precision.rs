//! Mixed precision: autocast regions around forward passes (master weights stay f32), and
//! the dynamic loss scale fp16 needs. [`Precision`] and [`autocast`] live in cliptune-clip,
//! which inference shares.

use crate::{Result, TrainError};
pub use cliptune_clip::precision::{autocast, Precision};
use tch::Device;

/// Checks that `precision` can run on `device` (fp16 needs CUDA: CPU fp16 kernels are
/// slow and incomplete).
pub fn check(precision: Precision, device: Device) -> Result<()> {
    if precision == Precision::Fp16 && !device.is_cuda() {
        return Err(TrainError::config(
            "precision",
            "fp16 needs a CUDA device; use bf16 or fp32 on the CPU",
        ));
    }
    Ok(())
}

/// Dynamic loss scaling for fp16 (torch.cuda.amp.GradScaler's defaults): start at 2^16,
/// halve and skip the step on inf/NaN gradients, double after 2000 good steps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    pub scale: f64,
    pub good_steps: u32,
}

impl LossScale {
    pub fn new(precision: Precision) -> Option<Self> {
        (precision == Precision::Fp16).then_some(Self {
            scale: 65536.0,
            good_steps: 0,
        })
    }

    /// Updates after a step; returns whether the step's gradients were usable.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps == 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_needs_cuda() {
        // Autocast itself is tested in cliptune-clip, which owns it.
        assert!(check(Precision::Fp16, Device::Cpu).is_err());
        assert!(check(Precision::Bf16, Device::Cpu).is_ok());
        assert!(check(Precision::Fp32, Device::Cpu).is_ok());
    }

    #[test]
    fn loss_scale_backs_off_and_grows() {
        let mut s = LossScale::new(Precision::Fp16).unwrap();
        assert!(!s.update(false));
        assert_eq!(s.scale, 32768.0);
        for _ in 0..2000 {
            s.update(true);
        }
        assert_eq!(s.scale, 65536.0);
        assert!(LossScale::new(Precision::Bf16).is_none());
    }
}
