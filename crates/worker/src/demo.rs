//! A small captioned image set drawn here (nothing is downloaded): coloured shapes on a
//! noisy background, captioned "a small red circle on the left" and so on, split into
//! train and validation, in the folder layout `cliptune datasets import` reads
//! (`captions.jsonl` with `file`, `caption`, `subset`). Plus a tiny CLIP architecture that
//! trains on it in about a minute on two CPU cores.

use crate::error::{Result, WorkerError};
use cliptune_clip::{checkpoint, Clip, ClipConfig};
use cliptune_store::{Model, ModelStatus, NewModel, Platform};
use image::{ImageFormat, Rgb, RgbImage};
use serde::Serialize;
use serde_json::json;
use std::io::Write;
use std::path::Path;

pub const COLORS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [235, 215, 30]),
    ("purple", [140, 40, 180]),
    ("white", [245, 245, 245]),
];
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "cross"];
const SIDES: [&str; 2] = ["left", "right"];

/// What [`write_dataset`] produced.
#[derive(Debug, Serialize)]
pub struct DemoDataset {
    pub dir: String,
    pub images: usize,
    pub train: usize,
    pub validation: usize,
    /// Distinct captions.
    pub captions: usize,
}

/// splitmix64: a seeded, dependency-free generator (the set must be identical on every machine).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Draws `count` images of `size` pixels into `dir` (created) with `captions.jsonl`; every
/// fifth image is in the validation subset.
pub fn write_dataset(dir: &Path, count: usize, size: u32, seed: u64) -> Result<DemoDataset> {
    if count < 10 {
        return Err(WorkerError::input(
            "count",
            "at least 10 images (train and validation need 2 each)",
        ));
    }
    if !(16..=512).contains(&size) {
        return Err(WorkerError::input("size", "between 16 and 512 pixels"));
    }
    let io = |p: &Path, e: std::io::Error| WorkerError::Internal(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir.join("images")).map_err(|e| io(dir, e))?;
    let manifest = dir.join("captions.jsonl");
    let mut out = std::fs::File::create(&manifest).map_err(|e| io(&manifest, e))?;
    let mut rng = Rng(seed ^ 0x00C1_1970);
    let mut captions = std::collections::HashSet::new();
    let (mut train, mut validation) = (0, 0);
    for i in 0..count {
        let (color_name, color) = COLORS[rng.below(COLORS.len() as u64) as usize];
        let shape = SHAPES[rng.below(SHAPES.len() as u64) as usize];
        let side = SIDES[rng.below(2) as usize];
        let large = rng.below(2) == 1;
        let img = draw(&mut rng, size, color, shape, side == "left", large);
        let file = format!("images/{i:05}.png");
        let path = dir.join(&file);
        img.save_with_format(&path, ImageFormat::Png)
            .map_err(|e| WorkerError::Internal(format!("{}: {e}", path.display())))?;
        let caption = format!(
            "a {} {color_name} {shape} on the {side}",
            if large { "large" } else { "small" }
        );
        captions.insert(caption.clone());
        let subset = if i % 5 == 4 {
            validation += 1;
            "validation"
        } else {
            train += 1;
            "train"
        };
        writeln!(
            out,
            "{}",
            json!({"file": file, "caption": caption, "subset": subset})
        )
        .map_err(|e| io(&manifest, e))?;
    }
    Ok(DemoDataset {
        dir: dir.display().to_string(),
        images: count,
        train,
        validation,
        captions: captions.len(),
    })
}

fn draw(
    rng: &mut Rng,
    size: u32,
    color: [u8; 3],
    shape: &str,
    left: bool,
    large: bool,
) -> RgbImage {
    let s = size as f32;
    let base = 90.0 + 50.0 * rng.unit();
    let mut img = RgbImage::from_fn(size, size, |_, _| {
        let v = (base + 30.0 * (rng.unit() - 0.5)) as u8;
        Rgb([v, v, v])
    });
    let radius = s * if large {
        0.22 + 0.04 * rng.unit()
    } else {
        0.11 + 0.03 * rng.unit()
    };
    let cx = s * if left { 0.27 } else { 0.73 } + s * 0.06 * (rng.unit() - 0.5);
    let cy = s * (0.35 + 0.3 * rng.unit());
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let inside = match shape {
                "circle" => dx * dx + dy * dy <= radius * radius,
                "square" => dx.abs() <= radius * 0.85 && dy.abs() <= radius * 0.85,
                "triangle" => {
                    // Apex up: inside when below both slanted edges and above the base.
                    let t = (dy + radius) / (2.0 * radius);
                    (0.0..=1.0).contains(&t) && dx.abs() <= t * radius
                }
                _ => {
                    let arm = radius * 0.3;
                    (dx.abs() <= arm && dy.abs() <= radius)
                        || (dy.abs() <= arm && dx.abs() <= radius)
                }
            };
            if inside {
                img.put_pixel(x, y, Rgb(color));
            }
        }
    }
    img
}

/// An open_clip-style architecture small enough to fine-tune on two CPU cores in about a
/// minute, with the full CLIP vocabulary so that the real tokenizer's ids fit.
pub fn tiny_architecture() -> serde_json::Value {
    json!({
        "embed_dim": 64,
        "quick_gelu": true,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    })
}

/// A tiny random-weight model ([`tiny_architecture`], weights seeded by `seed`) registered
/// in `platform` as `name` with status `trained`: its checkpoint is written to `scratch`
/// and uploaded. For the tests and demos that need a model in a store.
#[doc(hidden)]
pub async fn tiny_model(
    platform: &dyn Platform,
    name: &str,
    seed: u64,
    scratch: &Path,
) -> Result<Model> {
    let clip = Clip::new(
        &ClipConfig::from_json(&tiny_architecture())?,
        tch::Device::Cpu,
        Some(seed),
    )?;
    checkpoint::save(&clip, scratch)?;
    let model = platform
        .create_model(NewModel::new(name, ModelStatus::Created))
        .await?;
    crate::nodes::store_weights(platform, &model.id, scratch, ModelStatus::Trained, |_| {}).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_split_captioned_set_deterministically() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let made = write_dataset(a.path(), 20, 32, 7).unwrap();
        write_dataset(b.path(), 20, 32, 7).unwrap();
        assert_eq!((made.images, made.train, made.validation), (20, 16, 4));
        let ma = std::fs::read_to_string(a.path().join("captions.jsonl")).unwrap();
        let mb = std::fs::read_to_string(b.path().join("captions.jsonl")).unwrap();
        assert_eq!(ma, mb, "same seed, same set");
        assert_eq!(
            std::fs::read(a.path().join("images/00003.png")).unwrap(),
            std::fs::read(b.path().join("images/00003.png")).unwrap()
        );
        let first: serde_json::Value = serde_json::from_str(ma.lines().next().unwrap()).unwrap();
        let caption = first["caption"].as_str().unwrap();
        let img = image::open(a.path().join(first["file"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let (name, rgb) = COLORS.iter().find(|(n, _)| caption.contains(n)).unwrap();
        let painted = img.pixels().filter(|p| p.0 == *rgb).count();
        assert!(painted > 10, "{caption}: only {painted} {name} pixels");
        assert!(write_dataset(a.path(), 3, 32, 0).is_err());
        cliptune_clip::ClipConfig::from_json(&tiny_architecture()).unwrap();
    }
}
