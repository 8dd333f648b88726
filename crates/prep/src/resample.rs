//! Pillow's resampling, reproduced operation for operation (libImaging/Resample.c and the
//! NEAREST path of Geometry.c), restricted to a crop window of the output: each output pixel
//! depends only on its own kernel, so computing just the centre crop gives the same bytes.

/// Fixed-point fraction bits of Pillow's 8-bit resampler: `32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (a = -0.5), support 2. Same operation order as the C code.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output position: first input index and normalised weights (`precompute_coeffs`).
pub(crate) struct Coeffs {
    pub ksize: usize,
    pub start: Vec<usize>,
    pub len: Vec<usize>,
    /// `ksize` weights per output position, zero-padded.
    pub k: Vec<f64>,
}

pub(crate) fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    // Pillow computes `(double)(in1 - in0) / outSize` with float box coordinates; sizes
    // below 2^24 are exact in float, so this is the same number.
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filterscale;
    let mut c = Coeffs {
        ksize,
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        k: vec![0.0; out_size * ksize],
    };
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) truncates toward zero; negative values are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let k = &mut c.k[xx * ksize..xx * ksize + n];
        let mut ww = 0.0;
        for (x, w) in k.iter_mut().enumerate() {
            *w = bicubic((x as f64 + xmin as f64 - center + 0.5) * inv);
            ww += *w;
        }
        if ww != 0.0 {
            for w in k.iter_mut() {
                *w /= ww;
            }
        }
        c.start.push(xmin);
        c.len.push(n);
    }
    c
}

/// `normalize_coeffs_8bpc`: round half away from zero to 22 fraction bits.
fn fixed(k: &[f64]) -> Vec<i32> {
    let one = f64::from(1u32 << PRECISION_BITS);
    k.iter()
        .map(|&w| {
            if w < 0.0 {
                (-0.5 + w * one) as i32
            } else {
                (0.5 + w * one) as i32
            }
        })
        .collect()
}

#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Window of the resized image to produce: columns `x0..x0 + w`, rows `y0..y0 + h`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
}

/// Bicubic resize of interleaved 8-bit samples (`ch` channels) from `in_w x in_h` to
/// `out_w x out_h`, returning only `win`: Pillow's horizontal pass, 8-bit rounding, then its
/// vertical pass. A pass whose size does not change is skipped, as in Pillow.
pub(crate) fn bicubic_u8(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    ch: usize,
    out_w: usize,
    out_h: usize,
    win: Window,
) -> Vec<u8> {
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    let vc = need_v.then(|| coeffs(in_h, out_h));
    // Input rows the window's vertical kernels read.
    let (row0, row1) = match &vc {
        Some(vc) => (
            vc.start[win.y0],
            (win.y0..win.y0 + win.h)
                .map(|y| vc.start[y] + vc.len[y])
                .max()
                .unwrap_or(0),
        ),
        None => (win.y0, win.y0 + win.h),
    };
    // Horizontal pass over those rows, window columns only.
    let rows = row1 - row0;
    let tmp: Vec<u8> = if need_h {
        let hc = coeffs(in_w, out_w);
        let kk = fixed(&hc.k);
        let mut tmp = vec![0u8; rows * win.w * ch];
        for (r, out_row) in tmp.chunks_exact_mut(win.w * ch).enumerate() {
            let line = &src[(row0 + r) * in_w * ch..(row0 + r + 1) * in_w * ch];
            for (i, out_px) in out_row.chunks_exact_mut(ch).enumerate() {
                let xx = win.x0 + i;
                let k = &kk[xx * hc.ksize..xx * hc.ksize + hc.len[xx]];
                let px = &line[hc.start[xx] * ch..(hc.start[xx] + k.len()) * ch];
                horizontal_px(px, k, out_px);
            }
        }
        tmp
    } else {
        let mut tmp = Vec::with_capacity(rows * win.w * ch);
        for r in row0..row1 {
            tmp.extend_from_slice(&src[(r * in_w + win.x0) * ch..(r * in_w + win.x0 + win.w) * ch]);
        }
        tmp
    };
    let Some(vc) = vc else {
        return tmp;
    };
    // Vertical pass: accumulate whole rows, which vectorises.
    let kk = fixed(&vc.k);
    let stride = win.w * ch;
    let mut out = vec![0u8; win.h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let y = win.y0 + yy;
        let k = &kk[y * vc.ksize..y * vc.ksize + vc.len[y]];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (t, &w) in k.iter().enumerate() {
            let r = vc.start[y] + t - row0;
            let line = &tmp[r * stride..(r + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[inline]
fn horizontal_px(px: &[u8], k: &[i32], out: &mut [u8]) {
    const HALF: i32 = 1 << (PRECISION_BITS - 1);
    match out.len() {
        3 => {
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (p, &w) in px.chunks_exact(3).zip(k) {
                s0 += i32::from(p[0]) * w;
                s1 += i32::from(p[1]) * w;
                s2 += i32::from(p[2]) * w;
            }
            out[0] = clip8(s0);
            out[1] = clip8(s1);
            out[2] = clip8(s2);
        }
        ch => {
            for c in 0..ch {
                let mut s = HALF;
                for (p, &w) in px.chunks_exact(ch).zip(k) {
                    s += i32::from(p[c]) * w;
                }
                out[c] = clip8(s);
            }
        }
    }
}

/// Pillow's 16-bit ("I;16") bicubic resize: double accumulation, rounding half away from
/// zero, clamping to 0..65535 after each pass.
pub(crate) fn bicubic_u16(
    src: &[u16],
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
    win: Window,
) -> Vec<u16> {
    let round16 = |ss: f64| {
        let v = if ss >= 0.0 {
            (ss + 0.5) as i64
        } else {
            (ss - 0.5) as i64
        };
        v.clamp(0, 65535) as u16
    };
    let (hc, vc) = (
        (out_w != in_w).then(|| coeffs(in_w, out_w)),
        (out_h != in_h).then(|| coeffs(in_h, out_h)),
    );
    let col = |row: &[u16], xx: usize| -> u16 {
        match &hc {
            Some(hc) => {
                let k = &hc.k[xx * hc.ksize..xx * hc.ksize + hc.len[xx]];
                let mut ss = 0.0;
                for (t, &w) in k.iter().enumerate() {
                    ss += f64::from(row[hc.start[xx] + t]) * w;
                }
                round16(ss)
            }
            None => row[xx],
        }
    };
    let mut out = Vec::with_capacity(win.w * win.h);
    for yy in win.y0..win.y0 + win.h {
        for xx in win.x0..win.x0 + win.w {
            let v = match &vc {
                Some(vc) => {
                    let k = &vc.k[yy * vc.ksize..yy * vc.ksize + vc.len[yy]];
                    let mut ss = 0.0;
                    for (t, &w) in k.iter().enumerate() {
                        let y = vc.start[yy] + t;
                        ss += f64::from(col(&src[y * in_w..(y + 1) * in_w], xx)) * w;
                    }
                    round16(ss)
                }
                None => col(&src[yy * in_w..(yy + 1) * in_w], xx),
            };
            out.push(v);
        }
    }
    out
}

/// Pillow's NEAREST resize (`ImagingScaleAffine`): source positions accumulate
/// `in/out` step by step in double precision, starting at half a step.
pub(crate) fn nearest_u8(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    ch: usize,
    out_w: usize,
    out_h: usize,
    win: Window,
) -> Vec<u8> {
    let positions = |in_size: usize, out_size: usize| -> Vec<usize> {
        let step = in_size as f64 / out_size as f64;
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let p = (pos as usize).min(in_size - 1);
                pos += step;
                p
            })
            .collect()
    };
    let xs = positions(in_w, out_w);
    let ys = positions(in_h, out_h);
    let mut out = Vec::with_capacity(win.w * win.h * ch);
    for &y in &ys[win.y0..win.y0 + win.h] {
        for &x in &xs[win.x0..win.x0 + win.w] {
            out.extend_from_slice(&src[(y * in_w + x) * ch..(y * in_w + x + 1) * ch]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_and_cover_the_input() {
        for (i, o) in [(640, 224), (24, 224), (97, 48), (300, 299)] {
            let c = coeffs(i, o);
            for xx in 0..o {
                let s: f64 = c.k[xx * c.ksize..(xx + 1) * c.ksize].iter().sum();
                assert!((s - 1.0).abs() < 1e-9, "{i}->{o} at {xx}: {s}");
                assert!(c.start[xx] + c.len[xx] <= i);
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 50 * 30 * 3];
        let win = Window {
            x0: 0,
            y0: 0,
            w: 20,
            h: 12,
        };
        assert!(bicubic_u8(&src, 50, 30, 3, 20, 12, win)
            .iter()
            .all(|&v| v == 77));
        let up = Window {
            x0: 5,
            y0: 5,
            w: 60,
            h: 60,
        };
        assert!(bicubic_u8(&src, 50, 30, 3, 120, 72, up)
            .iter()
            .all(|&v| v == 77));
    }
}
