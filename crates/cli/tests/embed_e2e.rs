//! End to end: real images and texts through cliptune-prep and the model, against the
//! embeddings transformers' CLIPModel gives for the same checkpoint after open_clip's
//! tokenizer and PIL + torchvision preprocessing (`scripts/reference/prep_reference.py e2e`).

use cliptune_clip::tch::{Device, Tensor};
use cliptune_clip::{checkpoint, LoadOptions};
use cliptune_prep::{Preprocessor, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference() -> Value {
    let path = root().join("tests/fixtures/prep/e2e.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let dim = *t.size().last().unwrap() as usize;
    let flat: Vec<f32> = Vec::try_from(t.contiguous().view([-1])).unwrap();
    flat.chunks(dim).map(<[f32]>::to_vec).collect()
}

/// The same folding the reference script applies: hf-tiny's vocabulary has 1,000 tokens.
fn fold(id: i64) -> i64 {
    match id {
        0 => 0,
        49406 => 998,
        49407 => 999,
        i => 1 + i % 997,
    }
}

#[test]
fn texts_and_images_match_transformers() {
    let doc = reference();
    let ckpt = root().join("tests/fixtures/clip/hf-tiny");
    let clip = checkpoint::load(&ckpt, Device::Cpu, &LoadOptions::default()).unwrap();
    let config = clip.config();

    let texts: Vec<String> = doc["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().into())
        .collect();
    let ctx = config.text.context_length as usize;
    let ids: Vec<i64> = Tokenizer::shared()
        .tokenize_batch(&texts, ctx)
        .into_iter()
        .map(fold)
        .collect();
    let ids = Tensor::from_slice(&ids).view([texts.len() as i64, ctx as i64]);
    let got = rows(&clip.text_features(&ids, false).unwrap());
    for (i, (g, w)) in got.iter().zip(matrix(&doc["text_features"])).enumerate() {
        let c = cosine(g, &w);
        assert!(c >= 0.9999, "text {i} {:?}: cosine {c}", texts[i]);
    }

    let s = doc["image_size"].as_u64().unwrap();
    assert_eq!(s as i64, config.vision.image_size);
    let paths: Vec<PathBuf> = doc["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| root().join("tests/fixtures/prep").join(p.as_str().unwrap()))
        .collect();
    let pixels = Preprocessor::new(s as u32)
        .batch_from_paths(&paths)
        .unwrap();
    let pixels = Tensor::from_slice(&pixels).view([paths.len() as i64, 3, s as i64, s as i64]);
    let got = rows(&clip.image_features(&pixels, false).unwrap());
    for (i, (g, w)) in got.iter().zip(matrix(&doc["image_features"])).enumerate() {
        let c = cosine(g, &w);
        assert!(c >= 0.9999, "image {}: cosine {c}", paths[i].display());
    }
}

#[test]
fn embed_command_prints_normalized_image_embeddings_in_order() {
    let doc = reference();
    let want = matrix(&doc["image_features"]);
    let images: Vec<String> = doc["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            root()
                .join("tests/fixtures/prep")
                .join(p.as_str().unwrap())
                .display()
                .to_string()
        })
        .collect();
    // Reverse the order to check that output follows input order.
    let order: Vec<usize> = (0..3).rev().collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cliptune"));
    cmd.args(["embed", "--json", "--model"])
        .arg(root().join("tests/fixtures/clip/hf-tiny"));
    for &i in &order {
        cmd.args(["--image", &images[i]]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["text"].as_array().unwrap().len(), 0);
    let got = matrix(&printed["image"]);
    assert_eq!(got.len(), order.len());
    for (g, &i) in got.iter().zip(&order) {
        let norm: f64 = g.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not L2-normalised: {norm}");
        assert!(cosine(g, &want[i]) >= 0.9999);
    }

    // --raw keeps the projection's scale.
    let out = Command::new(env!("CARGO_BIN_EXE_cliptune"))
        .args(["embed", "--json", "--raw", "--model"])
        .arg(root().join("tests/fixtures/clip/hf-tiny"))
        .args(["--image", &images[0]])
        .output()
        .unwrap();
    assert!(out.status.success());
    let raw = matrix(&serde_json::from_slice::<Value>(&out.stdout).unwrap()["image"]);
    for (g, w) in raw[0].iter().zip(&want[0]) {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{g} vs {w}");
    }
}

#[test]
fn embed_refuses_texts_for_a_model_with_a_small_vocabulary() {
    let out = Command::new(env!("CARGO_BIN_EXE_cliptune"))
        .args(["embed", "--json", "--model"])
        .arg(root().join("tests/fixtures/clip/hf-tiny"))
        .args(["--text", "a cat"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("vocabulary of 1000 tokens"), "{err}");
}
