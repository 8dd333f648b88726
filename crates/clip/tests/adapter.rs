//! Checkpoints of Dataloop's CLIP adapter (`best.pt` = `{"model_state_dict": ...}`), made
//! by scripts/reference/adapter_reference.py with torch, open_clip and OpenAI's `clip`.

use cliptune_clip::{checkpoint, resolve_base_model, Clip, Format, LoadOptions};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("adapter/best.ref.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Minimum row cosine and maximum absolute difference.
fn compare(ours: &Tensor, theirs: &Tensor) -> (f64, f64) {
    assert_eq!(ours.size(), theirs.size());
    let cos = Tensor::cosine_similarity(ours, theirs, -1, 1e-12)
        .min()
        .double_value(&[]);
    let diff = (ours - theirs).abs().max().double_value(&[]);
    (cos, diff)
}

fn assert_matches_reference(clip: &Clip) {
    let r = reference();
    let image = clip.image_features(&r["pixels"], false).unwrap();
    let text = clip.text_features(&r["ids"], false).unwrap();
    let logits = tch::no_grad(|| clip.logits(&image, &text));
    for (what, ours, theirs) in [
        ("image", &image, &r["image_features"]),
        ("text", &text, &r["text_features"]),
        ("logits", &logits, &r["logits_per_image"]),
    ] {
        let (cos, diff) = compare(ours, theirs);
        println!("{what}: min cosine {cos:.8}, max abs diff {diff:.2e}");
        assert!(
            cos >= 0.99999 && diff <= 1e-5,
            "{what}: cosine {cos}, max diff {diff}"
        );
        assert!(
            theirs.abs().max().double_value(&[]) > 0.1,
            "{what} near zero"
        );
    }
}

#[test]
fn python_best_pt_loads_with_open_clip_outputs() {
    let path = fixtures().join("adapter/best.pt");
    assert_eq!(checkpoint::detect(&path).unwrap(), Format::ModelStateDict);
    let clip = checkpoint::load(&path, Device::Cpu, &LoadOptions::default()).unwrap();
    assert_eq!(clip.kind(), tch::Kind::Float, "fp16 mix loads into f32");
    assert_matches_reference(&clip);
}

#[test]
fn a_folder_with_only_the_python_best_pt_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("adapter/best.pt"),
        dir.path().join("best.pt"),
    )
    .unwrap();
    assert_eq!(
        checkpoint::detect(dir.path()).unwrap(),
        Format::ModelStateDict
    );
    let clip = checkpoint::load(dir.path(), Device::Cpu, &LoadOptions::default()).unwrap();
    assert_matches_reference(&clip);
}

#[test]
fn written_by_cliptune_read_back_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let python = checkpoint::load(
        &fixtures().join("adapter/best.pt"),
        Device::Cpu,
        &LoadOptions::default(),
    )
    .unwrap();
    let path = dir.path().join("weights.pt");
    checkpoint::save_model_state_dict(&python, &path).unwrap();
    let back = checkpoint::load(&path, Device::Cpu, &LoadOptions::default()).unwrap();
    let (a, b) = (python.var_store().variables(), back.var_store().variables());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} differs");
    }
    assert_matches_reference(&back);
}

#[test]
fn base_model_resolved_by_name_loads() {
    // An OpenAI JIT archive laid out under OpenAI's file name, as a runner image would
    // ship ViT-B-32.pt.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("clip/openai-tiny-jit.pt"),
        dir.path().join("ViT-B-32.pt"),
    )
    .unwrap();
    let path = resolve_base_model(dir.path(), "ViT-B/32").unwrap();
    assert_eq!(checkpoint::detect(&path).unwrap(), Format::Jit);
    checkpoint::load(&path, Device::Cpu, &LoadOptions::default()).unwrap();
    let err = resolve_base_model(dir.path(), "ViT-B/16")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ViT-B-16.pt"), "{err}");
}
