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
                    // or a restart marker.
                    while i + 1 < b.len()
                        && (b[i] != 0xFF || matches!(b[i + 1], 0x00 | 0xD0..=0xD7 | 0xFF))
                    {
                        i += 1;
                    }
                }
            }
        }
    }
    false
}

pub(crate) fn decode_jpeg(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Decoded> {
    if !has_end_marker(bytes) {
        return Err(corrupt(name, "truncated JPEG (no end-of-image marker)"));
    }
    // libjpeg reports fatal errors by unwinding out of the C code (mozjpeg's error manager).
    let run = std::panic::catch_unwind(|| -> Result<Decoded> {
        let io = |e: std::io::Error| corrupt(name, e);
        let d = Decompress::new_mem(bytes).map_err(io)?;
        let (w, h) = d.size();
        check_size(
            name,
            u32::try_from(w).unwrap_or(u32::MAX),
            u32::try_from(h).unwrap_or(u32::MAX),
            max_pixels,
        )?;
        let (mode, space) = match d.components().len() {
            1 => (Mode::L, ColorSpace::JCS_GRAYSCALE),
            3 => (Mode::Rgb, ColorSpace::JCS_RGB),
            4 => (Mode::Cmyk, ColorSpace::JCS_CMYK),
            n => return Err(corrupt(name, format!("JPEG with {n} components"))),
        };
        let mut started = d.to_colorspace(space).map_err(io)?;
        let mut data: Vec<u8> = started.read_scanlines().map_err(io)?;
        started.finish().map_err(io)?;
        if mode == Mode::Cmyk {
            // Pillow reads CMYK JPEGs as "CMYK;I" (Adobe's inverted convention).
            data.iter_mut().for_each(|v| *v = 255 - *v);
        }
        if data.len() != w * h * mode.channels() {
            return Err(corrupt(name, "decoder returned a short buffer"));
        }
        Ok(Decoded {
            mode,
            width: w,
            height: h,
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
}
