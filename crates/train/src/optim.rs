//! AdamW with decoupled weight decay (torch.optim.AdamW's update, step for step), parameter
//! groups (no decay, layer-wise learning rates, locked towers), gradient clipping and the
//! learning-rate schedule.

use crate::config::{LrSchedule, TrainConfig};
use crate::{Result, TrainError};
use cliptune_clip::ClipConfig;
use tch::{Kind, Tensor};

/// One trainable tensor and its optimizer state.
pub struct Param {
    pub name: String,
    /// Shares storage with the model's variable.
    pub tensor: Tensor,
    /// Multiplier of the scheduled learning rate (layer-wise decay).
    pub lr_scale: f64,
    /// Whether weight decay applies.
    pub decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: i64,
    /// `step` as the f32 scalar on the device that the fused kernel counts with.
    step_t: Option<Tensor>,
}

#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    use tch::Tensor;

    extern "C" {
        fn cliptune_fused_adamw(
            params: *const *const c_void,
            grads: *const *const c_void,
            exp_avgs: *const *const c_void,
            exp_avg_sqs: *const *const c_void,
            steps: *const *const c_void,
            n: c_int,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            err: *mut c_char,
            err_len: c_int,
        ) -> c_int;
        fn cliptune_grads_none(tensors: *const *const c_void, n: c_int) -> c_int;
    }

    /// Drops the tensors' gradients (leaves them undefined); false when it failed.
    pub fn grads_none(tensors: &[&Tensor]) -> bool {
        let p: Vec<*const c_void> = tensors
            .iter()
            .map(|t| t.as_ptr() as *const c_void)
            .collect();
        // SAFETY: live tch tensors borrowed for the call; the shim only resets each one's
        // gradient slot (as `Tensor.grad = None` does) and catches every exception.
        unsafe { cliptune_grads_none(p.as_ptr(), p.len() as c_int) == 0 }
    }

    /// `torch._fused_adamw_` over one group (same lr and weight decay). Every slice has
    /// the same length; the tensors live on one device, f32, with the shapes AdamW needs.
    #[allow(clippy::too_many_arguments)]
    pub fn fused_adamw(
        params: &[&Tensor],
        grads: &[Tensor],
        exp_avgs: &[&Tensor],
        exp_avg_sqs: &[&Tensor],
        steps: &[&Tensor],
        lr: f64,
        betas: [f64; 2],
        weight_decay: f64,
        eps: f64,
    ) -> Result<(), String> {
        let n = params.len();
        assert!(
            grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n && steps.len() == n
        );
        let ptrs = |ts: &[&Tensor]| -> Vec<*const c_void> {
            ts.iter().map(|t| t.as_ptr() as *const c_void).collect()
        };
        let grads: Vec<&Tensor> = grads.iter().collect();
        let (p, g, m, v, s) = (
            ptrs(params),
            ptrs(&grads),
            ptrs(exp_avgs),
            ptrs(exp_avg_sqs),
            ptrs(steps),
        );
        let mut err = [0 as c_char; 512];
        // SAFETY: every pointer is a live tch tensor (an `at::Tensor*`) borrowed for the
        // call; the shim only reads the arrays, updates the tensors in place (as torch's
        // optimizer does) and catches every C++ exception.
        let rc = unsafe {
            cliptune_fused_adamw(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                s.as_ptr(),
                n as c_int,
                lr,
                betas[0],
                betas[1],
                weight_decay,
                eps,
                err.as_mut_ptr(),
                err.len() as c_int,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            // SAFETY: the shim NUL-terminates what it writes; `err` starts zeroed.
            let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
            Err(msg.to_string_lossy().into_owned())
        }
    }
}

/// How a variable is treated: trainable or not, its learning-rate scale and decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Treatment {
    pub trainable: bool,
    pub lr_scale: f64,
    pub decay: bool,
}

/// Tower, layer group (0 = embeddings, 1..=L blocks, L+1 = head) and the tower's top
/// group L+1, from an OpenAI state-dict key. `None` for `logit_scale`, which belongs to neither.
pub fn layer_group(name: &str, model: &ClipConfig) -> Option<(Tower, usize, usize)> {
    let (tower, rest, layers) = match name.strip_prefix("visual.") {
        Some(rest) => (Tower::Image, rest, model.vision.layers as usize),
        None if name == "logit_scale" => return None,
        None => (Tower::Text, name, model.text.layers as usize),
    };
    let top = layers + 1;
    let group = if let Some(block) = rest.strip_prefix("transformer.resblocks.") {
        let n: usize = block.split('.').next()?.parse().ok()?;
        n + 1
    } else if matches!(
        rest.split('.').next(),
        Some("ln_post" | "proj" | "ln_final" | "text_projection")
    ) {
        top
    } else {
        0
    };
    Some((tower, group, top))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tower {
    Image,
    Text,
}

/// Decides trainability, learning-rate scale and weight decay of one variable.
pub fn treatment(name: &str, shape: &[i64], model: &ClipConfig, cfg: &TrainConfig) -> Treatment {
    // open_clip's exclusion rule (1-D tensors, norms, biases, logit_scale) plus embeddings.
    let decay = !(shape.len() < 2
        || name.contains("ln_")
        || name.contains("bias")
        || name.contains("embedding")
        || name == "logit_scale");
    let Some((tower, group, top)) = layer_group(name, model) else {
        return Treatment {
            trainable: true,
            lr_scale: 1.0,
            decay,
        };
    };
    let (locked, unlocked) = match tower {
        Tower::Image => (cfg.lock_image_tower, cfg.lock_image_unlocked_layers),
        Tower::Text => (cfg.lock_text_tower, cfg.lock_text_unlocked_layers),
    };
    // Unlocked groups are the top `unlocked` ones: group > top - unlocked.
    let trainable = !locked || group + unlocked > top;
    Treatment {
        trainable,
        lr_scale: cfg.lr_layer_decay.powi((top - group) as i32),
        decay,
    }
}

/// `torch.optim.AdamW`'s algorithm (non-amsgrad), run as torch's fused multi-tensor kernel
/// (`fused=True`, on CUDA and the CPU): one pass over each parameter group instead of about
/// ten ops per parameter. The per-parameter ops of torch's default (for-loop) implementation
/// remain as the fallback and as the reference the fused path is tested against.
pub struct AdamW {
    params: Vec<Param>,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    fused: bool,
}

impl AdamW {
    /// `params`: (name, variable, lr scale, decay). Variables are sorted by name so the
    /// order (and therefore every sum over them) is deterministic.
    pub fn new(
        mut params: Vec<(String, Tensor, f64, bool)>,
        betas: [f64; 2],
        eps: f64,
        weight_decay: f64,
    ) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let params = params
            .into_iter()
            .map(|(name, tensor, lr_scale, decay)| Param {
                exp_avg: tensor.zeros_like().detach(),
                exp_avg_sq: tensor.zeros_like().detach(),
                name,
                tensor,
                lr_scale,
                decay,
                step: 0,
                step_t: None,
            })
            .collect::<Vec<Param>>();
        Self {
            params,
            betas,
            eps,
            weight_decay,
            fused: true,
        }
    }

    /// Chooses torch's fused kernel (the default) or the per-parameter ops, e.g. to check
    /// one against the other.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    pub fn is_fused(&self) -> bool {
        self.fused
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Clears the gradients as torch's `zero_grad()` does by default (`set_to_none`): the
    /// next backward hands its buffers over instead of adding into zeroed ones. A parameter
    /// that then gets no gradient is skipped by [`AdamW::step`], as in torch.
    pub fn zero_grad(&mut self) {
        let vars: Vec<&Tensor> = self.params.iter().map(|p| &p.tensor).collect();
        if !ffi::grads_none(&vars) {
            for p in &mut self.params {
                p.tensor.zero_grad();
            }
        }
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        let sq: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        if sq.is_empty() {
            return 0.0;
        }
        Tensor::stack(&sq, 0)
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[])
    }

    /// `torch.nn.utils.clip_grad_norm_`: scales gradients by `max / (norm + 1e-6)` when that
    /// is below 1. Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let norm = self.grad_norm();
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            tch::no_grad(|| {
                for p in &self.params {
                    let mut g = p.tensor.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            });
        }
        norm
    }

    /// Multiplies every gradient by `factor` (undoing a loss scale).
    pub fn scale_grads(&mut self, factor: f64) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        });
    }

    /// True when every gradient is finite.
    pub fn grads_finite(&self) -> bool {
        self.params.iter().all(|p| {
            let g = p.tensor.grad();
            !g.defined() || g.isfinite().all().int64_value(&[]) != 0
        })
    }

    /// One update with learning rate `lr` (times each parameter's scale). Parameters
    /// without a gradient are skipped, as torch does.
    pub fn step(&mut self, lr: f64) {
        if self.fused {
            if let Err(e) = self.step_fused(lr) {
                // Not expected with libtorch >= 2.4 (fused CPU and CUDA kernels); keep
                // training, the slow way.
                tracing::warn!(error = %e, "fused AdamW failed; using the per-parameter update");
                self.fused = false;
            } else {
                return;
            }
        }
        let [b1, b2] = self.betas;
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(Kind::Float);
                p.step += 1;
                let lr = lr * p.lr_scale;
                if p.decay && self.weight_decay != 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p.exp_avg.lerp_(&grad, 1.0 - b1);
                let _ = p.exp_avg_sq.g_mul_scalar_(b2);
                let _ = p.exp_avg_sq.addcmul_(&(&grad * (1.0 - b2)), &grad);
                let bias1 = 1.0 - b1.powi(p.step as i32);
                let bias2_sqrt = (1.0 - b2.powi(p.step as i32)).sqrt();
                let denom = (p.exp_avg_sq.sqrt() / bias2_sqrt).g_add_scalar_(self.eps);
                let _ = p.tensor.addcdiv_(&(&p.exp_avg * (-lr / bias1)), &denom);
            }
        });
    }

    /// One fused update per group of parameters sharing learning rate and weight decay.
    fn step_fused(&mut self, lr: f64) -> std::result::Result<(), String> {
        let wd = self.weight_decay;
        let mut groups: Vec<((u64, bool), Vec<usize>)> = Vec::new();
        for (i, p) in self.params.iter_mut().enumerate() {
            if !p.tensor.grad().defined() {
                continue;
            }
            if p.step_t.is_none() {
                p.step_t = Some(
                    Tensor::from(p.step as f32)
                        .to_kind(Kind::Float)
                        .to_device(p.tensor.device()),
                );
            }
            let key = (p.lr_scale.to_bits(), p.decay && wd != 0.0);
            match groups.iter_mut().find(|g| g.0 == key) {
                Some(g) => g.1.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        tch::no_grad(|| {
            for ((scale, decay), idx) in &groups {
                let ps: Vec<&Param> = idx.iter().map(|&i| &self.params[i]).collect();
                let grads: Vec<Tensor> = ps.iter().map(|p| p.tensor.grad()).collect();
                ffi::fused_adamw(
                    &ps.iter().map(|p| &p.tensor).collect::<Vec<_>>(),
                    &grads,
                    &ps.iter().map(|p| &p.exp_avg).collect::<Vec<_>>(),
                    &ps.iter().map(|p| &p.exp_avg_sq).collect::<Vec<_>>(),
                    &ps.iter()
                        .map(|p| p.step_t.as_ref().expect("set above"))
                        .collect::<Vec<_>>(),
                    lr * f64::from_bits(*scale),
                    self.betas,
                    if *decay { wd } else { 0.0 },
                    self.eps,
                )?;
            }
            Ok::<(), String>(())
        })?;
        for (_, idx) in &groups {
            for &i in idx {
                self.params[i].step += 1;
            }
        }
        Ok(())
    }

    /// Optimizer state as named tensors (for checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 3);
        for p in &self.params {
            out.push((
                format!("exp_avg.{}", p.name),
                p.exp_avg.to_device(tch::Device::Cpu),
            ));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.to_device(tch::Device::Cpu),
            ));
            out.push((format!("step.{}", p.name), Tensor::from(p.step)));
        }
        out
    }

    /// Restores what [`AdamW::state`] saved; every parameter must be present with its shape.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let map: std::collections::HashMap<&str, &Tensor> =
            state.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let get = |key: String, shape: &[i64]| -> Result<Tensor> {
            let t = map
                .get(key.as_str())
                .ok_or_else(|| TrainError::Resume(format!("optimizer state lacks {key}")))?;
            if t.size() != shape {
                return Err(TrainError::Resume(format!(
                    "optimizer state {key} has shape {:?}, expected {shape:?}",
                    t.size()
                )));
            }
            Ok(t.shallow_clone())
        };
        for p in &mut self.params {
            let shape = p.tensor.size();
            let device = p.tensor.device();
            let a = get(format!("exp_avg.{}", p.name), &shape)?;
            let s = get(format!("exp_avg_sq.{}", p.name), &shape)?;
            let step = get(format!("step.{}", p.name), &[])?;
            p.exp_avg = a.to_kind(Kind::Float).to_device(device).detach();
            p.exp_avg_sq = s.to_kind(Kind::Float).to_device(device).detach();
            p.step = step.int64_value(&[]);
            p.step_t = None;
        }
        Ok(())
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total`, as open_clip's
/// `cosine_lr` / `const_lr`: linear warmup `base * (step + 1) / warmup`, then a half cosine
/// to 0 (or constant).
pub fn learning_rate(cfg: &TrainConfig, step: u64, total: u64) -> f64 {
    let base = cfg.learning_rate;
    let warmup = cfg.warmup_steps;
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match cfg.lr_schedule {
        LrSchedule::Constant => base,
        LrSchedule::Cosine => {
            let e = (step - warmup) as f64;
            let es = total.saturating_sub(warmup).max(1) as f64;
            0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny_model() -> ClipConfig {
        let mut c = ClipConfig::preset("ViT-B/32").unwrap();
        c.vision.layers = 2;
        c.text.layers = 3;
        c
    }

    #[test]
    fn groups_layers_and_decay() {
        let m = tiny_model();
        assert_eq!(
            layer_group("visual.conv1.weight", &m),
            Some((Tower::Image, 0, 3))
        );
        assert_eq!(
            layer_group("visual.transformer.resblocks.1.mlp.c_fc.weight", &m),
            Some((Tower::Image, 2, 3))
        );
        assert_eq!(layer_group("visual.proj", &m), Some((Tower::Image, 3, 3)));
        assert_eq!(
            layer_group("token_embedding.weight", &m),
            Some((Tower::Text, 0, 4))
        );
        assert_eq!(
            layer_group("transformer.resblocks.0.ln_1.bias", &m),
            Some((Tower::Text, 1, 4))
        );
        assert_eq!(
            layer_group("text_projection", &m),
            Some((Tower::Text, 4, 4))
        );
        assert_eq!(layer_group("logit_scale", &m), None);

        let cfg: TrainConfig = TrainConfig::from_layers(&[&json!({
            "lr_layer_decay": 0.5, "lock_text_tower": true, "lock_text_unlocked_layers": 2
        })])
        .unwrap()
        .config;
        let t = |n: &str, s: &[i64]| treatment(n, s, &m, &cfg);
        assert_eq!(t("visual.conv1.weight", &[768, 3, 32, 32]).lr_scale, 0.125);
        assert!(t("visual.conv1.weight", &[768, 3, 32, 32]).decay);
        assert!(!t("visual.positional_embedding", &[50, 768]).decay);
        assert!(!t("token_embedding.weight", &[49408, 512]).decay);
        assert!(!t("visual.ln_pre.weight", &[768]).decay);
        assert!(!t("visual.transformer.resblocks.0.attn.in_proj_bias", &[2304]).decay);
        assert!(
            t(
                "visual.transformer.resblocks.0.attn.in_proj_weight",
                &[2304, 768]
            )
            .decay
        );
        assert!(!t("logit_scale", &[]).decay);
        assert!(t("logit_scale", &[]).trainable);
        // Text tower locked except its head and last block.
        assert!(t("text_projection", &[512, 512]).trainable);
        assert!(t("transformer.resblocks.2.mlp.c_fc.weight", &[2048, 512]).trainable);
        assert!(!t("transformer.resblocks.1.mlp.c_fc.weight", &[2048, 512]).trainable);
        assert!(!t("token_embedding.weight", &[49408, 512]).trainable);
        assert!(t("visual.conv1.weight", &[768, 3, 32, 32]).trainable);
    }

    #[test]
    fn schedule_matches_open_clip() {
        let mut cfg = TrainConfig {
            learning_rate: 1.0,
            warmup_steps: 4,
            ..TrainConfig::default()
        };
        assert_eq!(learning_rate(&cfg, 0, 14), 0.25);
        assert_eq!(learning_rate(&cfg, 3, 14), 1.0);
        assert_eq!(learning_rate(&cfg, 4, 14), 1.0);
        assert!((learning_rate(&cfg, 9, 14) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&cfg, 13, 14) < 0.03);
        cfg.lr_schedule = LrSchedule::Constant;
        assert_eq!(learning_rate(&cfg, 13, 14), 1.0);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut w = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        (&w * &w).sum(Kind::Float).backward(); // grad = 2w = [6, 8], norm 10
        let mut opt = AdamW::new(
            vec![("w".into(), w.shallow_clone(), 1.0, true)],
            [0.9, 0.999],
            1e-8,
            0.0,
        );
        assert!((opt.clip_grad_norm(5.0) - 10.0).abs() < 1e-5);
        assert!((opt.grad_norm() - 5.0).abs() < 1e-4);
        opt.zero_grad();
        assert_eq!(opt.grad_norm(), 0.0);
        w.zero_grad();
    }

    /// The fused kernel and the per-parameter ops give the same parameters, groups with
    /// different learning-rate scales and decay included (on the CPU here; the GPU check
    /// compares them on CUDA).
    #[test]
    fn fused_matches_per_parameter_update() {
        tch::manual_seed(0);
        let shapes: [&[i64]; 4] = [&[4, 3], &[3], &[5, 2, 2], &[1]];
        let init: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)))
            .collect();
        let make = |fused: bool| {
            let vars: Vec<Tensor> = init
                .iter()
                .map(|t| t.copy().set_requires_grad(true))
                .collect();
            let params = vars
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        format!("p{i}"),
                        v.shallow_clone(),
                        [1.0, 0.5, 0.25, 1.0][i],
                        i % 2 == 0,
                    )
                })
                .collect();
            let mut opt = AdamW::new(params, [0.9, 0.98], 1e-6, 0.2);
            opt.set_fused(fused);
            (vars, opt)
        };
        let (a, mut opt_a) = make(false);
        let (b, mut opt_b) = make(true);
        for step in 0..5 {
            for (vars, opt) in [(&a, &mut opt_a), (&b, &mut opt_b)] {
                opt.zero_grad();
                let loss: Tensor = vars
                    .iter()
                    .map(|v| (v * v * (step as f64 + 1.0)).sin().sum(Kind::Float))
                    .fold(Tensor::from(0f32), |acc, x| acc + x);
                loss.backward();
                opt.step(1e-2);
            }
        }
        assert!(opt_b.is_fused(), "the fused kernel failed and fell back");
        for (x, y) in a.iter().zip(&b) {
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(
                diff < 1e-6,
                "fused and per-parameter updates differ by {diff}"
            );
        }
        let steps = opt_b
            .state()
            .into_iter()
            .find(|(k, _)| k == "step.p0")
            .unwrap()
            .1;
        assert_eq!(steps.int64_value(&[]), 5);
    }
}
