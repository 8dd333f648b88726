//! Base models without artifacts, resolved by name from a weights directory.
//!
//! Dataloop's marketplace CLIP model (`openai-clip`) carries no files: its adapter calls
//! `clip.load(model_name)`, which reads OpenAI's checkpoint for that name from the runner
//! image (or downloads it). cliptune reads the same checkpoints from a directory the
//! deployment provides, laid out by OpenAI's file names (`ViT-B-32.pt`, ...).

use crate::{ClipError, Result};
use std::path::{Path, PathBuf};

/// The adapter's default `model_name`.
pub const DEFAULT_MODEL_NAME: &str = "ViT-B/32";

/// OpenAI's model names (`clip.available_models()`) with the file names of their
/// checkpoints (the last part of OpenAI's download URLs, and the names `clip.load`
/// caches them under). cliptune implements the ViT ones.
pub const OPENAI_MODELS: &[(&str, &str)] = &[
    ("ViT-B/32", "ViT-B-32.pt"),
    ("ViT-B/16", "ViT-B-16.pt"),
    ("ViT-L/14", "ViT-L-14.pt"),
    ("ViT-L/14@336px", "ViT-L-14-336px.pt"),
];

/// ResNet models of `clip.available_models()`, which cliptune does not implement.
const RESNETS: &[&str] = &["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"];

/// The checkpoint of the base model `model_name` (`ViT-B/32`, `ViT-B/16`, `ViT-L/14`,
/// `ViT-L/14@336px`, as in the adapter's `model_name` configuration; the file-style
/// spellings `ViT-B-32` and `ViT-L-14-336px` are accepted too) inside `weights_dir`.
///
/// Looked for, in order: `<stem>.pt` (OpenAI's JIT archive, as `clip.load` downloads
/// it), `<stem>.safetensors`, `<stem>.bin` (state dicts) and a directory `<stem>/` in any
/// format [`crate::checkpoint::load`] reads, where `<stem>` is `ViT-B-32` for
/// `ViT-B/32`. The error names the directory and every path tried.
pub fn resolve_base_model(weights_dir: &Path, model_name: &str) -> Result<PathBuf> {
    let name = model_name.trim();
    let Some((canonical, file)) = OPENAI_MODELS
        .iter()
        .find(|(n, f)| *n == name || f.trim_end_matches(".pt") == name)
    else {
        let known: Vec<&str> = OPENAI_MODELS.iter().map(|(n, _)| *n).collect();
        let why = if RESNETS.contains(&name) {
            "is a ResNet CLIP, which cliptune does not implement (ViT models only)"
        } else {
            "is not one of OpenAI's CLIP models"
        };
        return Err(ClipError::Config(format!(
            "model_name {name:?} {why}; use one of {}",
            known.join(", ")
        )));
    };
    let stem = file.trim_end_matches(".pt");
    let candidates = [
        weights_dir.join(file),
        weights_dir.join(format!("{stem}.safetensors")),
        weights_dir.join(format!("{stem}.bin")),
        weights_dir.join(stem),
    ];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Ok(found.clone());
    }
    let why = if weights_dir.is_dir() {
        "holds none of"
    } else {
        "does not exist; expected in it one of"
    };
    let tried: Vec<String> = candidates
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if p == &candidates[3] {
                format!("{name}/")
            } else {
                name.into_owned()
            }
        })
        .collect();
    Err(ClipError::format(
        weights_dir,
        format!(
            "no weights for base model {canonical}: the weights directory {why} {} \
             (OpenAI's checkpoint for {canonical} is {file})",
            tried.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_openai_file_names_and_spellings() {
        let dir = tempfile::tempdir().unwrap();
        for (_, file) in OPENAI_MODELS {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        for (name, file) in [
            ("ViT-B/32", "ViT-B-32.pt"),
            ("ViT-B/16", "ViT-B-16.pt"),
            ("ViT-L/14", "ViT-L-14.pt"),
            ("ViT-L/14@336px", "ViT-L-14-336px.pt"),
            ("ViT-B-32", "ViT-B-32.pt"),
            (" ViT-L-14-336px ", "ViT-L-14-336px.pt"),
        ] {
            assert_eq!(
                resolve_base_model(dir.path(), name).unwrap(),
                dir.path().join(file),
                "{name}"
            );
        }
    }

    #[test]
    fn other_layouts_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ViT-B-16")).unwrap();
        let got = resolve_base_model(dir.path(), "ViT-B/16").unwrap();
        assert_eq!(got, dir.path().join("ViT-B-16"));
        std::fs::write(dir.path().join("ViT-B-16.safetensors"), b"x").unwrap();
        let got = resolve_base_model(dir.path(), "ViT-B/16").unwrap();
        assert_eq!(got, dir.path().join("ViT-B-16.safetensors"));
        std::fs::write(dir.path().join("ViT-B-16.pt"), b"x").unwrap();
        let got = resolve_base_model(dir.path(), "ViT-B/16").unwrap();
        assert_eq!(got, dir.path().join("ViT-B-16.pt"));
    }

    #[test]
    fn missing_weights_name_the_files_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ViT-B-16.pt"), b"x").unwrap();
        let err = resolve_base_model(dir.path(), "ViT-B/32")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("ViT-B-32.pt"), "{err}");
        assert!(err.contains("ViT-B-32/"), "{err}");
        assert!(err.contains("holds none of"), "{err}");
        let gone = dir.path().join("nowhere");
        let err = resolve_base_model(&gone, "ViT-L/14@336px")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nowhere"), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("ViT-L-14-336px.pt"), "{err}");
    }

    #[test]
    fn unknown_and_resnet_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_base_model(dir.path(), "RN50")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ResNet"), "{err}");
        assert!(err.contains("ViT-B/32"), "{err}");
        // Only known names: a model_name can never point outside the directory.
        let err = resolve_base_model(dir.path(), "../ViT-B-32")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not one of OpenAI's CLIP models"), "{err}");
    }
}
