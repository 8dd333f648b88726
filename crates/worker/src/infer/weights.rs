//! The one weights cache: a model's artifacts as a local native checkpoint directory,
//! `<work>/models/<id>/`, downloaded once per model and shared by the worker's nodes,
//! online requests and the CLI (whose work directory is its home). The marker
//! `<work>/models/<id>.artifacts.json` beside the folder lists the artifacts it holds: a
//! model whose artifacts changed is downloaded again. The marker stays outside the folder so
//! that re-registering a cached checkpoint never uploads it as an artifact.

use crate::error::{Result, WorkerError};
use cliptune_store::{Model, Platform};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The local checkpoint of `model`: its cached artifacts, or for a model without artifacts
/// the named OpenAI checkpoint in `weights_dir` ([`named`]).
pub async fn local(
    platform: &dyn Platform,
    work_dir: &Path,
    weights_dir: Option<&Path>,
    model: &Model,
) -> Result<PathBuf> {
    if model.artifacts.is_empty() {
        return named(weights_dir, model).map_err(|m| WorkerError::input("model", m));
    }
    // One download at a time in this process: concurrent requests for the same model share
    // the result. Another process racing on the same cache is handled at the rename.
    static DOWNLOADS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = DOWNLOADS.lock().await;
    let root = work_dir.join("models");
    let dir = root.join(&model.id);
    let marker = root.join(format!("{}.artifacts.json", model.id));
    let expected = serde_json::to_vec(&model.artifacts).expect("artifacts serialize");
    let fresh = || std::fs::read(&marker).is_ok_and(|m| m == expected) && dir.is_dir();
    if fresh() {
        return Ok(dir);
    }
    let tmp = root.join(format!(".{}.{}.tmp", model.id, std::process::id()));
    let io = |p: &Path, e: std::io::Error| WorkerError::Internal(format!("{}: {e}", p.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    platform.download_artifacts(&model.id, &tmp).await?;
    if let Err(e) = cliptune_clip::checkpoint::detect(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(WorkerError::input(
            "model",
            format!(
                "the artifacts of model {} are not a checkpoint: {e}",
                model.id
            ),
        ));
    }
    let _ = std::fs::remove_file(&marker);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have finished the same download first.
        std::thread::sleep(std::time::Duration::from_millis(200));
        return match fresh() {
            true => Ok(dir),
            false => Err(io(&dir, e)),
        };
    }
    std::fs::write(&marker, &expected).map_err(|e| io(&marker, e))?;
    Ok(dir)
}

/// The checkpoint of a model that carries no artifacts: Dataloop's marketplace CLIP models
/// name their weights by the configuration's `model_name` (`ViT-B/32`), which its adapter
/// loads from the runner image; cliptune reads them from `--weights-dir`. The error says
/// which file it needs where.
pub fn named(weights_dir: Option<&Path>, model: &Model) -> std::result::Result<PathBuf, String> {
    let Some(name) = model
        .configuration
        .get("model_name")
        .and_then(Value::as_str)
    else {
        return Err(format!(
            "model {} ({}) has no weights yet (status {}): no artifacts, and no `model_name` \
             in its configuration to find them by",
            model.name,
            model.id,
            model.status.as_str()
        ));
    };
    let Some(dir) = weights_dir else {
        let file = cliptune_clip::weights::OPENAI_MODELS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("OpenAI's checkpoint file", |(_, f)| f);
        return Err(format!(
            "model {} ({}) has no artifacts: its weights are OpenAI's {name:?} checkpoint, \
             looked up in CLIPTUNE_WEIGHTS_DIR (--weights-dir), which is not set; point it at \
             a directory holding {file}",
            model.name, model.id,
        ));
    };
    cliptune_clip::resolve_base_model(dir, name)
        .map_err(|e| format!("model {} ({}) has no artifacts: {e}", model.name, model.id))
}
