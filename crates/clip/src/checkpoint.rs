//! Checkpoint formats. Every format is read into OpenAI / open_clip key names (the
//! model's own variable paths) and then copied in one step, after all keys and shapes
//! have been checked, so a model is never half-loaded.
//!
//! | format | on disk | architecture from |
//! |---|---|---|
//! | native | `clip_config.json` + `model.safetensors` (OpenAI key names) | the JSON |
//! | Hugging Face | `config.json` + `model.safetensors` (or `pytorch_model.bin`) | `config.json` |
//! | state dict | one `.safetensors`, `.pt` or `.bin` file (OpenAI / open_clip keys) | tensor shapes |
//! | OpenAI JIT | a TorchScript archive (`ViT-B-32.pt`) | tensor shapes |

use crate::config::{Activation, ClipConfig, TextConfig, VisionConfig};
use crate::model::Clip;
use crate::{ClipError, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// File names of the native format.
pub const NATIVE_CONFIG: &str = "clip_config.json";
pub const NATIVE_WEIGHTS: &str = "model.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Native,
    HuggingFace,
    StateDict,
    Jit,
}

/// What `inspect` finds out about a checkpoint without building the model.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub format: Format,
    #[serde(flatten)]
    pub config: ClipConfig,
}

/// Options for reading formats that do not record everything.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Activation for state dicts and JIT archives, which do not record it.
    /// Default: QuickGELU, as OpenAI's loader assumes.
    pub activation: Option<Activation>,
    /// Architecture to use instead of the one inferred from tensor shapes.
    pub config: Option<ClipConfig>,
}

/// Identifies the format of a file or directory.
pub fn detect(path: &Path) -> Result<Format> {
    if path.is_dir() {
        if path.join(NATIVE_CONFIG).is_file() {
            return Ok(Format::Native);
        }
        if path.join("config.json").is_file() {
            return Ok(Format::HuggingFace);
        }
        return Err(ClipError::format(
            path,
            format!(
                "directory holds neither {NATIVE_CONFIG} (cliptune) nor config.json (Hugging Face)"
            ),
        ));
    }
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| ClipError::io(path, e))?;
    let n = file.read(&mut magic).map_err(|e| ClipError::io(path, e))?;
    if n == 4 && magic == *b"PK\x03\x04" {
        // Both torch.save and torch.jit.save write zip archives; only TorchScript has code.
        return Ok(if zip_has_code(path)? {
            Format::Jit
        } else {
            Format::StateDict
        });
    }
    if safetensors_header(path).is_ok() {
        return Ok(Format::StateDict);
    }
    Err(ClipError::format(
        path,
        "not a safetensors file, a torch.save zip archive, a TorchScript archive, or a model directory \
         (legacy non-zip torch.save files: re-save with a current torch or as safetensors)",
    ))
}

/// Reads the architecture of any supported checkpoint.
pub fn inspect(path: &Path, options: &LoadOptions) -> Result<Inspection> {
    let format = detect(path)?;
    let config = match (format, &options.config) {
        (_, Some(config)) => config.clone(),
        (Format::Native, None) => read_config(&path.join(NATIVE_CONFIG))?,
        (Format::HuggingFace, None) => read_config(&path.join("config.json"))?,
        (Format::StateDict, None) if !is_zip(path) => {
            let shapes = safetensors_header(path)?;
            infer_config(path, &strip_prefixes(shapes), options)?
        }
        (Format::StateDict | Format::Jit, None) => {
            let shapes: Vec<(String, Vec<i64>)> = read_tensors(path, format)?
                .into_iter()
                .map(|(k, t)| (k, t.size()))
                .collect();
            infer_config(path, &strip_prefixes(shapes), options)?
        }
    };
    Ok(Inspection { format, config })
}

/// Loads any supported checkpoint onto `device` as f32 weights.
pub fn load(path: &Path, device: Device, options: &LoadOptions) -> Result<Clip> {
    let format = detect(path)?;
    let tensors = read_tensors(path, format)?;
    let (config, tensors) = match format {
        Format::Native => (read_config(&path.join(NATIVE_CONFIG))?, tensors),
        Format::HuggingFace => (
            read_config(&path.join("config.json"))?,
            from_hf(path, tensors)?,
        ),
        Format::StateDict | Format::Jit => {
            let tensors: Vec<(String, Tensor)> = strip_prefixes(tensors).into_iter().collect();
            let shapes = tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect();
            (infer_config(path, &shapes, options)?, tensors)
        }
    };
    let config = options.config.clone().unwrap_or(config);
    // copy_into checks that the checkpoint covers every variable before it writes any.
    let clip = Clip::uninit(&config, device)?;
    copy_into(&clip, tensors, path)?;
    Ok(clip)
}

/// Writes `clip` in the native format into `dir` (created if needed). Files are written
/// to temporary names and renamed, so a crash never leaves a torn checkpoint.
pub fn save(clip: &Clip, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ClipError::io(dir, e))?;
    let weights = dir.join(NATIVE_WEIGHTS);
    let tmp = dir.join(format!(".{NATIVE_WEIGHTS}.tmp"));
    let vars = clip.var_store().variables();
    let mut named: Vec<(String, Tensor)> = vars
        .into_iter()
        .map(|(k, v)| (k, v.to_kind(tch::Kind::Float).to_device(Device::Cpu)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, &tmp)?;
    fsync(&tmp)?;
    std::fs::rename(&tmp, &weights).map_err(|e| ClipError::io(&weights, e))?;
    let json =
        serde_json::to_vec_pretty(clip.config()).map_err(|e| ClipError::Config(e.to_string()))?;
    write_atomic(&dir.join(NATIVE_CONFIG), &json)
}

/// Writes a file atomically: temporary name, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| ClipError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| ClipError::io(&tmp, e))?;
    f.sync_all().map_err(|e| ClipError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ClipError::io(path, e))
}

fn fsync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ClipError::io(path, e))
}

fn read_config(path: &Path) -> Result<ClipConfig> {
    let bytes = std::fs::read(path).map_err(|e| ClipError::io(path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ClipError::format(path, format!("invalid JSON: {e}")))?;
    ClipConfig::from_json(&value).map_err(|e| ClipError::format(path, e.to_string()))
}

fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"PK\x03\x04"
}

/// True when a zip archive has TorchScript code (`<archive>/code/...`).
fn zip_has_code(path: &Path) -> Result<bool> {
    // The central directory at the end lists every entry name; reading the last MiB is
    // enough, and avoids reading a whole (possibly GB-sized) archive just to detect it.
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| ClipError::io(path, e))?;
    let len = file.metadata().map_err(|e| ClipError::io(path, e))?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(1 << 20)))
        .map_err(|e| ClipError::io(path, e))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)
        .map_err(|e| ClipError::io(path, e))?;
    Ok(tail.windows(6).any(|w| w == b"/code/"))
}

/// Names and shapes from a safetensors header, without reading the tensors.
fn safetensors_header(path: &Path) -> Result<BTreeMap<String, Vec<i64>>> {
    let mut f = std::fs::File::open(path).map_err(|e| ClipError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| ClipError::io(path, e))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| ClipError::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len == 0 || len > 100 << 20 || len + 8 > file_len {
        return Err(ClipError::format(
            path,
            "not a safetensors file (bad header length)",
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| ClipError::io(path, e))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| ClipError::format(path, format!("not a safetensors file: {e}")))?;
    Ok(header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(|d| d.as_i64()).collect())
                .unwrap_or_default();
            (k, shape)
        })
        .collect())
}

fn read_tensors(path: &Path, format: Format) -> Result<Vec<(String, Tensor)>> {
    let weights = |dir: &Path| -> Result<PathBuf> {
        let candidates = [NATIVE_WEIGHTS, "pytorch_model.bin"];
        candidates
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                ClipError::format(dir, format!("no weights: expected one of {candidates:?}"))
            })
    };
    let file = match format {
        Format::Native | Format::HuggingFace => weights(path)?,
        Format::StateDict | Format::Jit => path.to_path_buf(),
    };
    let context = |e: tch::TchError| ClipError::format(&file, e.to_string());
    match format {
        Format::Jit => tch::CModule::load_on_device(&file, Device::Cpu)
            .and_then(|m| m.named_parameters())
            .map_err(context),
        _ if is_zip(&file) => Tensor::loadz_multi_with_device(&file, Device::Cpu).map_err(context),
        _ => Tensor::read_safetensors(&file).map_err(context),
    }
}

/// Drops wrappers that training frameworks add: `module.` (DDP) and `_orig_mod.` (torch.compile).
fn strip_prefixes<T>(items: impl IntoIterator<Item = (String, T)>) -> BTreeMap<String, T> {
    items
        .into_iter()
        .map(|(k, v)| {
            let mut k = k.as_str();
            for prefix in ["module.", "_orig_mod."] {
                k = k.strip_prefix(prefix).unwrap_or(k);
            }
            (k.to_string(), v)
        })
        .collect()
}

/// Infers the architecture from OpenAI / open_clip tensor shapes, as OpenAI's
/// `build_model` does (heads = width / 64).
fn infer_config(
    path: &Path,
    shapes: &BTreeMap<String, Vec<i64>>,
    options: &LoadOptions,
) -> Result<ClipConfig> {
    let get = |key: &str, dims: usize| -> Result<&Vec<i64>> {
        match shapes.get(key) {
            Some(s) if s.len() == dims => Ok(s),
            Some(s) => Err(ClipError::format(
                path,
                format!("{key} has shape {s:?}, expected {dims} dimensions"),
            )),
            None => Err(ClipError::format(
                path,
                format!("missing {key}: not an OpenAI/open_clip CLIP state dict (ViT towers only)"),
            )),
        }
    };
    let layers = |prefix: &str| {
        shapes
            .keys()
            .filter_map(|k| {
                k.strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<i64>()
                    .ok()
            })
            .max()
            .map_or(0, |n| n + 1)
    };
    let conv = get("visual.conv1.weight", 4)?;
    let vpos = get("visual.positional_embedding", 2)?;
    let (vision_width, patch) = (conv[0], conv[3]);
    let grid = (((vpos[0] - 1) as f64).sqrt()).round() as i64;
    let text_width = get("ln_final.weight", 1)?[0];
    let mlp = |prefix: &str, width: i64| {
        shapes
            .get(&format!("{prefix}0.mlp.c_fc.weight"))
            .map_or(4 * width, |s| s[0])
    };
    let config = ClipConfig {
        embed_dim: get("text_projection", 2)?[1],
        vision: VisionConfig {
            width: vision_width,
            layers: layers("visual.transformer.resblocks."),
            heads: (vision_width / 64).max(1),
            patch_size: patch,
            image_size: patch * grid,
            mlp_dim: mlp("visual.transformer.resblocks.", vision_width),
        },
        text: TextConfig {
            width: text_width,
            layers: layers("transformer.resblocks."),
            heads: (text_width / 64).max(1),
            context_length: get("positional_embedding", 2)?[0],
            vocab_size: get("token_embedding.weight", 2)?[0],
            mlp_dim: mlp("transformer.resblocks.", text_width),
            eos_token_id: None,
        },
        activation: options.activation.unwrap_or(Activation::QuickGelu),
        layer_norm_eps: 1e-5,
    };
    config
        .validate()
        .map_err(|e| ClipError::format(path, e.to_string()))?;
    Ok(config)
}

#[derive(Clone, Copy)]
enum Part {
    Whole,
    Transposed,
    Qkv(usize),
}

/// Hugging Face `CLIPModel` names -> OpenAI names (whole-name prefixes).
const HF_PREFIXES: &[(&str, &str, Part)] = &[
    (
        "text_model.embeddings.token_embedding.weight",
        "token_embedding.weight",
        Part::Whole,
    ),
    (
        "text_model.embeddings.position_embedding.weight",
        "positional_embedding",
        Part::Whole,
    ),
    ("text_model.final_layer_norm.", "ln_final.", Part::Whole),
    (
        "text_model.encoder.layers.",
        "transformer.resblocks.",
        Part::Whole,
    ),
    (
        "vision_model.embeddings.class_embedding",
        "visual.class_embedding",
        Part::Whole,
    ),
    (
        "vision_model.embeddings.patch_embedding.weight",
        "visual.conv1.weight",
        Part::Whole,
    ),
    (
        "vision_model.embeddings.position_embedding.weight",
        "visual.positional_embedding",
        Part::Whole,
    ),
    ("vision_model.pre_layrnorm.", "visual.ln_pre.", Part::Whole),
    (
        "vision_model.post_layernorm.",
        "visual.ln_post.",
        Part::Whole,
    ),
    (
        "vision_model.encoder.layers.",
        "visual.transformer.resblocks.",
        Part::Whole,
    ),
    ("visual_projection.weight", "visual.proj", Part::Transposed),
    (
        "text_projection.weight",
        "text_projection",
        Part::Transposed,
    ),
    ("logit_scale", "logit_scale", Part::Whole),
];

/// Inside a transformer block.
const HF_BLOCK: &[(&str, &str, Part)] = &[
    (
        ".self_attn.q_proj.weight",
        ".attn.in_proj_weight",
        Part::Qkv(0),
    ),
    (
        ".self_attn.k_proj.weight",
        ".attn.in_proj_weight",
        Part::Qkv(1),
    ),
    (
        ".self_attn.v_proj.weight",
        ".attn.in_proj_weight",
        Part::Qkv(2),
    ),
    (".self_attn.q_proj.bias", ".attn.in_proj_bias", Part::Qkv(0)),
    (".self_attn.k_proj.bias", ".attn.in_proj_bias", Part::Qkv(1)),
    (".self_attn.v_proj.bias", ".attn.in_proj_bias", Part::Qkv(2)),
    (".self_attn.out_proj.", ".attn.out_proj.", Part::Whole),
    (".layer_norm1.", ".ln_1.", Part::Whole),
    (".layer_norm2.", ".ln_2.", Part::Whole),
    (".mlp.fc1.", ".mlp.c_fc.", Part::Whole),
    (".mlp.fc2.", ".mlp.c_proj.", Part::Whole),
];

fn rename_hf(name: &str) -> Option<(String, Part)> {
    let (from, to, part) = HF_PREFIXES
        .iter()
        .find(|(from, _, _)| name.starts_with(from))?;
    let renamed = format!("{to}{}", &name[from.len()..]);
    if !to.ends_with("resblocks.") {
        return Some((renamed, *part));
    }
    HF_BLOCK
        .iter()
        .find(|(f, _, _)| renamed.contains(f))
        .map(|(f, t, part)| (renamed.replacen(f, t, 1), *part))
}

fn from_hf(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    let mut qkv: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, t) in tensors {
        if name.ends_with("position_ids") {
            continue; // a buffer older transformers versions saved
        }
        match rename_hf(&name) {
            Some((n, Part::Whole)) => out.push((n, t)),
            Some((n, Part::Transposed)) => out.push((n, t.tr().contiguous())),
            Some((n, Part::Qkv(i))) => qkv.entry(n).or_default()[i] = Some(t),
            None => unknown.push(format!("unexpected {name} {:?}", t.size())),
        }
    }
    for (name, parts) in qkv {
        match parts {
            [Some(q), Some(k), Some(v)] => out.push((name, Tensor::cat(&[q, k, v], 0))),
            _ => unknown.push(format!(
                "{name}: q_proj, k_proj and v_proj must all be present"
            )),
        }
    }
    if !unknown.is_empty() {
        return Err(ClipError::Mismatch {
            path: path.into(),
            problems: unknown,
        });
    }
    Ok(out)
}

/// Checks every key and shape, then copies (converting fp16/bf16 to the model's kind).
fn copy_into(
    clip: &Clip,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    path: &Path,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
    // Buffers some exporters keep next to the weights; they carry nothing we use.
    tensors.retain(|k, _| !k.ends_with("attn_mask") && !k.ends_with("position_ids"));
    let vars = clip.var_store().variables();
    let mut problems = Vec::new();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let want = vars[name].size();
        match tensors.get(name) {
            None => problems.push(format!("missing {name} {want:?}")),
            Some(t) if t.size() != want => problems.push(format!(
                "{name}: checkpoint has {:?}, model needs {want:?}",
                t.size()
            )),
            Some(_) => {}
        }
    }
    let mut extra: Vec<String> = tensors
        .iter()
        .filter(|(k, _)| !vars.contains_key(*k))
        .map(|(k, t)| format!("unexpected {k} {:?}", t.size()))
        .collect();
    extra.sort();
    problems.extend(extra);
    if !problems.is_empty() {
        return Err(ClipError::Mismatch {
            path: path.into(),
            problems,
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            let src = &tensors[&name];
            var.f_copy_(&src.to_kind(var.kind()))?;
        }
        Ok(())
    })
}
