//! Decoding to the pixel layout PIL would hold: the same *mode* (which decides how PIL
//! resizes and converts to RGB) and the same 8/16-bit samples.

use crate::error::{PrepError, Result};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::Cursor;

/// The PIL mode the file opens as, for the modes that matter to resizing and RGB conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// 8-bit gray.
    L,
    /// 8-bit gray + alpha (resized premultiplied).
    La,
    Rgb,
    /// Resized premultiplied.
    Rgba,
    /// Palette ("P") or bilevel ("1"): PIL resizes these with NEAREST. Held expanded to RGB.
    Indexed,
    /// 16-bit gray ("I;16"): resized in 16 bits, then clipped (not scaled) to 8 bits.
    I16,
    /// JPEG CMYK, held as PIL does ("CMYK;I": the inverse of what libjpeg returns).
    Cmyk,
    /// JPEG YCbCr as stored, only from a reduced-scale decode (`--fast-decode`): converted
    /// to RGB after the resize.
    YCbCr,
}

impl Mode {
    pub(crate) fn channels(self) -> usize {
        match self {
            Mode::L | Mode::I16 => 1,
            Mode::La => 2,
            Mode::Rgb | Mode::Indexed | Mode::YCbCr => 3,
            Mode::Rgba | Mode::Cmyk => 4,
        }
    }
}

/// Interleaved samples; `u16` only for [`Mode::I16`].
pub(crate) enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

pub(crate) struct Decoded {
    pub mode: Mode,
    pub width: usize,
    pub height: usize,
    /// The size the file declares. The resize geometry (output size, crop) is computed from
    /// it, so that a JPEG decoded at reduced scale lands on the same grid as the exact path.
    pub full_width: usize,
    pub full_height: usize,
    /// 1, or the JPEG DCT scaling denominator it was decoded at: each sample then spans
    /// `denom` of the file's pixels, so the samples span `full_width / denom` pixel widths.
    pub denom: usize,
    pub samples: Samples,
}

/// Refuses empty images and images over the pixel limit, before any pixel is decoded.
pub(crate) fn check_size(name: &str, width: u32, height: u32, max_pixels: u64) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(PrepError::TooLarge {
            name: name.to_string(),
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    if pixels == 0 {
        return Err(PrepError::Empty {
            name: name.to_string(),
            width,
            height,
        });
    }
    Ok(())
}

pub(crate) fn corrupt(name: &str, e: impl std::fmt::Display) -> PrepError {
    PrepError::Corrupt {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// PNG colour type and bit depth from the IHDR chunk (always first, at a fixed offset).
fn png_header(bytes: &[u8]) -> Option<(u8, u8)> {
    (bytes.len() >= 26 && &bytes[12..16] == b"IHDR").then(|| (bytes[25], bytes[24]))
}

/// Whether PIL opens this palette BMP as "P"/"1" (NEAREST resize) rather than "L": it ditches
/// the palette only when entry i is gray level i (or black/white for 2 colours).
fn bmp_is_indexed(bytes: &[u8]) -> Option<bool> {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let header = u32_at(14)? as usize;
    let (bits, colors, entry) = if header == 12 {
        (u16_at(24)?, 0u32, 3usize)
    } else {
        (u16_at(28)?, u32_at(46)?, 4usize)
    };
    if bits > 8 {
        return Some(false);
    }
    let colors = if colors == 0 { 1u32 << bits } else { colors } as usize;
    let palette = 14 + header;
    let gray = (0..colors).all(|i| {
        let level = if colors == 2 { [0u8, 255][i] } else { i as u8 };
        bytes
            .get(palette + i * entry..palette + i * entry + 3)
            .is_some_and(|bgr| bgr == [level; 3])
    });
    // A bilevel ("1") image is resized with NEAREST like a palette image.
    Some(!gray || colors == 2)
}

/// Decodes `bytes` (JPEG, PNG, WebP, GIF, BMP), refusing images over `max_pixels` before
/// allocating their pixels. With `jpeg_min_short`, a JPEG may be decoded at reduced scale as
/// long as its short side stays at least that large (see [`crate::jpeg::scale_denom`]).
pub(crate) fn decode(
    bytes: &[u8],
    name: &str,
    max_pixels: u64,
    jpeg_min_short: Option<usize>,
) -> Result<Decoded> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(name, e))?;
    let format = match reader.format() {
        Some(
            f @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp),
        ) => f,
        _ => {
            return Err(PrepError::UnknownFormat {
                name: name.to_string(),
            })
        }
    };
    if format == ImageFormat::Jpeg {
        return crate::jpeg::decode_jpeg(bytes, name, max_pixels, jpeg_min_short);
    }
    let mut decoder = reader.into_decoder().map_err(|e| corrupt(name, e))?;
    let (width, height) = decoder.dimensions();
    check_size(name, width, height, max_pixels)?;
    // Belt and braces: the decoders also refuse to allocate more than the limit allows.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    decoder.set_limits(limits).map_err(|e| corrupt(name, e))?;
    let image = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(name, e))?;

    let (w, h) = (width as usize, height as usize);
    let (mode, samples) = match format {
        ImageFormat::Png => {
            let (color_type, depth) = png_header(bytes).ok_or_else(|| corrupt(name, "no IHDR"))?;
            match (color_type, depth) {
                // tRNS transparency on gray/RGB is ignored by convert("RGB"), and PIL keeps
                // these images in modes without alpha, so the alpha the decoder made is dropped.
                (0, 1) | (3, _) => (Mode::Indexed, channels_u8(image, 3)),
                (0, 16) => (Mode::I16, Samples::U16(first_channel_u16(image))),
                (0, _) => (Mode::L, channels_u8(image, 1)),
                (4, _) => (Mode::La, channels_u8(image, 2)),
                (6, _) => (Mode::Rgba, channels_u8(image, 4)),
                _ => (Mode::Rgb, channels_u8(image, 3)),
            }
        }
        // PIL opens a GIF's first frame as "P"; transparency does not change its colours.
        ImageFormat::Gif => (Mode::Indexed, channels_u8(image, 3)),
        ImageFormat::Bmp => match bmp_is_indexed(bytes) {
            Some(true) => (Mode::Indexed, channels_u8(image, 3)),
            // A palette that is the gray ramp: PIL reads the indices as "L".
            Some(false) if bmp_bits(bytes) <= 8 => (Mode::L, channels_u8(image, 1)),
            _ if image.color().has_alpha() => (Mode::Rgba, channels_u8(image, 4)),
            _ => (Mode::Rgb, channels_u8(image, 3)),
        },
        _ => {
            let c = image.color();
            let mode = match (c.has_color(), c.has_alpha()) {
                (false, false) => Mode::L,
                (false, true) => Mode::La,
                (true, false) => Mode::Rgb,
                (true, true) => Mode::Rgba,
            };
            (mode, channels_u8(image, mode.channels()))
        }
    };
    let len = match &samples {
        Samples::U8(v) => v.len(),
        Samples::U16(v) => v.len(),
    };
    if len != w * h * mode.channels() {
        return Err(corrupt(name, "decoder returned a short buffer"));
    }
    Ok(Decoded {
        mode,
        width: w,
        height: h,
        full_width: w,
        full_height: h,
        denom: 1,
        samples,
    })
}

fn bmp_bits(bytes: &[u8]) -> u16 {
    let at = if bytes.get(14..18) == Some(&12u32.to_le_bytes()[..]) {
        24
    } else {
        28
    };
    bytes
        .get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}

/// The first `n` channels as 8 bits: gray images keep their gray channel (no luminance
/// formula), RGB(A) their colour channels, and 16-bit samples keep their high byte, as PIL's
/// unpackers for 16-bit PNG do.
fn channels_u8(image: DynamicImage, n: usize) -> Samples {
    let src_channels = usize::from(image.color().channel_count());
    let gray = !image.color().has_color();
    let pick = |px: &[u8], out: &mut Vec<u8>| match (gray, n) {
        (true, 1) => out.push(px[0]),
        (true, 2) => out.extend_from_slice(&[px[0], px[src_channels - 1]]),
        (true, _) => {
            out.extend_from_slice(&[px[0]; 3]);
            if n == 4 {
                out.push(if src_channels == 2 { px[1] } else { 255 });
            }
        }
        (false, 1) => out.push(px[0]),
        (false, _) => {
            out.extend_from_slice(&px[..3]);
            if n == 4 {
                out.push(if src_channels == 4 { px[3] } else { 255 });
            }
        }
    };
    let bytes: Vec<u8> = match image {
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => {
            let wide: Vec<u16> = match image {
                DynamicImage::ImageLuma16(b) => b.into_raw(),
                DynamicImage::ImageLumaA16(b) => b.into_raw(),
                DynamicImage::ImageRgb16(b) => b.into_raw(),
                DynamicImage::ImageRgba16(b) => b.into_raw(),
                _ => unreachable!("matched above"),
            };
            wide.iter().map(|&v| (v >> 8) as u8).collect()
        }
        DynamicImage::ImageLuma8(b) => b.into_raw(),
        DynamicImage::ImageLumaA8(b) => b.into_raw(),
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b.into_raw(),
        other => {
            return channels_u8(
                if other.color().has_alpha() {
                    DynamicImage::ImageRgba8(other.into_rgba8())
                } else {
                    DynamicImage::ImageRgb8(other.into_rgb8())
                },
                n,
            )
        }
    };
    if src_channels == n && !(gray && n >= 3) {
        return Samples::U8(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() / src_channels * n);
    for px in bytes.chunks_exact(src_channels) {
        pick(px, &mut out);
    }
    Samples::U8(out)
}

fn first_channel_u16(image: DynamicImage) -> Vec<u16> {
    match image {
        DynamicImage::ImageLuma16(b) => b.into_raw(),
        DynamicImage::ImageLumaA16(b) => b.into_raw().chunks_exact(2).map(|p| p[0]).collect(),
        other => other.into_luma16().into_raw(),
    }
}
