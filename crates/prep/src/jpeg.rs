//! JPEG decoding with libjpeg-turbo's decoder (through MozJPEG, which shares it), the
//! library Pillow uses: same integer IDCT, same "fancy" chroma upsampling, same YCbCr -> RGB
//! tables, so the pixels are the ones PIL sees (pure-Rust decoders differ by a level or two).

use crate::decode::{check_size, corrupt, Decoded, Mode, Samples};
use crate::error::Result;
use mozjpeg::{ColorSpace, Decompress};

/// Walks the marker structure to the end-of-image marker. libjpeg only warns about a
/// truncated file (and pads it with gray), where PIL refuses it: so do we.
fn has_end_marker(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            i += 1; // junk between segments, which libjpeg and PIL skip
            continue;
        }
        let m = b[i + 1];
        match m {
            0xFF => i += 1, // fill byte
            0xD9 => return true,
            0x00 | 0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let Some(len) = b.get(i + 2..i + 4) else {
                    return false;
                };
                i += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
                if m == 0xDA {
                    // Entropy-coded data runs to the next marker other than a stuffed 0xFF00
                    // or a restart marker. memchr skips to each 0xFF: a byte-by-byte walk
                    // was 2% of a reduced-scale decode.
                    loop {
                        match b.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) {
                            None => return false,
                            Some(p) => i += p,
                        }
                        if i + 1 < b.len() && matches!(b[i + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
        }
    }
    false
}

/// The DCT scaling denominator (1, 2, 4 or 8) for decoding a `width x height` JPEG whose
/// short side only needs to reach `min_short`: the largest with `short >= denom * min_short`.
///
/// libjpeg-turbo then decodes `ceil(width / denom) x ceil(height / denom)` pixels with a
/// smaller IDCT, skipping most of the IDCT, upsampling and colour conversion work. The result
/// is no longer PIL's (PIL decodes at full size and lets the bicubic filter average), so this
/// is only used when asked for ([`crate::Preprocessor::with_fast_decode`]). Requiring the full
/// factor (not `ceil(short / denom) >= min_short`) keeps every image under twice the target
/// size on the exact path.
pub fn scale_denom(width: usize, height: usize, min_short: usize) -> usize {
    let short = width.min(height);
    [8, 4, 2]
        .into_iter()
        .find(|&d| min_short > 0 && short >= d * min_short)
        .unwrap_or(1)
}

pub(crate) fn decode_jpeg(
    bytes: &[u8],
    name: &str,
    max_pixels: u64,
    min_short: Option<usize>,
) -> Result<Decoded> {
    if !has_end_marker(bytes) {
        return Err(corrupt(name, "truncated JPEG (no end-of-image marker)"));
    }
    // libjpeg reports fatal errors by unwinding out of the C code (mozjpeg's error manager).
    let run = std::panic::catch_unwind(|| -> Result<Decoded> {
        let io = |e: std::io::Error| corrupt(name, e);
        let mut d = Decompress::new_mem(bytes).map_err(io)?;
        let (w, h) = d.size();
        check_size(
            name,
            u32::try_from(w).unwrap_or(u32::MAX),
            u32::try_from(h).unwrap_or(u32::MAX),
            max_pixels,
        )?;
        let denom = min_short.map_or(1, |s| scale_denom(w, h, s));
        let (mode, space) = match d.components().len() {
            1 => (Mode::L, ColorSpace::JCS_GRAYSCALE),
            // At reduced scale the pixels are not PIL's anyway: keep YCbCr through the
            // resize and convert once per output pixel, in float (preprocess.rs).
            3 if denom > 1 && d.color_space() == ColorSpace::JCS_YCbCr => {
                (Mode::YCbCr, ColorSpace::JCS_YCbCr)
            }
            3 => (Mode::Rgb, ColorSpace::JCS_RGB),
            4 => (Mode::Cmyk, ColorSpace::JCS_CMYK),
            n => return Err(corrupt(name, format!("JPEG with {n} components"))),
        };
        if denom > 1 {
            // mozjpeg's scale takes the numerator over 8.
            d.scale((8 / denom) as u8);
        }
        let mut started = d.to_colorspace(space).map_err(io)?;
        let (out_w, out_h) = (started.width(), started.height());
        let mut data: Vec<u8> = started.read_scanlines().map_err(io)?;
        started.finish().map_err(io)?;
        if mode == Mode::Cmyk {
            // Pillow reads CMYK JPEGs as "CMYK;I" (Adobe's inverted convention).
            data.iter_mut().for_each(|v| *v = 255 - *v);
        }
        if data.len() != out_w * out_h * mode.channels() {
            return Err(corrupt(name, "decoder returned a short buffer"));
        }
        Ok(Decoded {
            mode,
            width: out_w,
            height: out_h,
            full_width: w,
            full_height: h,
            denom,
            samples: Samples::U8(data),
        })
    });
    match run {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg error".into());
            Err(corrupt(name, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_marker_walk() {
        let ok = [
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF,
            0xD9,
        ];
        assert!(has_end_marker(&ok));
        assert!(!has_end_marker(&ok[..ok.len() - 2]));
        // An EOI inside a segment (e.g. an EXIF thumbnail) does not count.
        let app = [
            0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x04, 0xFF, 0xD9, 0xFF, 0xDA, 0x00, 0x02, 0x01,
        ];
        assert!(!has_end_marker(&app));
        assert!(!has_end_marker(b"not a jpeg"));
    }

    #[test]
    fn scale_denominator_needs_the_full_factor() {
        // 640x480 for a 224 model: 480 >= 2 * 224, not 4 * 224.
        assert_eq!(scale_denom(640, 480, 224), 2);
        // One pixel under twice the size: exact, although ceil(447 / 2) would reach 224.
        assert_eq!(scale_denom(447, 600, 224), 1);
        assert_eq!(scale_denom(448, 448, 224), 2);
        assert_eq!(scale_denom(896, 1000, 224), 4);
        assert_eq!(scale_denom(4000, 3000, 224), 8);
        // The 28 px Fashion-MNIST model on 224 px renderings: 1/8.
        assert_eq!(scale_denom(224, 224, 28), 8);
        assert_eq!(scale_denom(223, 224, 28), 4);
        assert_eq!(scale_denom(100, 100, 0), 1);
    }

    #[test]
    fn reduced_scale_decodes_fewer_pixels_and_keeps_the_declared_size() {
        let (w, h) = (97u32, 65u32);
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode(&px, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        let full = decode_jpeg(&jpeg, "t", u64::MAX, None).unwrap();
        assert_eq!((full.width, full.height), (97, 65));
        // 65 >= 4 * 16: libjpeg's ceil(97 / 4) x ceil(65 / 4).
        let quarter = decode_jpeg(&jpeg, "t", u64::MAX, Some(16)).unwrap();
        assert_eq!((quarter.width, quarter.height), (25, 17));
        assert_eq!((quarter.full_width, quarter.full_height), (97, 65));
        assert_eq!((full.denom, quarter.denom), (1, 4));
        // Only the reduced-scale decode keeps YCbCr (converted after the resize).
        assert!(full.mode == Mode::Rgb && quarter.mode == Mode::YCbCr);
        let Samples::U8(v) = quarter.samples else {
            panic!("8-bit samples expected")
        };
        assert_eq!(v.len(), 25 * 17 * 3);
    }
}
