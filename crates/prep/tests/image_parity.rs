//! Preprocessed tensors vs OpenAI's transform run by PIL + torchvision on the images and
//! references that `scripts/reference/prep_reference.py images` generated.

use cliptune_prep::npy::from_npy;
use cliptune_prep::{Preprocessor, MEAN, STD};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/prep")
}

/// Decoders other than the reference's (libjpeg-turbo, libwebp) may differ by a level or two
/// in lossy formats; every lossless format must match exactly.
fn lossy(image: &str) -> bool {
    image.ends_with(".jpg") || image.contains("lossy")
}

#[test]
fn images_match_pil_and_torchvision() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("images.json")).unwrap())
            .unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in cases {
        let image = case["image"].as_str().unwrap();
        let size = case["size"].as_u64().unwrap() as u32;
        let bytes = std::fs::read(fixtures().join(image)).unwrap();
        let reference = case["reference"].as_str().unwrap();
        let want = from_npy(
            &std::fs::read(fixtures().join(reference)).unwrap(),
            reference,
        )
        .unwrap();
        let pre = Preprocessor::new(size);
        let got: Vec<f32> = match case["kind"].as_str().unwrap() {
            "normalized_f32_chw" => {
                assert_eq!(want.shape, vec![3, size as usize, size as usize]);
                pre.from_bytes(&bytes, image).unwrap()
            }
            "rgb_u8_hwc" => {
                assert_eq!(want.shape, vec![size as usize, size as usize, 3]);
                // Compare in normalised units too, so the thresholds mean the same thing.
                let rgb = pre.rgb_from_bytes(&bytes, image).unwrap();
                let norm = |v: f32, c: usize| (v / 255.0 - MEAN[c]) / STD[c];
                let got: Vec<f32> = rgb
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| norm(f32::from(v), i % 3))
                    .collect();
                let want_n: Vec<f32> = want
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| norm(v, i % 3))
                    .collect();
                // And the full tensor path must equal normalising that RGB image.
                let full = pre.from_bytes(&bytes, image).unwrap();
                let s = size as usize;
                for (i, &v) in full.iter().enumerate() {
                    let (c, p) = (i / (s * s), i % (s * s));
                    assert_eq!(v, got[p * 3 + c], "{image}: CHW layout at {i}");
                }
                let diffs = stats(&got, &want_n);
                report.push(format!(
                    "{image:28} {size:3}  mean {:.6}  max {:.6}  exact {:.1}%",
                    diffs.0, diffs.1, diffs.2
                ));
                check(image, size, diffs, &mut failures);
                continue;
            }
            k => panic!("unknown kind {k}"),
        };
        let diffs = stats(&got, &want.data);
        report.push(format!(
            "{image:28} {size:3}  mean {:.6}  max {:.6}  exact {:.1}%",
            diffs.0, diffs.1, diffs.2
        ));
        check(image, size, diffs, &mut failures);
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn stats(got: &[f32], want: &[f32]) -> (f64, f64, f64) {
    assert_eq!(got.len(), want.len());
    let mut sum = 0.0;
    let mut max = 0.0f64;
    let mut exact = 0usize;
    for (g, w) in got.iter().zip(want) {
        let d = f64::from((g - w).abs());
        sum += d;
        max = max.max(d);
        exact += usize::from(g == w);
    }
    (
        sum / got.len() as f64,
        max,
        100.0 * exact as f64 / got.len() as f64,
    )
}

fn check(image: &str, size: u32, (mean, max, _): (f64, f64, f64), failures: &mut Vec<String>) {
    let (mean_tol, max_tol) = if lossy(image) {
        (0.002, 0.02)
    } else {
        (0.0, 0.0)
    };
    if mean > mean_tol || max > max_tol {
        failures.push(format!(
            "{image} at {size}: mean {mean:.6} (<= {mean_tol}), max {max:.6} (<= {max_tol})"
        ));
    }
}
