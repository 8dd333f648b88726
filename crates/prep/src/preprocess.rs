//! OpenAI's CLIP image transform, as PIL + torchvision run it:
//! `Resize(S, BICUBIC)` (short side to S) -> `CenterCrop(S)` -> `convert("RGB")` ->
//! `ToTensor()` -> `Normalize(mean, std)`, producing a CHW `f32` tensor.
//!
//! The resize happens in the mode the file opened in, as in PIL: palette and bilevel images
//! are resized with NEAREST, images with alpha are resized premultiplied, 16-bit gray in
//! 16 bits; the RGB conversion after the crop drops alpha (no compositing) and clips 16-bit
//! gray to 255. See docs/preprocessing.md.

use crate::decode::{decode, Decoded, Mode, Samples};
use crate::error::{PrepError, Result};
use crate::resample::{bicubic_u16, bicubic_u8, nearest_u8, resize_u8_over, Filter, Window};
use rayon::prelude::*;
use std::path::Path;

/// CLIP's normalisation mean (RGB).
pub const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalisation standard deviation (RGB).
// The literals of the Python reference, rounded to f32 as `Normalize` does.
#[allow(clippy::excessive_precision)]
pub const STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// Default pixel limit: PIL's `Image.MAX_IMAGE_PIXELS` (about 89.5 megapixels).
pub const DEFAULT_MAX_PIXELS: u64 = 1024 * 1024 * 1024 / 4 / 3;

/// Turns image files into the normalised `3 x S x S` tensors a CLIP image tower takes.
#[derive(Debug, Clone, Copy)]
pub struct Preprocessor {
    /// Output side S (224 for most CLIPs, 336 for ViT-L/14@336px).
    pub image_size: u32,
    /// Images with more pixels than this are refused before decoding (decompression bombs).
    pub max_pixels: u64,
    /// Decode JPEGs at least twice the output size at reduced scale (1/2, 1/4 or 1/8, the
    /// largest that keeps the short side >= S), then resize with a bilinear filter (the DCT
    /// scaling has averaged already) and crop. Off by
    /// default: the pixels then differ from PIL's (docs/preprocessing.md has by how much).
    pub fast_decode: bool,
}

/// Output size and centre-crop offsets for an image of `w x h` (torchvision's rules).
fn geometry(w: usize, h: usize, s: usize) -> (usize, usize, Window) {
    // torchvision: the short side becomes S, the long side int(S * long / short).
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((s * long) as f64 / short as f64) as usize;
    let (new_w, new_h) = if w <= h { (s, new_long) } else { (new_long, s) };
    // CenterCrop: int(round((size - S) / 2.0)), Python's round-half-to-even.
    let offset = |size: usize| {
        let d = size - s;
        let half = d / 2;
        if d % 2 == 1 && half % 2 == 1 {
            half + 1
        } else {
            half
        }
    };
    let win = Window {
        x0: offset(new_w),
        y0: offset(new_h),
        w: s,
        h: s,
    };
    (new_w, new_h, win)
}

/// `MULDIV255(a, b)`: Pillow's rounded `a * b / 255`.
#[inline]
fn muldiv255(a: u8, b: u8) -> u8 {
    let t = u32::from(a) * u32::from(b) + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// Premultiplies the colour channels of `ch`-channel samples whose last channel is alpha.
fn premultiply(samples: &mut [u8], ch: usize) {
    for px in samples.chunks_exact_mut(ch) {
        let a = px[ch - 1];
        for v in &mut px[..ch - 1] {
            *v = muldiv255(*v, a);
        }
    }
}

/// Pillow's RGBa -> RGBA: integer division, alpha 0 and 255 left alone.
fn unpremultiply(samples: &mut [u8], ch: usize) {
    for px in samples.chunks_exact_mut(ch) {
        let a = u32::from(px[ch - 1]);
        if a != 0 && a != 255 {
            for v in &mut px[..ch - 1] {
                *v = ((255 * u32::from(*v)) / a).min(255) as u8;
            }
        }
    }
}

impl Preprocessor {
    pub fn new(image_size: u32) -> Preprocessor {
        Preprocessor {
            image_size,
            max_pixels: DEFAULT_MAX_PIXELS,
            fast_decode: false,
        }
    }

    /// Turns JPEG decoding at reduced scale on or off (see [`Preprocessor::fast_decode`]).
    /// Other formats, and JPEGs under twice the output size, are unaffected.
    pub fn with_fast_decode(mut self, fast_decode: bool) -> Preprocessor {
        self.fast_decode = fast_decode;
        self
    }

    pub fn with_max_pixels(mut self, max_pixels: u64) -> Preprocessor {
        self.max_pixels = max_pixels;
        self
    }

    /// Number of `f32` values per image: `3 * S * S`.
    pub fn tensor_len(&self) -> usize {
        3 * self.image_size as usize * self.image_size as usize
    }

    fn check(&self) -> Result<usize> {
        match self.image_size {
            0 => Err(PrepError::Config("image size must be at least 1".into())),
            s if s > 8192 => Err(PrepError::Config(format!("image size {s} is over 8192"))),
            s => Ok(s as usize),
        }
    }

    /// The `S x S` RGB image (HWC, 8-bit) that `ToTensor` receives: decoded, resized,
    /// centre-cropped and converted to RGB exactly as PIL does.
    pub fn rgb_from_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<u8>> {
        let c = self.cropped(bytes, name)?;
        Ok(if c.ycc { ycc_to_rgb8(&c.px) } else { c.px })
    }

    fn cropped(&self, bytes: &[u8], name: &str) -> Result<Cropped> {
        let s = self.check()?;
        let img = decode(bytes, name, self.max_pixels, self.fast_decode.then_some(s))?;
        Ok(resize_crop(img, s))
    }

    /// The normalised `3 x S x S` tensor (CHW, row-major) for an encoded image.
    /// `name` is used in error messages (usually the file name).
    pub fn from_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.tensor_len()];
        self.from_bytes_into(bytes, name, &mut out)?;
        Ok(out)
    }

    /// As [`Preprocessor::from_bytes`], writing into `out` (`3 * S * S` values).
    pub fn from_bytes_into(&self, bytes: &[u8], name: &str, out: &mut [f32]) -> Result<()> {
        if out.len() != self.tensor_len() {
            return Err(PrepError::Config(format!(
                "output buffer holds {} values, need {}",
                out.len(),
                self.tensor_len()
            )));
        }
        let c = self.cropped(bytes, name)?;
        if c.ycc {
            normalize_ycc_into(&c.px, out);
        } else {
            normalize_into(&c.px, out);
        }
        Ok(())
    }

    /// The normalised tensor for an image file.
    pub fn from_path(&self, path: &Path) -> Result<Vec<f32>> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PrepError::Io {
            name: name.clone(),
            source,
        })?;
        self.from_bytes(&bytes, &name)
    }

    /// Each file read, decoded and preprocessed in parallel on rayon's pool; one result per
    /// path, in order, so that a bad file does not sink the batch.
    pub fn from_paths<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Vec<Result<Vec<f32>>> {
        paths
            .par_iter()
            .map(|p| self.from_path(p.as_ref()))
            .collect()
    }

    /// A batch as one row-major `[n, 3, S, S]` buffer, processed in parallel; fails with the
    /// first bad file's error (in input order).
    pub fn batch_from_paths<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Result<Vec<f32>> {
        let n = self.tensor_len();
        let mut out = vec![0f32; paths.len() * n];
        let results: Vec<Result<()>> = out
            .par_chunks_mut(n.max(1))
            .zip(paths.par_iter())
            .map(|(chunk, p)| {
                let p = p.as_ref();
                let name = p.display().to_string();
                let bytes = std::fs::read(p).map_err(|source| PrepError::Io {
                    name: name.clone(),
                    source,
                })?;
                self.from_bytes_into(&bytes, &name, chunk)
            })
            .collect();
        results.into_iter().collect::<Result<()>>()?;
        Ok(out)
    }

    /// As [`Preprocessor::batch_from_paths`] for images already in memory `(name, bytes)`.
    pub fn batch_from_bytes<N: AsRef<str> + Sync, B: AsRef<[u8]> + Sync>(
        &self,
        images: &[(N, B)],
    ) -> Result<Vec<f32>> {
        let n = self.tensor_len();
        let mut out = vec![0f32; images.len() * n];
        let results: Vec<Result<()>> = out
            .par_chunks_mut(n.max(1))
            .zip(images.par_iter())
            .map(|(chunk, (name, bytes))| {
                self.from_bytes_into(bytes.as_ref(), name.as_ref(), chunk)
            })
            .collect();
        results.into_iter().collect::<Result<()>>()?;
        Ok(out)
    }
}

/// The `S x S` image `ToTensor` receives: RGB, or YCbCr as a reduced-scale JPEG decode
/// leaves it (converted in [`normalize_ycc_into`], once per output pixel).
struct Cropped {
    px: Vec<u8>,
    ycc: bool,
}

/// Resize in the source mode (as PIL's `Image.resize`), crop, then `convert("RGB")`.
fn resize_crop(img: Decoded, s: usize) -> Cropped {
    let Decoded {
        mode,
        width: w,
        height: h,
        full_width,
        full_height,
        denom,
        samples,
    } = img;
    // From the declared size: a reduced-scale decode is resized onto the exact path's grid,
    // its samples spanning the declared size / denom (fractional where denom does not
    // divide it: libjpeg's last sample is then partly padding).
    let (new_w, new_h, win) = geometry(full_width, full_height, s);
    let extent = (
        full_width as f64 / denom as f64,
        full_height as f64 / denom as f64,
    );
    // torchvision skips Resize when the size already matches; PIL would copy anyway.
    let resize = (new_w, new_h) != (w, h) || extent != (w as f64, h as f64);
    let ch = mode.channels();
    let cropped: Vec<u8> = match samples {
        Samples::U16(v) => {
            let out = if resize {
                bicubic_u16(&v, w, h, new_w, new_h, win)
            } else {
                crop(&v, w, 1, win)
            };
            // Pillow's I;16 -> RGB clips: any value >= 256 becomes white.
            let px = out.iter().flat_map(|&v| [v.min(255) as u8; 3]).collect();
            return Cropped { px, ycc: false };
        }
        Samples::U8(mut v) => {
            if !resize {
                crop(&v, w, ch, win)
            } else {
                match mode {
                    Mode::Indexed => nearest_u8(&v, w, h, ch, new_w, new_h, win),
                    Mode::La | Mode::Rgba => {
                        premultiply(&mut v, ch);
                        let mut out = bicubic_u8(&v, w, h, ch, new_w, new_h, win);
                        unpremultiply(&mut out, ch);
                        out
                    }
                    Mode::L | Mode::Rgb | Mode::Cmyk | Mode::I16 | Mode::YCbCr => {
                        // After a reduced-scale decode the pixels are no longer PIL's, and
                        // the DCT scaling has already averaged: the cheaper filter suffices.
                        let filter = if denom > 1 {
                            Filter::Linear
                        } else {
                            Filter::Bicubic
                        };
                        resize_u8_over(&v, (w, h), extent, ch, (new_w, new_h, win), filter)
                    }
                }
            }
        }
    };
    let px = if mode == Mode::Cmyk {
        cropped.chunks_exact(4).flat_map(cmyk_to_rgb).collect()
    } else {
        match ch {
            3 => cropped,
            1 => cropped.iter().flat_map(|&v| [v; 3]).collect(),
            2 => cropped.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
            _ => cropped
                .chunks_exact(ch)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        }
    };
    Cropped {
        px,
        ycc: mode == Mode::YCbCr,
    }
}

/// Pillow's `cmyk2rgb`: `255 - k` scaled by each ink's complement.
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = 255 - p[3];
    [0, 1, 2].map(|c| nk.saturating_sub(muldiv255(p[c], nk)))
}

fn crop<T: Copy>(v: &[T], w: usize, ch: usize, win: Window) -> Vec<T> {
    let mut out = Vec::with_capacity(win.w * win.h * ch);
    for y in win.y0..win.y0 + win.h {
        out.extend_from_slice(&v[(y * w + win.x0) * ch..(y * w + win.x0 + win.w) * ch]);
    }
    out
}

/// `ToTensor` (`x / 255` in f32) then `Normalize` (`(x - mean) / std` in f32), HWC -> CHW.
fn normalize_into(rgb: &[u8], out: &mut [f32]) {
    let lut: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - MEAN[c]) / STD[c]));
    let plane = rgb.len() / 3;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        r[i] = lut[0][px[0] as usize];
        g[i] = lut[1][px[1] as usize];
        b[i] = lut[2][px[2] as usize];
    }
}

/// JFIF's YCbCr -> RGB (the conversion libjpeg does, in float, without its rounding to
/// 8 bits), clamped to 0..=255.
#[inline]
fn ycc_rgb(px: &[u8]) -> [f32; 3] {
    let y = f32::from(px[0]);
    let cb = f32::from(px[1]) - 128.0;
    let cr = f32::from(px[2]) - 128.0;
    [
        y + 1.402 * cr,
        y - 0.344_136_3 * cb - 0.714_136_3 * cr,
        y + 1.772 * cb,
    ]
    .map(|v| v.clamp(0.0, 255.0))
}

fn ycc_to_rgb8(ycc: &[u8]) -> Vec<u8> {
    ycc.chunks_exact(3)
        .flat_map(|px| ycc_rgb(px).map(|v| (v + 0.5) as u8))
        .collect()
}

/// [`normalize_into`] for YCbCr samples: colour conversion and normalisation in one step,
/// HWC -> CHW.
fn normalize_ycc_into(ycc: &[u8], out: &mut [f32]) {
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * STD[c]));
    let bias: [f32; 3] = std::array::from_fn(|c| -MEAN[c] / STD[c]);
    let plane = ycc.len() / 3;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in ycc.chunks_exact(3).enumerate() {
        let [vr, vg, vb] = ycc_rgb(px);
        r[i] = vr * scale[0] + bias[0];
        g[i] = vg * scale[1] + bias[1];
        b[i] = vb * scale[2] + bias[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_geometry() {
        // 640x480 -> short side 224: int(224 * 640 / 480) = 298; crop left round(37.0) = 37.
        let (w, h, win) = geometry(640, 480, 224);
        assert_eq!((w, h, win.x0, win.y0), (298, 224, 37, 0));
        // Odd differences use round-half-to-even: 225 - 224 = 1 -> round(0.5) = 0, 3 -> 2.
        assert_eq!(geometry(225, 224, 224).2.x0, 0);
        assert_eq!(geometry(227, 224, 224).2.x0, 2);
        assert_eq!(geometry(229, 224, 224).2.x0, 2);
        let (w, h, win) = geometry(30, 97, 48);
        assert_eq!((w, h, win.y0), (48, 155, 54));
    }

    #[test]
    fn ycbcr_converts_as_jfif_and_normalises_in_one_step() {
        // Gray stays gray; out-of-range colours clamp (Y 255, Cb 255, Cr 255: R 433, G 121,
        // B 480).
        assert_eq!(
            ycc_to_rgb8(&[128, 128, 128, 0, 128, 128, 255, 128, 128, 255, 255, 255]),
            [128, 128, 128, 0, 0, 0, 255, 255, 255, 255, 121, 255]
        );
        // Pure red as JFIF encodes it (Y 76.2, Cb 85.0, Cr 255.5 -> 255).
        assert_eq!(ycc_to_rgb8(&[76, 85, 255]), [254, 0, 0]);
        // One step = convert, round to 8 bits, normalise: within half a level.
        let n = 97;
        let ycc: Vec<u8> = (0..3 * n).map(|i| (i * 37 % 256) as u8).collect();
        let mut one = vec![0f32; 3 * n];
        normalize_ycc_into(&ycc, &mut one);
        let mut two = vec![0f32; 3 * n];
        normalize_into(&ycc_to_rgb8(&ycc), &mut two);
        for c in 0..3 {
            for i in 0..n {
                let d = (one[c * n + i] - two[c * n + i]).abs();
                assert!(
                    d <= 0.5 / 255.0 / STD[c] + 1e-5,
                    "channel {c} pixel {i}: {d}"
                );
            }
        }
    }

    #[test]
    fn alpha_premultiplication_round_trip_like_pillow() {
        assert_eq!(muldiv255(255, 255), 255);
        assert_eq!(muldiv255(200, 128), 100);
        let mut px = [200u8, 10, 0, 128];
        premultiply(&mut px, 4);
        assert_eq!(px, [100, 5, 0, 128]);
        unpremultiply(&mut px, 4);
        assert_eq!(px, [199, 9, 0, 128]);
    }
}
