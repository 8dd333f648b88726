//! Writes a cliptune model as Dataloop's CLIP adapter saves one, for
//! scripts/reference/adapter_reference.py to load with the adapter's call:
//!
//!   cargo run -p cliptune-clip --example adapter_export -- DIR
//!
//! DIR/best.pt: a random model with the architecture of tests/fixtures/adapter/best.pt
//! (seed 7, every tensor perturbed, so nothing comes from Python), and
//! DIR/cliptune.ref.safetensors: its image features, text features and logits for the
//! fixture's pixels and token ids, computed by cliptune.

use cliptune_clip::{checkpoint, Clip, LoadOptions};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: adapter_export DIR")?);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/adapter");
    let config = checkpoint::inspect(&fixtures.join("best.pt"), &LoadOptions::default())?.config;
    let clip = Clip::new(&config, Device::Cpu, Some(7))?;
    tch::no_grad(|| {
        for (_, mut v) in clip.var_store().variables() {
            let noise = Tensor::randn_like(&v) * 0.1;
            let _ = v.f_add_(&noise).unwrap();
        }
    });
    let path = out.join(checkpoint::ADAPTER_WEIGHTS);
    checkpoint::save_model_state_dict(&clip, &path)?;
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures.join("best.ref.safetensors"))?
            .into_iter()
            .collect();
    let image = clip.image_features(&r["pixels"], false)?;
    let text = clip.text_features(&r["ids"], false)?;
    let logits = tch::no_grad(|| clip.logits(&image, &text));
    Tensor::write_safetensors(
        &[
            ("pixels", r["pixels"].shallow_clone()),
            ("ids", r["ids"].shallow_clone()),
            ("image_features", image),
            ("text_features", text),
            ("logits_per_image", logits),
        ],
        out.join("cliptune.ref.safetensors"),
    )?;
    println!("wrote {} and cliptune.ref.safetensors", path.display());
    Ok(())
}
