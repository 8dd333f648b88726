//! CLIP in libtorch. Variable paths are OpenAI / open_clip state-dict keys
//! (`visual.transformer.resblocks.0.attn.in_proj_weight`, ...), so a native
//! checkpoint loads by name and other formats by a rename table (see `checkpoint`).

use crate::config::{Activation, ClipConfig};
use crate::{ClipError, Result};
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

/// `ln(1 / 0.07)`: CLIP's initial temperature.
pub const LOGIT_SCALE_INIT: f64 = 2.659_260_036_932_778_4;
/// `ln(100)`: the upper clamp open_clip applies to `logit_scale`.
pub const LOGIT_SCALE_MAX: f64 = 4.605_170_185_988_092;

/// How [`Clip::build`] fills the variables.
#[derive(Clone, Copy)]
enum Fill {
    /// open_clip's initialisation.
    Random,
    /// Allocated only: the caller overwrites every variable.
    Uninit,
}

impl Fill {
    fn var(self, p: &nn::Path, name: &str, dims: &[i64], init: Init) -> Tensor {
        match self {
            Fill::Random => p.var(name, dims, init),
            Fill::Uninit => p.add(name, Tensor::empty(dims, (Kind::Float, p.device())), true),
        }
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(p: nn::Path, dim: i64, eps: f64, fill: Fill) -> Self {
        Self {
            weight: fill.var(&p, "weight", &[dim], Init::Const(1.0)),
            bias: fill.var(&p, "bias", &[dim], Init::Const(0.0)),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let d = *x.size().last().unwrap_or(&0);
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(p: nn::Path, input: i64, output: i64, std: f64, fill: Fill) -> Self {
        Self {
            weight: fill.var(
                &p,
                "weight",
                &[output, input],
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            ),
            bias: fill.var(&p, "bias", &[output], Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// `attn`: multi-head self-attention with a fused q/k/v input projection, as in
/// `torch.nn.MultiheadAttention`.
struct Attention {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, width: i64, heads: i64, attn_std: f64, proj_std: f64, fill: Fill) -> Self {
        Self {
            in_proj_weight: fill.var(
                &p,
                "in_proj_weight",
                &[3 * width, width],
                Init::Randn {
                    mean: 0.0,
                    stdev: attn_std,
                },
            ),
            in_proj_bias: fill.var(&p, "in_proj_bias", &[3 * width], Init::Const(0.0)),
            out_proj: Linear::new(&p / "out_proj", width, width, proj_std, fill),
            heads,
        }
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, l, d) = x
            .size3()
            .expect("attention input is [batch, tokens, width]");
        let qkv = x
            .linear(&self.in_proj_weight, Some(&self.in_proj_bias))
            .view([b, l, 3, self.heads, d / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let out = Tensor::scaled_dot_product_attention(
            &qkv.get(0),
            &qkv.get(1),
            &qkv.get(2),
            None::<Tensor>,
            0.0,
            causal,
            None,
            false,
        );
        self.out_proj
            .forward(&out.transpose(1, 2).reshape([b, l, d]))
    }
}

/// `resblocks.N`: a pre-norm transformer block.
struct ResidualBlock {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    activation: Activation,
}

impl ResidualBlock {
    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.attn.forward(&self.ln_1.forward(x), causal);
        let h = self.c_fc.forward(&self.ln_2.forward(&x));
        let h = match self.activation {
            Activation::QuickGelu => &h * (&h * 1.702).sigmoid(),
            Activation::Gelu => h.gelu("none"),
        };
        x + self.c_proj.forward(&h)
    }
}

/// `transformer`: a stack of `resblocks`.
struct Transformer {
    resblocks: Vec<ResidualBlock>,
}

impl Transformer {
    fn new(
        p: nn::Path,
        width: i64,
        layers: i64,
        heads: i64,
        mlp_dim: i64,
        config: &ClipConfig,
        fill: Fill,
    ) -> Self {
        // open_clip's initialisation (CLIP.init_parameters).
        let attn_std = (width as f64).powf(-0.5);
        let proj_std = attn_std * ((2 * layers) as f64).powf(-0.5);
        let fc_std = ((2 * width) as f64).powf(-0.5);
        let blocks = &p / "resblocks";
        let resblocks = (0..layers)
            .map(|i| {
                let b = &blocks / i;
                let mlp = &b / "mlp";
                ResidualBlock {
                    ln_1: LayerNorm::new(&b / "ln_1", width, config.layer_norm_eps, fill),
                    attn: Attention::new(&b / "attn", width, heads, attn_std, proj_std, fill),
                    ln_2: LayerNorm::new(&b / "ln_2", width, config.layer_norm_eps, fill),
                    c_fc: Linear::new(&mlp / "c_fc", width, mlp_dim, fc_std, fill),
                    c_proj: Linear::new(&mlp / "c_proj", mlp_dim, width, proj_std, fill),
                    activation: config.activation,
                }
            })
            .collect();
        Self { resblocks }
    }

    fn forward(&self, x: Tensor, causal: bool) -> Tensor {
        self.resblocks
            .iter()
            .fold(x, |x, block| block.forward(&x, causal))
    }
}

/// `visual`: the ViT image tower.
struct VisionTransformer {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: Transformer,
    ln_post: LayerNorm,
    proj: Tensor,
    patch_size: i64,
    image_size: i64,
}

impl VisionTransformer {
    fn new(p: nn::Path, config: &ClipConfig, fill: Fill) -> Self {
        let v = &config.vision;
        let scale = (v.width as f64).powf(-0.5);
        let grid = config.grid();
        let fan_in = (3 * v.patch_size * v.patch_size) as f64;
        let bound = fan_in.powf(-0.5);
        Self {
            conv1: fill.var(
                &(&p / "conv1"),
                "weight",
                &[v.width, 3, v.patch_size, v.patch_size],
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            class_embedding: fill.var(
                &p,
                "class_embedding",
                &[v.width],
                Init::Randn {
                    mean: 0.0,
                    stdev: scale,
                },
            ),
            positional_embedding: fill.var(
                &p,
                "positional_embedding",
                &[grid * grid + 1, v.width],
                Init::Randn {
                    mean: 0.0,
                    stdev: scale,
                },
            ),
            ln_pre: LayerNorm::new(&p / "ln_pre", v.width, config.layer_norm_eps, fill),
            transformer: Transformer::new(
                &p / "transformer",
                v.width,
                v.layers,
                v.heads,
                v.mlp_dim,
                config,
                fill,
            ),
            ln_post: LayerNorm::new(&p / "ln_post", v.width, config.layer_norm_eps, fill),
            proj: fill.var(
                &p,
                "proj",
                &[v.width, config.embed_dim],
                Init::Randn {
                    mean: 0.0,
                    stdev: scale,
                },
            ),
            patch_size: v.patch_size,
            image_size: v.image_size,
        }
    }

    fn forward(&self, pixels: &Tensor) -> Tensor {
        let x = pixels.conv2d(&self.conv1, None::<Tensor>, [self.patch_size], [0], [1], 1);
        let (b, w, _, _) = x.size4().expect("conv output is 4-d");
        let x = x.flatten(2, 3).transpose(1, 2);
        let cls = self
            .class_embedding
            .view([1, 1, w])
            .expand([b, 1, w], false)
            .to_kind(x.kind());
        let x = Tensor::cat(&[cls, x], 1) + &self.positional_embedding;
        let x = self.transformer.forward(self.ln_pre.forward(&x), false);
        self.ln_post.forward(&x.select(1, 0)).matmul(&self.proj)
    }
}

/// A CLIP model: both towers, their projections and the temperature, on one device.
pub struct Clip {
    config: ClipConfig,
    vs: nn::VarStore,
    visual: VisionTransformer,
    token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
    logit_scale: Tensor,
}

impl Clip {
    /// Builds a randomly initialised model (open_clip's initialisation). With a seed
    /// the weights are reproducible.
    pub fn new(config: &ClipConfig, device: Device, seed: Option<u64>) -> Result<Self> {
        if let Some(seed) = seed {
            tch::manual_seed(seed as i64);
        }
        Self::build(config, device, Fill::Random)
    }

    /// A model whose variables are allocated but not initialised, for a loader that
    /// overwrites every one of them (drawing ViT-B/32's 150M random numbers first took
    /// about a third of a second per load).
    pub(crate) fn uninit(config: &ClipConfig, device: Device) -> Result<Self> {
        Self::build(config, device, Fill::Uninit)
    }

    fn build(config: &ClipConfig, device: Device, fill: Fill) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let t = &config.text;
        let visual = VisionTransformer::new(&root / "visual", config, fill);
        let token_embedding = fill.var(
            &(&root / "token_embedding"),
            "weight",
            &[t.vocab_size, t.width],
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        let positional_embedding = fill.var(
            &root,
            "positional_embedding",
            &[t.context_length, t.width],
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        );
        let transformer = Transformer::new(
            &root / "transformer",
            t.width,
            t.layers,
            t.heads,
            t.mlp_dim,
            config,
            fill,
        );
        let ln_final = LayerNorm::new(&root / "ln_final", t.width, config.layer_norm_eps, fill);
        let text_projection = fill.var(
            &root,
            "text_projection",
            &[t.width, config.embed_dim],
            Init::Randn {
                mean: 0.0,
                stdev: (t.width as f64).powf(-0.5),
            },
        );
        let logit_scale = fill.var(&root, "logit_scale", &[], Init::Const(LOGIT_SCALE_INIT));
        Ok(Self {
            config: config.clone(),
            vs,
            visual,
            token_embedding,
            positional_embedding,
            transformer,
            ln_final,
            text_projection,
            logit_scale,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The variables, named by their OpenAI state-dict keys. Trainers use it for
    /// optimizer groups and checkpoints.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The kind of the weights (f32 unless converted for half-precision inference).
    pub fn kind(&self) -> Kind {
        self.logit_scale.kind()
    }

    /// Converts every weight to `kind` (e.g. bf16/f16 for inference on CUDA).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
    }

    /// Number of parameters.
    pub fn num_params(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum::<usize>() as i64
    }

    /// The learnable temperature (before `exp`).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// Unnormalised image embeddings `[B, embed_dim]` for pixels `[B, 3, S, S]`
    /// already preprocessed. Records gradients unless called under `no_grad`.
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        let size = pixels.size();
        let s = self.visual.image_size;
        if size.len() != 4 || size[1] != 3 || size[2] != s || size[3] != s {
            return Err(ClipError::Config(format!(
                "images must be [batch, 3, {s}, {s}], got {size:?}"
            )));
        }
        let pixels = pixels.to_device(self.device()).to_kind(self.kind());
        Ok(self.visual.forward(&pixels))
    }

    /// Unnormalised text embeddings `[B, embed_dim]` for token ids `[B, L]`, L <= context length.
    pub fn encode_text(&self, ids: &Tensor) -> Result<Tensor> {
        let size = ids.size();
        let ctx = self.config.text.context_length;
        if size.len() != 2 || size[1] > ctx || size[1] == 0 {
            return Err(ClipError::Config(format!(
                "token ids must be [batch, 1..={ctx}], got {size:?}"
            )));
        }
        let ids = ids.to_device(self.device()).to_kind(Kind::Int64);
        let (b, l) = (size[0], size[1]);
        let x = Tensor::embedding(&self.token_embedding, &ids, -1, false, false)
            + self.positional_embedding.narrow(0, 0, l);
        let x = self.ln_final.forward(&self.transformer.forward(x, true));
        let pool = match self.config.text.eos_token_id {
            None => ids.argmax(-1, false),
            Some(eos) => ids.eq(eos).to_kind(Kind::Int).argmax(-1, false),
        };
        let batch = Tensor::arange(b, (Kind::Int64, ids.device()));
        Ok(x.index(&[Some(batch), Some(pool)])
            .matmul(&self.text_projection))
    }

    /// `exp(logit_scale) * normalize(image) @ normalize(text).T`: logits per image `[Bi, Bt]`.
    pub fn logits(&self, image_features: &Tensor, text_features: &Tensor) -> Tensor {
        let scale = self.logit_scale.exp();
        normalize(image_features).matmul(&normalize(text_features).tr()) * scale
    }

    /// Image embeddings for inference (no autograd), as f32, L2-normalised when asked.
    pub fn image_features(&self, pixels: &Tensor, normalized: bool) -> Result<Tensor> {
        let f = tch::no_grad(|| self.encode_image(pixels))?.to_kind(Kind::Float);
        Ok(if normalized { normalize(&f) } else { f })
    }

    /// Text embeddings for inference (no autograd), as f32, L2-normalised when asked.
    pub fn text_features(&self, ids: &Tensor, normalized: bool) -> Result<Tensor> {
        let f = tch::no_grad(|| self.encode_text(ids))?.to_kind(Kind::Float);
        Ok(if normalized { normalize(&f) } else { f })
    }
}

/// L2 normalisation along the last dimension, as `torch.nn.functional.normalize`.
pub fn normalize(x: &Tensor) -> Tensor {
    let norm = x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12);
    x / norm
}
