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
//! | model state dict | `torch.save({"model_state_dict": ...})` (`best.pt` of Dataloop's CLIP adapter), or a directory holding one | tensor shapes |

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

/// The file Dataloop's CLIP adapter saves and loads (its `weights_filename` default).
pub const ADAPTER_WEIGHTS: &str = "best.pt";
/// The key under which that file holds the OpenAI-named state dict.
pub const MODEL_STATE_DICT_KEY: &str = "model_state_dict";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Native,
    HuggingFace,
    StateDict,
    Jit,
    /// A torch.save dict holding the state dict under `model_state_dict` (other keys,
    /// such as `optimizer_state_dict` or `epoch`, are ignored).
    ModelStateDict,
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
        if model_state_dict_in(path, None).is_ok() {
            return Ok(Format::ModelStateDict);
        }
        return Err(ClipError::format(
            path,
            format!(
                "directory holds neither {NATIVE_CONFIG} (cliptune), config.json (Hugging Face) \
                 nor {ADAPTER_WEIGHTS} or another torch.save file with {MODEL_STATE_DICT_KEY:?} \
                 (Dataloop's CLIP adapter)"
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
        } else if crate::torch_save::starts_with_key(path, MODEL_STATE_DICT_KEY) {
            Format::ModelStateDict
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
        (Format::StateDict | Format::Jit | Format::ModelStateDict, None) => {
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
        Format::StateDict | Format::Jit | Format::ModelStateDict => {
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
        Format::ModelStateDict if path.is_dir() => model_state_dict_in(path, None)?,
        Format::StateDict | Format::Jit | Format::ModelStateDict => path.to_path_buf(),
    };
    let context = |e: tch::TchError| ClipError::format(&file, e.to_string());
    match format {
        Format::Jit => tch::CModule::load_on_device(&file, Device::Cpu)
            .and_then(|m| m.named_parameters())
            .map_err(context),
        Format::ModelStateDict => crate::torch_save::load(&file, Some(MODEL_STATE_DICT_KEY))
            .map_err(|e| ClipError::format(&file, e)),
        // torch.save zips: read in Rust, which also takes the OrderedDict that
        // `model.state_dict()` is (libtorch's unpickler turns it into None); libtorch's
        // reader stays as the fallback for what the Rust one does not model.
        _ if is_zip(&file) => crate::torch_save::load(&file, None).or_else(|ours| {
            Tensor::loadz_multi_with_device(&file, Device::Cpu).map_err(|theirs| {
                let theirs = theirs.to_string();
                let theirs = theirs.lines().next().unwrap_or_default();
                ClipError::format(&file, format!("{ours} (libtorch: {theirs})"))
            })
        }),
        _ => Tensor::read_safetensors(&file).map_err(context),
    }
}

/// The torch.save file in `dir` that holds a `model_state_dict`, as Dataloop's CLIP
/// adapter saves it: `dir/<weights_filename>` when a name is given (the adapter's
/// `weights_filename` configuration), otherwise `best.pt` when present, otherwise the one
/// file of the directory that is such an archive. The error names what was looked for.
pub fn model_state_dict_in(dir: &Path, weights_filename: Option<&str>) -> Result<PathBuf> {
    let is_archive =
        |p: &Path| p.is_file() && crate::torch_save::starts_with_key(p, MODEL_STATE_DICT_KEY);
    let not_one = |what: String| {
        ClipError::format(
            dir,
            format!("{what}: expected a torch.save file with {MODEL_STATE_DICT_KEY:?}"),
        )
    };
    if let Some(name) = weights_filename {
        let file = dir.join(name);
        if is_archive(&file) {
            return Ok(file);
        }
        let why = if file.is_file() { "is not" } else { "no" };
        return Err(not_one(format!("{why} {name}")));
    }
    let best = dir.join(ADAPTER_WEIGHTS);
    if is_archive(&best) {
        return Ok(best);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ClipError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_archive(p))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_one(format!("no {ADAPTER_WEIGHTS} or other file"))),
        _ => Err(ClipError::format(
            dir,
            format!(
                "several files hold {MODEL_STATE_DICT_KEY:?} ({}): name one (weights_filename)",
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Writes `clip` as Dataloop's CLIP adapter saves a model: a torch.save file holding
/// `{"model_state_dict": state_dict}` with OpenAI key names and f32 tensors, which
/// `torch.load` (also with `weights_only=True`) reads and OpenAI's `clip` /
/// open_clip models take with `load_state_dict`. Written to a temporary name, fsynced
/// and renamed, like [`save`]. Conventionally `<dir>/best.pt` ([`ADAPTER_WEIGHTS`]).
pub fn save_model_state_dict(clip: &Clip, path: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = clip
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.detach().to_kind(tch::Kind::Float).to_device(Device::Cpu),
            )
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    // torch.save names the archive's folder after the file; keep to safe characters.
    let folder: String = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let folder = if folder.is_empty() {
        "archive".into()
    } else {
        folder
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ClipError::io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| ClipError::io(&tmp, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    crate::torch_save::save(Some(MODEL_STATE_DICT_KEY), &named, &folder, &mut out)
        .map_err(|e| ClipError::format(&tmp, e))?;
    drop(out);
    fsync(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| ClipError::io(path, e))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small random model whose every tensor differs from its initial value, so a
    /// loader that skipped any one would be caught.
    fn tiny(seed: u64) -> Clip {
        let json = serde_json::json!({
            "embed_dim": 16,
            "quick_gelu": true,
            "vision_cfg": {"layers": 2, "width": 64, "patch_size": 8, "image_size": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 64, "heads": 1, "layers": 2}
        });
        let config = ClipConfig::from_json(&json).unwrap();
        let clip = Clip::new(&config, Device::Cpu, Some(seed)).unwrap();
        tch::no_grad(|| {
            for (_, mut v) in clip.var_store().variables() {
                let noise = Tensor::randn_like(&v) * 0.05;
                let _ = v.f_add_(&noise).unwrap();
            }
        });
        clip
    }

    fn assert_same_weights(a: &Clip, b: &Clip) {
        let (va, vb) = (a.var_store().variables(), b.var_store().variables());
        assert_eq!(va.len(), vb.len());
        for (name, t) in &va {
            assert!(t.equal(&vb[name]), "{name} differs");
        }
    }

    #[test]
    fn model_state_dict_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let clip = tiny(1);
        let path = dir.path().join(ADAPTER_WEIGHTS);
        save_model_state_dict(&clip, &path).unwrap();
        assert!(!dir.path().join("best.tmp").exists());
        assert_eq!(detect(&path).unwrap(), Format::ModelStateDict);
        let back = load(&path, Device::Cpu, &LoadOptions::default()).unwrap();
        assert_eq!(back.config(), clip.config());
        assert_same_weights(&clip, &back);
        // Another model differs: the comparison above can fail.
        let other = tiny(2);
        let differ = clip
            .var_store()
            .variables()
            .iter()
            .any(|(n, t)| !t.equal(&other.var_store().variables()[n]));
        assert!(differ);
    }

    #[test]
    fn a_directory_holding_only_best_pt_loads() {
        let dir = tempfile::tempdir().unwrap();
        let clip = tiny(3);
        save_model_state_dict(&clip, &dir.path().join(ADAPTER_WEIGHTS)).unwrap();
        assert_eq!(detect(dir.path()).unwrap(), Format::ModelStateDict);
        let inspected = inspect(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(inspected.format, Format::ModelStateDict);
        assert_eq!(&inspected.config, clip.config());
        let back = load(dir.path(), Device::Cpu, &LoadOptions::default()).unwrap();
        assert_same_weights(&clip, &back);
    }

    #[test]
    fn a_configured_weights_filename_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let clip = tiny(4);
        save_model_state_dict(&clip, &dir.path().join("clip_weights.pth")).unwrap();
        // The only such file in the directory: found without being named...
        assert_eq!(detect(dir.path()).unwrap(), Format::ModelStateDict);
        assert_same_weights(
            &clip,
            &load(dir.path(), Device::Cpu, &LoadOptions::default()).unwrap(),
        );
        // ...and by name, as the adapter's weights_filename gives it.
        let file = model_state_dict_in(dir.path(), Some("clip_weights.pth")).unwrap();
        assert_eq!(file, dir.path().join("clip_weights.pth"));
        let err = model_state_dict_in(dir.path(), Some("best.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no best.pt"), "{err}");
        // Two candidates and no best.pt: ambiguous, and the error says how to choose.
        save_model_state_dict(&tiny(5), &dir.path().join("other.pt")).unwrap();
        let err = detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("neither"), "{err}");
        let err = model_state_dict_in(dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("clip_weights.pth, other.pt"), "{err}");
        assert!(err.contains("weights_filename"), "{err}");
        // best.pt wins over the others, as in the adapter.
        save_model_state_dict(&clip, &dir.path().join(ADAPTER_WEIGHTS)).unwrap();
        assert_eq!(
            model_state_dict_in(dir.path(), None).unwrap(),
            dir.path().join(ADAPTER_WEIGHTS)
        );
    }

    #[test]
    fn a_plain_state_dict_archive_is_not_taken_for_an_adapter_file() {
        let dir = tempfile::tempdir().unwrap();
        let clip = tiny(6);
        let named: Vec<(String, Tensor)> = clip.var_store().variables().into_iter().collect();
        let path = dir.path().join("state.pt");
        let mut bytes = Vec::new();
        crate::torch_save::save(None, &named, "state", &mut bytes).unwrap();
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(detect(&path).unwrap(), Format::StateDict);
        assert_same_weights(
            &clip,
            &load(&path, Device::Cpu, &LoadOptions::default()).unwrap(),
        );
        let err = detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains(ADAPTER_WEIGHTS), "{err}");
    }
}
