//! Shared helpers: a tiny model and a small synthetic captioned-image folder.
#![allow(dead_code)]

use cliptune_clip::{checkpoint, Activation, Clip, ClipConfig, TextConfig, VisionConfig};
use std::path::{Path, PathBuf};

pub const COLORS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 200, 40]),
    ("blue", [30, 40, 220]),
    ("yellow", [230, 220, 30]),
];

pub fn tiny_config() -> ClipConfig {
    ClipConfig {
        embed_dim: 16,
        vision: VisionConfig {
            width: 32,
            layers: 1,
            heads: 2,
            patch_size: 4,
            image_size: 16,
            mlp_dim: 64,
        },
        text: TextConfig {
            width: 32,
            layers: 1,
            heads: 2,
            context_length: 12,
            vocab_size: 49408,
            mlp_dim: 64,
            eos_token_id: None,
        },
        activation: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
    }
}

/// Saves a seeded random tiny model as a native checkpoint dir.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let clip = Clip::new(&tiny_config(), tch::Device::Cpu, Some(0)).unwrap();
    let path = dir.join("base");
    checkpoint::save(&clip, &path).unwrap();
    path
}

/// splitmix64 for test data.
pub fn noise(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `n` PNGs (20x24: preprocessing resizes and crops them) of four colour classes with
/// noise, and captions.jsonl. Returns the folder.
pub fn make_folder(root: &Path, n: usize, with_subsets: bool) -> PathBuf {
    let dir = root.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = String::new();
    let mut s = 42u64;
    for i in 0..n {
        let (name, rgb) = COLORS[i % COLORS.len()];
        let img = image::RgbImage::from_fn(20, 24, |_, _| {
            let r = noise(&mut s);
            image::Rgb([0, 1, 2].map(|c| {
                let v = rgb[c] as i32 + ((r >> (8 * c)) & 63) as i32 - 32;
                v.clamp(0, 255) as u8
            }))
        });
        let file = format!("img{i:03}.png");
        img.save(dir.join(&file)).unwrap();
        let subset = if with_subsets {
            format!(
                ", \"subset\": \"{}\"",
                if i % 5 == 4 { "validation" } else { "train" }
            )
        } else {
            String::new()
        };
        lines.push_str(&format!(
            "{{\"file\": \"{file}\", \"caption\": \"a photo of a {name} thing\"{subset}}}\n"
        ));
    }
    std::fs::write(dir.join("captions.jsonl"), lines).unwrap();
    dir
}
