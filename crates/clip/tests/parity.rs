//! Parity with the reference implementations: tiny checkpoints and outputs made by
//! scripts/reference/clip_reference.py with transformers and open_clip.

use cliptune_clip::{checkpoint, Activation, Clip, ClipConfig, ClipError, Format, LoadOptions};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip")
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(format!("{name}.ref.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Runs the reference inputs through `clip` and checks every output to 1e-5.
fn assert_matches(clip: &Clip, reference_name: &str) {
    let r = reference(reference_name);
    let image = clip.image_features(&r["pixels"], false).unwrap();
    let text = clip.text_features(&r["ids"], false).unwrap();
    let logits = tch::no_grad(|| clip.logits(&image, &text));
    for (what, ours, theirs) in [
        ("image features", &image, &r["image_features"]),
        ("text features", &text, &r["text_features"]),
        ("logits", &logits, &r["logits_per_image"]),
    ] {
        let d = max_diff(ours, theirs);
        assert!(d <= 1e-5, "{reference_name}: {what} differ by {d}");
        // A wrong model would not be close by accident: the outputs are far from zero.
        assert!(theirs.abs().max().double_value(&[]) > 0.1);
    }
}

fn load(path: &Path, options: &LoadOptions) -> Clip {
    checkpoint::load(path, Device::Cpu, options)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn hugging_face_directory() {
    let path = fixtures().join("hf-tiny");
    assert_eq!(checkpoint::detect(&path).unwrap(), Format::HuggingFace);
    assert_matches(&load(&path, &LoadOptions::default()), "hf-tiny");
}

#[test]
fn openai_state_dict_safetensors_fp16() {
    let path = fixtures().join("openai-tiny.safetensors");
    assert_eq!(checkpoint::detect(&path).unwrap(), Format::StateDict);
    let clip = load(&path, &LoadOptions::default());
    assert_eq!(
        clip.kind(),
        tch::Kind::Float,
        "fp16 checkpoints load into f32 weights"
    );
    assert_matches(&clip, "openai-tiny");
}

#[test]
fn openai_state_dict_torch_save() {
    let path = fixtures().join("openai-tiny.pt");
    assert_eq!(checkpoint::detect(&path).unwrap(), Format::StateDict);
    assert_matches(&load(&path, &LoadOptions::default()), "openai-tiny");
}

#[test]
fn openai_jit_archive() {
    let path = fixtures().join("openai-tiny-jit.pt");
    assert_eq!(checkpoint::detect(&path).unwrap(), Format::Jit);
    assert_matches(&load(&path, &LoadOptions::default()), "openai-tiny");
}

#[test]
fn open_clip_gelu_variant() {
    let path = fixtures().join("openai-tiny.safetensors");
    let options = LoadOptions {
        activation: Some(Activation::Gelu),
        config: None,
    };
    assert_matches(&load(&path, &options), "openai-tiny-gelu");
}

#[test]
fn native_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let clip = load(&fixtures().join("hf-tiny"), &LoadOptions::default());
    checkpoint::save(&clip, dir.path()).unwrap();
    assert_eq!(checkpoint::detect(dir.path()).unwrap(), Format::Native);
    let back = load(dir.path(), &LoadOptions::default());
    assert_eq!(back.config(), clip.config());
    assert_matches(&back, "hf-tiny");
}

#[test]
fn inspect_reports_fixture_architectures() {
    let hf = checkpoint::inspect(&fixtures().join("hf-tiny"), &LoadOptions::default())
        .unwrap()
        .config;
    assert_eq!(
        (
            hf.embed_dim,
            hf.vision.width,
            hf.vision.heads,
            hf.vision.patch_size
        ),
        (24, 48, 3, 8)
    );
    assert_eq!(
        (
            hf.text.width,
            hf.text.heads,
            hf.text.layers,
            hf.text.vocab_size
        ),
        (32, 4, 2, 1000)
    );
    assert_eq!(hf.text.eos_token_id, Some(999));
    for file in [
        "openai-tiny.safetensors",
        "openai-tiny.pt",
        "openai-tiny-jit.pt",
    ] {
        let c = checkpoint::inspect(&fixtures().join(file), &LoadOptions::default())
            .unwrap()
            .config;
        assert_eq!(
            (
                c.embed_dim,
                c.vision.width,
                c.vision.layers,
                c.vision.image_size
            ),
            (32, 64, 2, 32),
            "{file}"
        );
        assert_eq!(
            (
                c.text.width,
                c.text.layers,
                c.text.context_length,
                c.text.vocab_size
            ),
            (64, 3, 77, 500),
            "{file}"
        );
        assert_eq!(c.activation, Activation::QuickGelu);
    }
}

/// Architectures never seen before: random sizes, written as OpenAI-named safetensors
/// (the native weights file) and read back from shapes alone.
#[test]
fn inspect_infers_unseen_architectures() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (64, 1, 4, 16, 128, 3, 40, 300, 16),
        (128, 3, 16, 48, 64, 2, 77, 777, 48),
        (192, 2, 7, 21, 128, 1, 9, 50, 8),
    ];
    for (vw, vl, patch, image, tw, tl, ctx, vocab, embed) in cases {
        let mut config = ClipConfig::preset("ViT-B/32").unwrap();
        config.embed_dim = embed;
        config.vision = cliptune_clip::VisionConfig {
            width: vw,
            layers: vl,
            heads: vw / 64,
            patch_size: patch,
            image_size: image,
            mlp_dim: 4 * vw,
        };
        config.text = cliptune_clip::TextConfig {
            width: tw,
            layers: tl,
            heads: tw / 64,
            context_length: ctx,
            vocab_size: vocab,
            mlp_dim: 4 * tw,
            eos_token_id: None,
        };
        let clip = Clip::new(&config, Device::Cpu, Some(1)).unwrap();
        checkpoint::save(&clip, dir.path()).unwrap();
        let found = checkpoint::inspect(
            &dir.path().join("model.safetensors"),
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(found.format, Format::StateDict);
        assert_eq!(found.config, config);
    }
}

#[test]
fn mismatched_checkpoint_names_every_problem_and_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = Tensor::read_safetensors(fixtures().join("openai-tiny.safetensors")).unwrap();
    tensors.retain(|(k, _)| k != "visual.ln_post.bias");
    for (k, t) in tensors.iter_mut() {
        if k == "transformer.resblocks.0.mlp.c_fc.bias" {
            *t = Tensor::zeros([7], (tch::Kind::Half, Device::Cpu));
        }
    }
    tensors.push((
        "visual.extra".into(),
        Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)),
    ));
    let path = dir.path().join("broken.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    match checkpoint::load(&path, Device::Cpu, &LoadOptions::default()) {
        Err(ClipError::Mismatch { problems, .. }) => {
            let all = problems.join("\n");
            assert!(all.contains("missing visual.ln_post.bias [64]"), "{all}");
            assert!(
                all.contains(
                    "transformer.resblocks.0.mlp.c_fc.bias: checkpoint has [7], model needs [256]"
                ),
                "{all}"
            );
            assert!(all.contains("unexpected visual.extra [2]"), "{all}");
            assert_eq!(problems.len(), 3, "{all}");
        }
        other => panic!("expected a mismatch error, got {:?}", other.err()),
    }
}

#[test]
fn garbage_files_are_rejected_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.bin");
    std::fs::write(&path, b"definitely not a checkpoint").unwrap();
    let err = checkpoint::load(&path, Device::Cpu, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("junk.bin"), "{err}");
    let err = checkpoint::load(dir.path(), Device::Cpu, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("neither"), "{err}");
}
