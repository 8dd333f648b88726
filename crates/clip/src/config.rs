//! Architecture description: presets, our native JSON, open_clip model configs and
//! Hugging Face `config.json`.

use crate::{ClipError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// MLP activation. OpenAI weights use QuickGELU; open_clip names without `-quickgelu`
/// use exact GELU. Mixing them up silently degrades a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub width: i64,
    pub layers: i64,
    pub heads: i64,
    pub patch_size: i64,
    pub image_size: i64,
    /// Hidden size of the MLP (4 x width for every OpenAI model).
    pub mlp_dim: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub width: i64,
    pub layers: i64,
    pub heads: i64,
    pub context_length: i64,
    pub vocab_size: i64,
    pub mlp_dim: i64,
    /// Pool at the first occurrence of this id (Hugging Face). `None` pools at the
    /// position of the largest id, as OpenAI and open_clip do (EOT 49407 is the largest).
    #[serde(default)]
    pub eos_token_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub embed_dim: i64,
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub activation: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_eps() -> f64 {
    1e-5
}

/// Names accepted by [`ClipConfig::preset`].
pub const PRESETS: [&str; 4] = ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"];

impl ClipConfig {
    /// OpenAI's published architectures (QuickGELU, context 77, vocabulary 49408).
    pub fn preset(name: &str) -> Result<Self> {
        let normalized = name.trim().replace(['-', '_'], "").to_ascii_lowercase();
        let (vision, text, embed_dim) = match normalized.as_str() {
            "vitb/32" | "vitb32" => ((768, 12, 12, 32, 224), (512, 12, 8), 512),
            "vitb/16" | "vitb16" => ((768, 12, 12, 16, 224), (512, 12, 8), 512),
            "vitl/14" | "vitl14" => ((1024, 24, 16, 14, 224), (768, 12, 12), 768),
            "vitl/14@336px" | "vitl14336" | "vitl/14336" => {
                ((1024, 24, 16, 14, 336), (768, 12, 12), 768)
            }
            _ => return Err(ClipError::UnknownPreset(name.to_string())),
        };
        let (vw, vl, vh, patch, image) = vision;
        let (tw, tl, th) = text;
        Ok(Self {
            embed_dim,
            vision: VisionConfig {
                width: vw,
                layers: vl,
                heads: vh,
                patch_size: patch,
                image_size: image,
                mlp_dim: 4 * vw,
            },
            text: TextConfig {
                width: tw,
                layers: tl,
                heads: th,
                context_length: 77,
                vocab_size: 49408,
                mlp_dim: 4 * tw,
                eos_token_id: None,
            },
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        })
    }

    /// Reads any supported architecture JSON: ours, an open_clip model config
    /// (`vision_cfg`/`text_cfg`) or a Hugging Face `CLIPConfig` (`vision_config`/`text_config`).
    pub fn from_json(value: &Value) -> Result<Self> {
        let config = if value.get("vision_cfg").is_some() {
            Self::from_open_clip(value)?
        } else if value.get("vision_config").is_some() || value.get("text_config").is_some() {
            Self::from_hf(value)?
        } else if value.get("vision").is_some() {
            serde_json::from_value(value.clone()).map_err(|e| ClipError::Config(e.to_string()))?
        } else {
            return Err(ClipError::Config(
                "expected a cliptune config (vision/text), an open_clip config (vision_cfg/text_cfg) \
                 or a Hugging Face config.json (vision_config/text_config)"
                    .into(),
            ));
        };
        config.validate()?;
        Ok(config)
    }

    fn from_open_clip(v: &Value) -> Result<Self> {
        let vc = &v["vision_cfg"];
        let tc = &v["text_cfg"];
        let vw = int(vc, "width", 768)?;
        let tw = int(tc, "width", 512)?;
        let head_width = int(vc, "head_width", 64)?;
        let text_heads = int(tc, "heads", 8)?;
        Ok(Self {
            embed_dim: int(v, "embed_dim", 512)?,
            vision: VisionConfig {
                width: vw,
                layers: int(vc, "layers", 12)?,
                heads: vw / head_width.max(1),
                patch_size: int(vc, "patch_size", 16)?,
                image_size: int(vc, "image_size", 224)?,
                mlp_dim: (vw as f64 * float(vc, "mlp_ratio", 4.0)?) as i64,
            },
            text: TextConfig {
                width: tw,
                layers: int(tc, "layers", 12)?,
                heads: text_heads,
                context_length: int(tc, "context_length", 77)?,
                vocab_size: int(tc, "vocab_size", 49408)?,
                mlp_dim: (tw as f64 * float(tc, "mlp_ratio", 4.0)?) as i64,
                eos_token_id: None,
            },
            activation: if v
                .get("quick_gelu")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                Activation::QuickGelu
            } else {
                Activation::Gelu
            },
            layer_norm_eps: 1e-5,
        })
    }

    fn from_hf(v: &Value) -> Result<Self> {
        let vc = &v["vision_config"];
        let tc = &v["text_config"];
        let act = |c: &Value| -> Result<Activation> {
            match c
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("quick_gelu")
            {
                "quick_gelu" => Ok(Activation::QuickGelu),
                "gelu" => Ok(Activation::Gelu),
                other => Err(ClipError::Config(format!(
                    "unsupported hidden_act {other:?}"
                ))),
            }
        };
        let activation = act(vc)?;
        if act(tc)? != activation {
            return Err(ClipError::Config(
                "text and vision towers use different activations; cliptune needs one".into(),
            ));
        }
        let eos = int(tc, "eos_token_id", 49407)?;
        let vw = int(vc, "hidden_size", 768)?;
        let tw = int(tc, "hidden_size", 512)?;
        Ok(Self {
            embed_dim: int(v, "projection_dim", 512)?,
            vision: VisionConfig {
                width: vw,
                layers: int(vc, "num_hidden_layers", 12)?,
                heads: int(vc, "num_attention_heads", 12)?,
                patch_size: int(vc, "patch_size", 32)?,
                image_size: int(vc, "image_size", 224)?,
                mlp_dim: int(vc, "intermediate_size", 4 * vw)?,
            },
            text: TextConfig {
                width: tw,
                layers: int(tc, "num_hidden_layers", 12)?,
                heads: int(tc, "num_attention_heads", 8)?,
                context_length: int(tc, "max_position_embeddings", 77)?,
                vocab_size: int(tc, "vocab_size", 49408)?,
                mlp_dim: int(tc, "intermediate_size", 4 * tw)?,
                // transformers pools at argmax when the config carries the legacy id 2.
                eos_token_id: (eos != 2).then_some(eos),
            },
            activation,
            layer_norm_eps: float(vc, "layer_norm_eps", 1e-5)?,
        })
    }

    /// Rejects architectures that cannot be built (zero sizes, widths not divisible by heads).
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let positive = [
            ("embed_dim", self.embed_dim),
            ("vision.width", v.width),
            ("vision.layers", v.layers),
            ("vision.heads", v.heads),
            ("vision.patch_size", v.patch_size),
            ("vision.image_size", v.image_size),
            ("vision.mlp_dim", v.mlp_dim),
            ("text.width", t.width),
            ("text.layers", t.layers),
            ("text.heads", t.heads),
            ("text.context_length", t.context_length),
            ("text.vocab_size", t.vocab_size),
            ("text.mlp_dim", t.mlp_dim),
        ];
        for (key, value) in positive {
            if value <= 0 {
                return Err(ClipError::Config(format!(
                    "{key} must be positive, got {value}"
                )));
            }
        }
        if v.width % v.heads != 0 {
            return Err(ClipError::Config(format!(
                "vision.width {} is not divisible by vision.heads {}",
                v.width, v.heads
            )));
        }
        if t.width % t.heads != 0 {
            return Err(ClipError::Config(format!(
                "text.width {} is not divisible by text.heads {}",
                t.width, t.heads
            )));
        }
        if v.image_size % v.patch_size != 0 {
            return Err(ClipError::Config(format!(
                "vision.image_size {} is not a multiple of vision.patch_size {}",
                v.image_size, v.patch_size
            )));
        }
        Ok(())
    }

    /// Number of patches per side of the image grid.
    pub fn grid(&self) -> i64 {
        self.vision.image_size / self.vision.patch_size
    }
}

fn int(v: &Value, key: &str, default: i64) -> Result<i64> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_i64()
            .or_else(|| x.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| ClipError::Config(format!("{key} must be an integer, got {x}"))),
    }
}

fn float(v: &Value, key: &str, default: f64) -> Result<f64> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_f64()
            .ok_or_else(|| ClipError::Config(format!("{key} must be a number, got {x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn presets_match_openai() {
        let b32 = ClipConfig::preset("ViT-B/32").unwrap();
        assert_eq!(
            (b32.vision.width, b32.vision.patch_size, b32.embed_dim),
            (768, 32, 512)
        );
        let l336 = ClipConfig::preset("ViT-L/14@336px").unwrap();
        assert_eq!(
            (l336.vision.image_size, l336.text.width, l336.vision.heads),
            (336, 768, 16)
        );
        assert!(ClipConfig::preset("ViT-H/14").is_err());
    }

    #[test]
    fn reads_open_clip_config() {
        let c = ClipConfig::from_json(&json!({
            "embed_dim": 64, "quick_gelu": false,
            "vision_cfg": {"image_size": 28, "layers": 4, "width": 128, "patch_size": 4},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4}
        }))
        .unwrap();
        assert_eq!(c.activation, Activation::Gelu);
        assert_eq!((c.vision.heads, c.vision.mlp_dim, c.grid()), (2, 512, 7));
    }

    #[test]
    fn reads_hf_config_and_legacy_eos() {
        let mut hf = json!({
            "projection_dim": 32,
            "text_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 100, "max_position_embeddings": 16, "vocab_size": 1000,
                            "hidden_act": "gelu", "eos_token_id": 999},
            "vision_config": {"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 3,
                              "intermediate_size": 80, "patch_size": 8, "image_size": 32, "hidden_act": "gelu"}
        });
        let c = ClipConfig::from_json(&hf).unwrap();
        assert_eq!(c.text.eos_token_id, Some(999));
        assert_eq!(
            (c.vision.heads, c.vision.mlp_dim, c.text.context_length),
            (3, 80, 16)
        );
        hf["text_config"]["eos_token_id"] = json!(2);
        assert_eq!(ClipConfig::from_json(&hf).unwrap().text.eos_token_id, None);
        hf["text_config"]["hidden_act"] = json!("quick_gelu");
        assert!(ClipConfig::from_json(&hf).is_err());
    }

    #[test]
    fn rejects_impossible_shapes() {
        let mut c = ClipConfig::preset("ViT-B/32").unwrap();
        c.vision.heads = 7;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vision.heads"));
        let back = serde_json::to_value(ClipConfig::preset("ViT-B/16").unwrap()).unwrap();
        assert_eq!(
            ClipConfig::from_json(&back).unwrap(),
            ClipConfig::preset("ViT-B/16").unwrap()
        );
    }
}
