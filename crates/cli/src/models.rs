//! `cliptune models ...`

use crate::{output, Ctx};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use cliptune_clip::{checkpoint, Activation, Clip, ClipConfig, LoadOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Print the architecture of a checkpoint.
    ///
    /// Example: cliptune models inspect ./clip-vit-base-patch32 --json
    Inspect {
        /// Native or Hugging Face directory, OpenAI/open_clip state dict (.safetensors/.pt/.bin) or JIT archive.
        path: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Copy a checkpoint into the model registry (native format) and print its id.
    ///
    /// Example: cliptune models import ViT-B-32.pt --name openai-b32
    Import {
        path: PathBuf,
        /// Registry name (default: the file or directory name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Create a randomly initialised model (for training from scratch).
    ///
    /// Example: cliptune models create --preset ViT-B/32 --name scratch-b32 --seed 0
    Create {
        /// One of ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px.
        #[arg(long, conflicts_with = "arch", required_unless_present = "arch")]
        preset: Option<String>,
        /// Architecture JSON: open_clip model config, Hugging Face config.json, or cliptune's.
        #[arg(long)]
        arch: Option<PathBuf>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(Args, Clone, Default)]
pub struct LoadArgs {
    /// Activation for state dicts and JIT archives, which do not record it (default quick_gelu, as OpenAI's loader).
    #[arg(long, value_parser = ["quick_gelu", "gelu"])]
    activation: Option<String>,
}

impl LoadArgs {
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            activation: self.activation.as_deref().map(|a| {
                if a == "gelu" {
                    Activation::Gelu
                } else {
                    Activation::QuickGelu
                }
            }),
            config: None,
        }
    }
}

/// A registry entry, stored as `meta.json` beside the native checkpoint.
#[derive(Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub name: String,
    pub source: String,
    pub config: ClipConfig,
}

pub fn run(ctx: &Ctx, cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::Inspect { path, load } => {
            let found = checkpoint::inspect(&path, &load.options())?;
            output::print(ctx, &found, |i| {
                let (v, t) = (&i.config.vision, &i.config.text);
                format!(
                    "format {:?}, embed_dim {}, activation {:?}\nvision: width {} layers {} heads {} patch {} image {}\ntext:   width {} layers {} heads {} context {} vocab {}",
                    i.format, i.config.embed_dim, i.config.activation, v.width, v.layers, v.heads, v.patch_size,
                    v.image_size, t.width, t.layers, t.heads, t.context_length, t.vocab_size
                )
            });
        }
        ModelsCommand::Import { path, name, load } => {
            let clip = checkpoint::load(&path, tch::Device::Cpu, &load.options())?;
            let name = name.unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            });
            let entry = register(ctx, &clip, &name, &path.display().to_string())?;
            output::print(ctx, &entry, |e| e.id.clone());
        }
        ModelsCommand::Create {
            preset,
            arch,
            name,
            seed,
        } => {
            let config = match (preset, arch) {
                (Some(p), _) => ClipConfig::preset(&p)?,
                (None, Some(file)) => {
                    let text = std::fs::read(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let value = serde_json::from_slice(&text)
                        .with_context(|| format!("{} is not JSON", file.display()))?;
                    ClipConfig::from_json(&value).with_context(|| format!("{}", file.display()))?
                }
                (None, None) => bail!("give --preset or --arch"),
            };
            let clip = Clip::new(&config, tch::Device::Cpu, seed)?;
            let entry = register(ctx, &clip, &name, "random init")?;
            output::print(ctx, &entry, |e| e.id.clone());
        }
    }
    Ok(())
}

fn registry(ctx: &Ctx) -> PathBuf {
    ctx.home.join("models")
}

/// Stores `clip` under a new id in the registry directory.
fn register(ctx: &Ctx, clip: &Clip, name: &str, source: &str) -> Result<ModelEntry> {
    let id = new_id();
    let dir = registry(ctx).join(&id);
    checkpoint::save(clip, &dir)?;
    let entry = ModelEntry {
        id,
        name: name.into(),
        source: source.into(),
        config: clip.config().clone(),
    };
    checkpoint::write_atomic(&dir.join("meta.json"), &serde_json::to_vec_pretty(&entry)?)?;
    Ok(entry)
}

/// Resolves a model given by registry id, registry name, or checkpoint path.
pub fn resolve(ctx: &Ctx, model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let dir = registry(ctx);
    if dir.join(model).join(checkpoint::NATIVE_CONFIG).is_file() {
        return Ok(dir.join(model));
    }
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let meta = entry.path().join("meta.json");
        if let Ok(bytes) = std::fs::read(&meta) {
            if serde_json::from_slice::<ModelEntry>(&bytes).is_ok_and(|m| m.name == model) {
                return Ok(entry.path());
            }
        }
    }
    bail!(
        "no model {model:?}: not a path, nor an id or name in {} (see `cliptune models import`)",
        dir.display()
    )
}

/// A 24-hex-digit id, like Dataloop's.
fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:024x}", nanos ^ (u128::from(std::process::id()) << 64))
        .chars()
        .rev()
        .take(24)
        .collect()
}
