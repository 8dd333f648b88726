//! `cliptune models ...`

use crate::datasets::{block_on, open_store};
use crate::{output, Ctx};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use cliptune_clip::{checkpoint, Activation, Clip, ClipConfig, LoadOptions};
use cliptune_store::prelude::*;
use cliptune_store::{LocalStore, MetricSample, Model, ModelStatus, NewModel, StoreError};
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
    /// Register a checkpoint as a model in the store (converted to cliptune's native format,
    /// uploaded as the model's artifacts) and print its id. A taken name gets `_v1`, `_v2`...
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
        /// Write the checkpoint folder (cliptune's native format) to this directory instead
        /// of registering it in the store (e.g. to seed another platform or a weights dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the models in the store.
    ///
    /// Example: cliptune models list --json
    List,
    /// Show one model (by id or name): status, configuration, artifacts, metrics.
    ///
    /// Example: cliptune models show openai-b32
    Show {
        /// Model id or name.
        model: String,
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

/// What `models import/create` and the trainer print about a registered model.
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
            out,
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
            if let Some(dir) = out {
                cliptune_clip::checkpoint::save(&clip, &dir)
                    .with_context(|| format!("writing {}", dir.display()))?;
                let written = serde_json::json!({"name": name, "path": dir.display().to_string()});
                output::print(ctx, &written, |w| {
                    w["path"].as_str().unwrap_or_default().into()
                });
                return Ok(());
            }
            let entry = register(ctx, &clip, &name, "random init")?;
            output::print(ctx, &entry, |e| e.id.clone());
        }
        ModelsCommand::List => {
            let store = open_store(ctx)?;
            let models = block_on(store.list_models())?;
            output::print(ctx, &models, |ms| {
                if ms.is_empty() {
                    return "no models (see `cliptune models import --help`)".into();
                }
                ms.iter()
                    .map(|m| format!("{}  {:<11} {}", m.id, m.status.as_str(), m.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        ModelsCommand::Show { model } => {
            let store = open_store(ctx)?;
            let view = block_on(async {
                let model = store.resolve_model(&model).await?;
                let metrics = store.list_metrics(&model.id).await?;
                anyhow::Ok(ModelView { model, metrics })
            })?;
            output::print(ctx, &view, |v| {
                let m = &v.model;
                let size: u64 = m.artifacts.iter().map(|a| a.size).sum();
                format!(
                    "{} ({})\nstatus: {}\nbase model: {}\nconfiguration: {}\nartifacts: {} files, {} bytes\nmetric samples: {}",
                    m.name,
                    m.id,
                    m.status.as_str(),
                    m.base_model_id.as_deref().unwrap_or("-"),
                    serde_json::Value::Object(m.configuration.clone()),
                    m.artifacts.len(),
                    size,
                    v.metrics.len()
                )
            });
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct ModelView {
    #[serde(flatten)]
    model: Model,
    metrics: Vec<MetricSample>,
}

/// The model entity's configuration for a checkpoint: what the template's trainer reads
/// (`embeddings_size`) plus cliptune's architecture.
fn configuration(config: &ClipConfig) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut c = serde_json::Map::new();
    c.insert("embeddings_size".into(), config.embed_dim.into());
    c.insert("architecture".into(), serde_json::to_value(config)?);
    Ok(c)
}

/// Creates a model entity named `name` (or `name_v1`, `name_v2`... when taken).
async fn create_unique(store: &LocalStore, mut model: NewModel) -> Result<Model> {
    let wanted = model.name.clone();
    for n in 0..1000 {
        if n > 0 {
            model.name = format!("{wanted}_v{n}");
        }
        match store.create_model(model.clone()).await {
            Err(StoreError::Conflict(_)) => continue,
            other => return Ok(other?),
        }
    }
    bail!("model names {wanted:?} to {wanted}_v999 are all taken")
}

/// Registers the native checkpoint folder `dir` as a new model with status `status`.
fn register_dir(
    ctx: &Ctx,
    dir: &Path,
    name: &str,
    source: &str,
    status: ModelStatus,
    base: Option<&str>,
    config: &ClipConfig,
) -> Result<ModelEntry> {
    let store = open_store(ctx)?;
    let configuration = configuration(config)?;
    let model = block_on(async {
        // A base that is a store model is recorded as such (and its configuration kept).
        let base_model = match base {
            Some(b) if !Path::new(b).exists() => store.resolve_model(b).await.ok(),
            _ => None,
        };
        let mut conf = base_model
            .as_ref()
            .map(|b| b.configuration.clone())
            .unwrap_or_default();
        conf.extend(configuration);
        let mut metadata = serde_json::json!({"cliptune": {"source": source}});
        if let Some(b) = &base_model {
            metadata["cliptune"]["baseModelId"] = b.id.clone().into();
        }
        let created = create_unique(
            &store,
            NewModel {
                name: name.to_string(),
                status: ModelStatus::Created,
                configuration: conf,
                dataset_id: None,
                description: Some(source.to_string()),
                metadata,
            },
        )
        .await?;
        // The train node's path: the status moves on only once the artifacts are stored.
        anyhow::Ok(cliptune_worker::store_weights(&store, &created.id, dir, status, |_| {}).await?)
    })?;
    Ok(ModelEntry {
        id: model.id,
        name: model.name,
        source: source.into(),
        config: config.clone(),
    })
}

/// Stores `clip` as a new model (native checkpoint uploaded as its artifacts).
fn register(ctx: &Ctx, clip: &Clip, name: &str, source: &str) -> Result<ModelEntry> {
    let tmp = scratch_dir(ctx, "register")?;
    let result = checkpoint::save(clip, &tmp)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            register_dir(
                ctx,
                &tmp,
                name,
                source,
                ModelStatus::PreTrained,
                None,
                clip.config(),
            )
        });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Registers a trained native checkpoint directory (weights, config, and the run's report
/// files) as a new `trained` model derived from `base`.
pub fn register_trained(ctx: &Ctx, dir: &Path, name: &str, base: &str) -> Result<ModelEntry> {
    let config = checkpoint::inspect(dir, &LoadOptions::default())?.config;
    register_dir(
        ctx,
        dir,
        name,
        &format!("fine-tuned from {base}"),
        ModelStatus::Trained,
        Some(base),
        &config,
    )
}

fn scratch_dir(ctx: &Ctx, what: &str) -> Result<PathBuf> {
    let dir = ctx
        .home
        .join("tmp")
        .join(format!("{what}-{}", cliptune_store::new_id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Resolves a model given by checkpoint path, store id or store name. For a store model, its
/// artifacts are downloaded once into `<home>/models/<id>` (the worker's weights cache) and
/// that folder is returned.
pub fn resolve(ctx: &Ctx, model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let store = open_store(ctx)?;
    let found = block_on(store.resolve_model(model));
    let m = match found {
        Ok(m) => m,
        Err(StoreError::NotFound { .. }) => bail!(
            "no model {model:?}: not a path, nor a model id or name in {} (see `cliptune models list`)",
            ctx.home.display()
        ),
        Err(e) => return Err(e.into()),
    };
    if m.artifacts.is_empty() {
        bail!(
            "model {} ({}) has no stored artifacts (status {})",
            m.name,
            m.id,
            m.status.as_str()
        );
    }
    // The worker's cache (its work directory is this home): a model downloaded by a
    // `serve` or an `embed-dataset` is not downloaded again here, nor the other way round.
    block_on(cliptune_worker::local_weights(&store, &ctx.home, None, &m))
        .with_context(|| format!("downloading the artifacts of model {}", m.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Clip {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/clip/hf-tiny/config.json");
        let value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
        Clip::new(
            &ClipConfig::from_json(&value).unwrap(),
            tch::Device::Cpu,
            Some(0),
        )
        .unwrap()
    }

    #[test]
    fn registered_models_live_in_the_store_and_resolve_to_their_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx {
            home: dir.path().join("home"),
            json: true,
        };
        let clip = tiny();
        let base = register(&ctx, &clip, "tiny", "test").unwrap();
        let again = register(&ctx, &clip, "tiny", "test").unwrap();
        assert_eq!(again.name, "tiny_v1", "a taken name gets a suffix");

        let by_name = resolve(&ctx, "tiny").unwrap();
        let by_id = resolve(&ctx, &base.id).unwrap();
        assert_eq!(by_name, by_id);
        assert_eq!(by_id, ctx.home.join("models").join(&base.id));
        let loaded = checkpoint::load(&by_id, tch::Device::Cpu, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.config(), clip.config());
        // Cached: a second resolve keeps the same files.
        let stamp = std::fs::metadata(by_id.join(checkpoint::NATIVE_WEIGHTS))
            .unwrap()
            .modified()
            .unwrap();
        resolve(&ctx, &base.id).unwrap();
        let stamp2 = std::fs::metadata(by_id.join(checkpoint::NATIVE_WEIGHTS))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(stamp, stamp2);
        // A path resolves to itself.
        assert_eq!(resolve(&ctx, by_id.to_str().unwrap()).unwrap(), by_id);
        let err = resolve(&ctx, "no-such-model").unwrap_err().to_string();
        assert!(err.contains("no-such-model"), "{err}");

        let trained = register_trained(&ctx, &by_id, "tiny-ft", "tiny").unwrap();
        let store = open_store(&ctx).unwrap();
        let m = block_on(store.get_model(&trained.id)).unwrap();
        assert_eq!(m.status, ModelStatus::Trained);
        assert_eq!(m.artifacts.len(), 2);
        assert_eq!(
            m.metadata["cliptune"]["baseModelId"],
            serde_json::json!(base.id)
        );
        assert_eq!(
            m.configuration["embeddings_size"],
            serde_json::json!(clip.config().embed_dim)
        );
    }
}
