//! `Preprocessor::with_fast_decode`: bit-identical to the exact path wherever it must not
//! engage, close to it where it does.

use cliptune_prep::{jpeg_scale_denom, Preprocessor};
use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/prep/images")
}

/// A photo-like RGB image (smooth gradients plus pixel noise, like
/// scripts/bench/make_jpegs.py), encoded as a 4:2:0 JPEG at quality 90.
fn photo_jpeg(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut noise = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 25) as f32 - 12.0
    };
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let (xf, yf) = (x as f32, y as f32);
            for c in 0..3 {
                let fx = 0.004 + 0.007 * (c as f32 + seed as f32 % 3.0);
                let v = 128.0
                    + 70.0 * (fx * xf + c as f32).sin() * (0.011 * yf + seed as f32).cos()
                    + 30.0 * (0.003 * xf * (c as f32 + 1.0) + 0.1 * yf).sin()
                    + noise();
                px.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(&px, w, h, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let mean = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    (max, mean)
}

#[test]
fn unchanged_below_twice_the_size_and_for_other_formats() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        // Every fixture JPEG has a short side under 64 = 2 x 32; 224 is over every image.
        for size in [32, 224] {
            let exact = Preprocessor::new(size).from_bytes(&bytes, &name);
            let fast = Preprocessor::new(size)
                .with_fast_decode(true)
                .from_bytes(&bytes, &name);
            match (exact, fast) {
                (Ok(e), Ok(f)) => assert!(e == f, "{name} at {size}: fast decode changed it"),
                (Err(e), Err(f)) => assert_eq!(e.to_string(), f.to_string()),
                (e, f) => panic!("{name}: exact {:?} vs fast {:?}", e.err(), f.err()),
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} fixture cases");
    // One pixel short of twice the size: still the exact path.
    let jpeg = photo_jpeg(447, 600, 1);
    assert_eq!(jpeg_scale_denom(447, 600, 224), 1);
    let exact = Preprocessor::new(224).from_bytes(&jpeg, "447").unwrap();
    let fast = Preprocessor::new(224)
        .with_fast_decode(true)
        .from_bytes(&jpeg, "447")
        .unwrap();
    assert!(exact == fast);
}

/// Every fixture JPEG kind (4:2:0, 4:4:4, progressive, gray, CMYK) at a size it is at least
/// twice as large as: the reduced-scale decode goes through the same mode handling.
#[test]
fn fixture_jpegs_at_reduced_scale_stay_close() {
    for (image, size) in [
        ("rgb_q90_64x48.jpg", 24),
        ("rgb_q90_64x48.jpg", 12),
        ("rgb_444_40x56.jpg", 20),
        ("rgb_progressive_50x40.jpg", 20),
        ("l_48x64.jpg", 12),
        ("cmyk_40x44.jpg", 20),
    ] {
        let bytes = std::fs::read(fixtures().join(image)).unwrap();
        let exact = Preprocessor::new(size).from_bytes(&bytes, image).unwrap();
        let fast = Preprocessor::new(size)
            .with_fast_decode(true)
            .from_bytes(&bytes, image)
            .unwrap();
        assert_eq!(fast.len(), 3 * (size * size) as usize);
        let (max, mean) = diff(&exact, &fast);
        eprintln!("{image} at {size}: max {max:.4} mean {mean:.4}");
        assert!(
            exact != fast,
            "{image} at {size}: fast decode did not engage"
        );
        // These fixtures are pixel noise (mean |horizontal step| 18-33 levels), where the
        // DCT's reduced-scale filter and bicubic over the full pixels differ most: measured
        // max 0.61, mean 0.13. The bound is for the mode handling: an inverted CMYK or a
        // swapped or dropped channel moves the mean by about 1 or more.
        assert!(mean < 0.2 && max < 1.0, "{image} at {size}: {max} / {mean}");
    }
}

#[test]
fn large_jpegs_have_the_shape_and_stay_close() {
    // (width, height, size, expected denominator)
    for (w, h, size, denom) in [
        (640, 480, 224, 2),
        (480, 640, 224, 2),
        (1000, 900, 224, 4),
        (1800, 1799, 224, 8),
        (641, 483, 224, 2),
    ] {
        assert_eq!(jpeg_scale_denom(w, h, size as usize), denom);
        let jpeg = photo_jpeg(w as u32, h as u32, w as u64);
        let exact = Preprocessor::new(size).from_bytes(&jpeg, "big").unwrap();
        let fast = Preprocessor::new(size)
            .with_fast_decode(true)
            .from_bytes(&jpeg, "big")
            .unwrap();
        assert_eq!(fast.len(), 3 * 224 * 224);
        assert!(exact != fast, "{w}x{h}: fast decode did not engage");
        let (max, mean) = diff(&exact, &fast);
        eprintln!("{w}x{h} at {size} (1/{denom}): max {max:.4} mean {mean:.4}");
        // Normalised units (one 8-bit level is about 0.015). Measured: max 0.09-0.13, mean
        // 0.014-0.023 (YCbCr resized, converted in float: no final rounding to 8 bits). Resizing the decoded ceil(641 / 2) samples as if they spanned 321
        // pixels instead of 320.5 gave 0.23 / 0.028 on 641x483: the bound catches that.
        assert!(mean < 0.025 && max < 0.2, "{w}x{h}: max {max} mean {mean}");
    }
}
