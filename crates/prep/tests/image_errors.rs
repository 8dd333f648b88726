//! Bad input gives an error that names the file, never a panic.

use cliptune_prep::{PrepError, Preprocessor};
use std::path::PathBuf;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/prep/images")
        .join(name);
    std::fs::read(p).unwrap()
}

/// The error of the exact path; the reduced-scale path (`--fast-decode`, at a size where the
/// fixture JPEGs decode at 1/2 and keep YCbCr) must fail on the same input too.
fn expect_err(bytes: &[u8], name: &str) -> PrepError {
    let [exact, _fast] = [
        Preprocessor::new(32),
        Preprocessor::new(16).with_fast_decode(true),
    ]
    .map(|pre| match pre.from_bytes(bytes, name) {
        Ok(_) => panic!("{name} ({} bytes) decoded without error", bytes.len()),
        Err(err) => {
            assert!(
                err.to_string().contains(name),
                "error does not name the file: {err}"
            );
            err
        }
    });
    exact
}

#[test]
fn truncated_files_fail_with_their_name() {
    for name in [
        "rgb_q90_64x48.jpg",
        "rgb_progressive_50x40.jpg",
        "rgb_64x48.png",
        "p_64x48.gif",
        "rgb_lossless_56x40.webp",
        "rgb_lossy_64x48.webp",
        "rgb_50x40.bmp",
    ] {
        let bytes = fixture(name);
        // (A PNG cut inside its final IEND chunk still holds the whole image, so cut deeper.)
        for cut in [bytes.len() / 2, bytes.len() * 3 / 4, 40] {
            let err = expect_err(&bytes[..cut], name);
            assert!(
                matches!(
                    err,
                    PrepError::Corrupt { .. } | PrepError::UnknownFormat { .. }
                ),
                "{name} cut at {cut}: {err:?}"
            );
        }
    }
}

#[test]
fn garbage_and_empty_input() {
    assert!(matches!(
        expect_err(b"", "empty.jpg"),
        PrepError::UnknownFormat { .. }
    ));
    assert!(matches!(
        expect_err(b"definitely not an image", "text.png"),
        PrepError::UnknownFormat { .. }
    ));
    // A JPEG header followed by noise: libjpeg's fatal error comes back as an error.
    let mut bytes = fixture("rgb_q90_64x48.jpg");
    let len = bytes.len();
    for (i, b) in bytes[200..len - 2].iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    expect_err(&bytes, "noise.jpg");
}

#[test]
fn pixel_limit_is_checked_before_decoding() {
    let bytes = fixture("rgb_64x48.png");
    let err = Preprocessor::new(32)
        .with_max_pixels(64 * 48 - 1)
        .from_bytes(&bytes, "a.png")
        .unwrap_err();
    assert!(
        matches!(
            err,
            PrepError::TooLarge {
                width: 64,
                height: 48,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(Preprocessor::new(32)
        .with_max_pixels(64 * 48)
        .from_bytes(&bytes, "a.png")
        .is_ok());

    // A JPEG whose header claims 60000 x 60000 (a decompression bomb) is refused by size.
    let mut jpeg = fixture("rgb_q90_64x48.jpg");
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline SOF");
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let err = expect_err(&jpeg, "bomb.jpg");
    assert!(
        matches!(
            err,
            PrepError::TooLarge {
                width: 60000,
                height: 60000,
                ..
            }
        ),
        "{err:?}"
    );

    // Same for a PNG header (IHDR with a valid CRC) claiming 100000 x 100000.
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0]);
    let crc = crc32(&png[12..]);
    png.extend_from_slice(&crc.to_be_bytes());
    // An (empty) IDAT so that the header parses; the pixels never get decoded.
    png.extend_from_slice(b"\x00\x00\x00\x00IDAT");
    png.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
    let err = expect_err(&png, "bomb.png");
    assert!(matches!(err, PrepError::TooLarge { .. }), "{err:?}");
}

#[test]
fn missing_file_names_the_path() {
    let err = Preprocessor::new(32)
        .from_path("/nonexistent/cat.jpg".as_ref())
        .unwrap_err();
    assert!(matches!(err, PrepError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/cat.jpg"));
    let results = Preprocessor::new(32).from_paths(&["/nonexistent/a.jpg"]);
    assert!(results[0].is_err());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
