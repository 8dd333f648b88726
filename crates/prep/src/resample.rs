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

/// Pillow's triangle kernel (BILINEAR), support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// The resampling filter. PIL's transform is `Bicubic`; `Linear` is only used after a
/// reduced-scale JPEG decode (`--fast-decode`), whose pixels are PIL's no more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    Bicubic,
    /// The triangle kernel at one input sample's width, i.e. linear interpolation (2 taps),
    /// while the image shrinks by less than 2x; widened with the scale beyond that, as
    /// Pillow's BILINEAR. After DCT scaling the residual shrink is under 2x, except at 1/8
    /// on images over 16 times the output size; the DCT scaling has done the averaging.
    Linear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Linear => 1.0,
        }
    }
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => bicubic(x),
            Filter::Linear => triangle(x),
        }
    }
    /// How far the kernel stretches for a given input/output scale (Pillow: `max(scale, 1)`).
    fn stretch(self, scale: f64) -> f64 {
        match self {
            Filter::Linear if scale < 2.0 => 1.0,
            _ => scale.max(1.0),
        }
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
    coeffs_over(in_size, in_size as f64, out_size, Filter::Bicubic)
}

/// As [`coeffs`] for `in_size` samples that span `extent` sample widths (Pillow's resize
/// with a box `(0, extent)`): a JPEG decoded at 1/d covers `size / d` of them, which is
/// fractional when d does not divide the size; taps stay clamped to the `in_size` samples.
pub(crate) fn coeffs_over(in_size: usize, extent: f64, out_size: usize, filter: Filter) -> Coeffs {
    // Pillow computes `(double)(in1 - in0) / outSize` with float box coordinates; sizes
    // below 2^24 are exact in float, so this is the same number.
    let scale = extent / out_size as f64;
    let filterscale = filter.stretch(scale);
    let support = filter.support() * filterscale;
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
            *w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * inv);
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

/// Pillow 13's pass order: vertical first only when the height shrinks by more than twice
/// as many pixels as the width does (Pillow 12 and older always went horizontal first).
pub(crate) fn horizontal_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    !(dh > 0 && dh > dw * 2)
}

/// Coefficients in Pillow's 8-bit fixed point.
struct Fixed {
    c: Coeffs,
    k: Vec<i32>,
    /// The same taps padded with zero weights to `width` per output position, starting at
    /// `wide_start` (moved left at the input's end so that `width` samples exist): a kernel
    /// of constant width runs as straight-line code. Integer sums, so the zeros change
    /// nothing.
    width: usize,
    wide_start: Vec<usize>,
    wide: Vec<i32>,
}

impl Fixed {
    fn new(in_size: usize, extent: f64, out_size: usize, filter: Filter) -> Fixed {
        let c = coeffs_over(in_size, extent, out_size, filter);
        let k = fixed(&c.k);
        // Never above `in_size`: each kernel is clamped to the input.
        let width = c.len.iter().copied().max().unwrap_or(0);
        let mut wide_start = Vec::with_capacity(if width > 0 { out_size } else { 0 });
        let mut wide = vec![0; if width > 0 { out_size * width } else { 0 }];
        if width > 0 {
            for o in 0..out_size {
                let start = c.start[o].min(in_size - width);
                let at = o * width + c.start[o] - start;
                wide[at..at + c.len[o]].copy_from_slice(&k[o * c.ksize..o * c.ksize + c.len[o]]);
                wide_start.push(start);
            }
        }
        Fixed {
            c,
            k,
            width,
            wide_start,
            wide,
        }
    }
    fn taps(&self, o: usize) -> (usize, &[i32]) {
        let at = o * self.c.ksize;
        (self.c.start[o], &self.k[at..at + self.c.len[o]])
    }
    /// Input range read by outputs `o0..o0 + n` (the padded kernels included).
    fn span(&self, o0: usize, n: usize) -> (usize, usize) {
        let mut lo = usize::MAX;
        let mut hi = 0;
        for o in o0..o0 + n {
            // A padded kernel covers its unpadded one.
            let (start, len) = if self.width > 0 {
                (self.wide_start[o], self.width)
            } else {
                (self.c.start[o], self.c.len[o])
            };
            lo = lo.min(start);
            hi = hi.max(start + len);
        }
        (lo.min(hi), hi)
    }
}

/// Horizontal pass: rows `rows` of `src` (`src_w` pixels wide), output columns `cols`, whose
/// kernel positions are relative to source column `col_off`.
fn hpass(
    src: &[u8],
    src_w: usize,
    ch: usize,
    rows: (usize, usize),
    cols: (usize, usize),
    f: &Fixed,
    col_off: usize,
) -> Vec<u8> {
    let n = cols.1 - cols.0;
    let mut out = vec![0u8; (rows.1 - rows.0) * n * ch];
    for (r, out_row) in out.chunks_exact_mut((n * ch).max(1)).enumerate() {
        let line = &src[(rows.0 + r) * src_w * ch..(rows.0 + r + 1) * src_w * ch];
        if ch == 3 && hpass_rgb_row(line, out_row, f, cols.0, col_off) {
            continue;
        }
        for (i, out_px) in out_row.chunks_exact_mut(ch).enumerate() {
            let (start, k) = f.taps(cols.0 + i);
            let px = &line[(start - col_off) * ch..(start - col_off + k.len()) * ch];
            horizontal_px(px, k, out_px);
        }
    }
    out
}

/// One RGB row with the padded kernels, `K` taps each: the loop over taps unrolls, which the
/// per-pixel kernel lengths prevent (a 2-3 tap bilinear row ran at a quarter of the speed of
/// the vectorised vertical pass). False when no specialisation fits `f`.
fn hpass_rgb_row(line: &[u8], out: &mut [u8], f: &Fixed, o0: usize, col_off: usize) -> bool {
    fn row<const K: usize>(line: &[u8], out: &mut [u8], f: &Fixed, o0: usize, col_off: usize) {
        const HALF: i32 = 1 << (PRECISION_BITS - 1);
        let (pixels, _) = line.as_chunks::<3>();
        let (out, _) = out.as_chunks_mut::<3>();
        let n = out.len();
        let starts = &f.wide_start[o0..o0 + n];
        let (weights, _) = f.wide[o0 * K..(o0 + n) * K].as_chunks::<K>();
        for ((px, &start), w) in out.iter_mut().zip(starts).zip(weights) {
            let src: &[[u8; 3]; K] = pixels[start - col_off..][..K].try_into().expect("K pixels");
            let mut s = [HALF; 3];
            for (p, &w) in src.iter().zip(w) {
                for c in 0..3 {
                    s[c] += i32::from(p[c]) * w;
                }
            }
            *px = s.map(clip8);
        }
    }
    match f.width {
        1 => row::<1>(line, out, f, o0, col_off),
        2 => row::<2>(line, out, f, o0, col_off),
        3 => row::<3>(line, out, f, o0, col_off),
        4 => row::<4>(line, out, f, o0, col_off),
        5 => row::<5>(line, out, f, o0, col_off),
        6 => row::<6>(line, out, f, o0, col_off),
        7 => row::<7>(line, out, f, o0, col_off),
        8 => row::<8>(line, out, f, o0, col_off),
        9 => row::<9>(line, out, f, o0, col_off),
        10 => row::<10>(line, out, f, o0, col_off),
        _ => return false,
    }
    true
}

/// Vertical pass: output rows `rows`, source columns `cols` of `src` (`src_w` wide), kernel
/// positions relative to source row `row_off`. Accumulates whole rows, which vectorises.
fn vpass(
    src: &[u8],
    src_w: usize,
    ch: usize,
    cols: (usize, usize),
    rows: (usize, usize),
    f: &Fixed,
    row_off: usize,
) -> Vec<u8> {
    let stride = (cols.1 - cols.0) * ch;
    let mut out = vec![0u8; (rows.1 - rows.0) * stride];
    let mut acc = vec![0i32; stride];
    for (i, out_row) in out.chunks_exact_mut(stride.max(1)).enumerate() {
        let (start, k) = f.taps(rows.0 + i);
        acc.fill(1 << (PRECISION_BITS - 1));
        for (t, &w) in k.iter().enumerate() {
            let r = start + t - row_off;
            let line = &src[(r * src_w + cols.0) * ch..(r * src_w + cols.0) * ch + stride];
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

fn block<T: Copy>(
    src: &[T],
    src_w: usize,
    ch: usize,
    cols: (usize, usize),
    rows: (usize, usize),
) -> Vec<T> {
    let mut out = Vec::with_capacity((rows.1 - rows.0) * (cols.1 - cols.0) * ch);
    for r in rows.0..rows.1 {
        out.extend_from_slice(&src[(r * src_w + cols.0) * ch..(r * src_w + cols.1) * ch]);
    }
    out
}

/// Bicubic resize of interleaved 8-bit samples (`ch` channels) from `in_w x in_h` to
/// `out_w x out_h`, returning only `win`: Pillow's two passes in Pillow's order, with its
/// 8-bit rounding in between. A pass whose size does not change is skipped, as in Pillow.
pub(crate) fn bicubic_u8(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    ch: usize,
    out_w: usize,
    out_h: usize,
    win: Window,
) -> Vec<u8> {
    resize_u8_over(
        src,
        (in_w, in_h),
        (in_w as f64, in_h as f64),
        ch,
        (out_w, out_h, win),
        Filter::Bicubic,
    )
}

/// As [`bicubic_u8`] for samples spanning `extent` (width, height) sample widths (see
/// [`coeffs_over`]), with the given filter. A pass is skipped only when its size and extent
/// are both unchanged.
pub(crate) fn resize_u8_over(
    src: &[u8],
    (in_w, in_h): (usize, usize),
    (ext_w, ext_h): (f64, f64),
    ch: usize,
    (out_w, out_h, win): (usize, usize, Window),
    filter: Filter,
) -> Vec<u8> {
    let changes = |n_in: usize, ext: f64, n_out: usize| n_out != n_in || ext != n_in as f64;
    let hf = changes(in_w, ext_w, out_w).then(|| Fixed::new(in_w, ext_w, out_w, filter));
    let vf = changes(in_h, ext_h, out_h).then(|| Fixed::new(in_h, ext_h, out_h, filter));
    let wcols = (win.x0, win.x0 + win.w);
    let wrows = (win.y0, win.y0 + win.h);
    // Source columns / rows the window's kernels read.
    let xspan = hf.as_ref().map_or(wcols, |f| f.span(win.x0, win.w));
    let yspan = vf.as_ref().map_or(wrows, |f| f.span(win.y0, win.h));
    if horizontal_first(in_w, in_h, out_w, out_h) {
        let t = match &hf {
            Some(f) => hpass(src, in_w, ch, yspan, wcols, f, 0),
            None => block(src, in_w, ch, wcols, yspan),
        };
        match &vf {
            Some(f) => vpass(&t, win.w, ch, (0, win.w), wrows, f, yspan.0),
            None => t,
        }
    } else {
        let t = match &vf {
            Some(f) => vpass(src, in_w, ch, xspan, wrows, f, 0),
            None => block(src, in_w, ch, xspan, wrows),
        };
        match &hf {
            Some(f) => hpass(&t, xspan.1 - xspan.0, ch, (0, win.h), wcols, f, xspan.0),
            None => t,
        }
    }
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
/// zero and clamping to 0..65535 after each pass, passes in Pillow's order. Rare, so it
/// resizes the whole image and crops afterwards.
pub(crate) fn bicubic_u16(
    src: &[u16],
    in_w: usize,
    in_h: usize,
    out_w: usize,
    out_h: usize,
    win: Window,
) -> Vec<u16> {
    fn round16(ss: f64) -> u16 {
        let v = if ss >= 0.0 {
            (ss + 0.5) as i64
        } else {
            (ss - 0.5) as i64
        };
        v.clamp(0, 65535) as u16
    }
    // One pass along rows (`horizontal`) or columns, on a `w x h` image.
    fn pass(src: &[u16], w: usize, h: usize, out_n: usize, horizontal: bool) -> Vec<u16> {
        let (n_in, lines) = if horizontal { (w, h) } else { (h, w) };
        let c = coeffs(n_in, out_n);
        let (ow, oh) = if horizontal { (out_n, h) } else { (w, out_n) };
        let mut out = vec![0u16; ow * oh];
        for line in 0..lines {
            for o in 0..out_n {
                let k = &c.k[o * c.ksize..o * c.ksize + c.len[o]];
                let mut ss = 0.0;
                for (t, &wt) in k.iter().enumerate() {
                    let i = c.start[o] + t;
                    let v = if horizontal {
                        src[line * w + i]
                    } else {
                        src[i * w + line]
                    };
                    ss += f64::from(v) * wt;
                }
                let at = if horizontal {
                    line * ow + o
                } else {
                    o * ow + line
                };
                out[at] = round16(ss);
            }
        }
        out
    }
    let (need_h, need_v) = (out_w != in_w, out_h != in_h);
    let mut img = src.to_vec();
    let (mut w, mut h) = (in_w, in_h);
    let order = if horizontal_first(in_w, in_h, out_w, out_h) {
        [true, false]
    } else {
        [false, true]
    };
    for horizontal in order {
        if horizontal && need_h {
            img = pass(&img, w, h, out_w, true);
            w = out_w;
        } else if !horizontal && need_v {
            img = pass(&img, w, h, out_h, false);
            h = out_h;
        }
    }
    block(
        &img,
        w,
        1,
        (win.x0, win.x0 + win.w),
        (win.y0, win.y0 + win.h),
    )
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
    fn padded_kernels_give_the_per_pixel_sums() {
        let mut seed = 7u32;
        let mut byte = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as u8
        };
        for (in_w, ext, out_w, filter) in [
            (640, 640.0, 298, Filter::Bicubic),
            (320, 320.0, 298, Filter::Linear),
            (321, 320.5, 299, Filter::Linear),
            (97, 97.0, 48, Filter::Bicubic),
            (24, 24.0, 224, Filter::Bicubic),
            (3, 3.0, 10, Filter::Bicubic),
        ] {
            let rows = 4;
            let src: Vec<u8> = (0..in_w * rows * 3).map(|_| byte()).collect();
            let f = Fixed::new(in_w, ext, out_w, filter);
            let mut plain = Fixed::new(in_w, ext, out_w, filter);
            plain.width = 0;
            let cols = (out_w / 5, out_w - out_w / 7);
            let a = hpass(&src, in_w, 3, (0, rows), cols, &f, 0);
            let b = hpass(&src, in_w, 3, (0, rows), cols, &plain, 0);
            assert_eq!(a, b, "{in_w} -> {out_w} {filter:?}");
            // A block cut to the window's span, as the vertical-first order passes it.
            let (x0, x1) = f.span(cols.0, cols.1 - cols.0);
            let cut = block(&src, in_w, 3, (x0, x1), (0, rows));
            assert_eq!(hpass(&cut, x1 - x0, 3, (0, rows), cols, &f, x0), b);
        }
    }

    #[test]
    fn pillow_13_pass_order() {
        assert!(horizontal_first(640, 480, 298, 224));
        assert!(!horizontal_first(33, 90, 32, 87));
        assert!(!horizontal_first(60, 40, 61, 20));
        assert!(horizontal_first(24, 40, 32, 53));
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
