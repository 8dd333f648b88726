//! Batches for the device: images decoded on a thread pool, a bounded queue of ready
//! batches (so memory stays `prefetch` batches whatever the dataset size), deterministic
//! order and augmentation for a seed.

use crate::data::{BadPair, Pair, Rng};
use crate::trainer::Stage;
use crate::{Result, TrainError};
use cliptune_prep::Codec;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Tensor;

/// A batch on the CPU: `pixels` `[B, 3, S, S]` f32, `tokens` `[B, L]` i64.
pub struct Batch {
    pub pixels: Tensor,
    pub tokens: Tensor,
    /// Positions of the pairs in the list the loader was given.
    pub indices: Vec<usize>,
}

/// Augmentation stream: random resized crops seeded by (seed, epoch, pair index).
#[derive(Clone, Copy, Debug)]
pub struct Augment {
    pub seed: u64,
    pub epoch: u64,
}

/// Iterates batches produced by a background thread.
pub struct Loader {
    rx: Option<Receiver<Result<Batch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
    waited: Duration,
    meter: Arc<LoadMeter>,
    threads: usize,
}

/// Thread-seconds the decode threads spent reading image bytes and decoding them (with the
/// augmentation), and the images they handled.
#[derive(Debug, Default)]
pub struct LoadMeter {
    read_nanos: AtomicU64,
    decode_nanos: AtomicU64,
    images: AtomicU64,
}

impl LoadMeter {
    fn add(&self, read: Duration, decode: Duration) {
        self.read_nanos
            .fetch_add(read.as_nanos() as u64, Ordering::Relaxed);
        self.decode_nanos
            .fetch_add(decode.as_nanos() as u64, Ordering::Relaxed);
        self.images.fetch_add(1, Ordering::Relaxed);
    }
}

impl Loader {
    /// Starts producing `batches` (lists of indices into `pairs`), at most `prefetch`
    /// ahead of the consumer.
    pub fn spawn(
        pairs: Arc<Vec<Pair>>,
        batches: Vec<Vec<usize>>,
        codec: Arc<Codec>,
        augment: Option<Augment>,
        pool: Arc<rayon::ThreadPool>,
        prefetch: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let meter = Arc::new(LoadMeter::default());
        let threads = pool.current_num_threads();
        let m = meter.clone();
        let handle = std::thread::Builder::new()
            .name("cliptune-loader".into())
            .spawn(move || {
                for indices in batches {
                    if stop2.load(Ordering::Relaxed) {
                        return;
                    }
                    let batch = pool.install(|| make_batch(&pairs, indices, &codec, augment, &m));
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the loader thread");
        Self {
            rx: Some(rx),
            stop,
            handle: Some(handle),
            waited: Duration::ZERO,
            meter,
            threads,
        }
    }

    /// Reading and decoding so far: the threads' busy time divided by their number (wall
    /// clock equivalent, comparable with the device's time), and the images.
    pub fn stages(&self) -> (Stage, Stage) {
        let images = self.meter.images.load(Ordering::Relaxed) as usize;
        let per_thread = |nanos: &AtomicU64| {
            nanos.load(Ordering::Relaxed) as f64 / 1e9 / self.threads.max(1) as f64
        };
        (
            Stage::new(per_thread(&self.meter.read_nanos), images),
            Stage::new(per_thread(&self.meter.decode_nanos), images),
        )
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Time the consumer spent blocked waiting for data.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let t = Instant::now();
        let item = self.rx.as_ref()?.recv().ok();
        self.waited += t.elapsed();
        item
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting to send.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn make_batch(
    pairs: &[Pair],
    indices: Vec<usize>,
    codec: &Codec,
    augment: Option<Augment>,
    meter: &LoadMeter,
) -> Result<Batch> {
    let s = codec.image_size();
    let images: Vec<std::result::Result<Vec<f32>, String>> = indices
        .par_iter()
        .map(|&i| {
            let p = &pairs[i];
            let reading = Instant::now();
            let bytes = p.image.read().map_err(|e| e.to_string())?;
            let decoding = Instant::now();
            let mut px = codec.image(&bytes, &p.id)?;
            if let Some(a) = augment {
                let mut rng = Rng::derive(a.seed, a.epoch, i as u64);
                px = random_resized_crop(&px, s, &mut rng);
            }
            meter.add(decoding - reading, decoding.elapsed());
            Ok(px)
        })
        .collect();
    let images = images
        .into_iter()
        .zip(&indices)
        .map(|(img, &i)| {
            img.map_err(|e| {
                TrainError::Data(format!(
                    "{}: {e} (it was readable when the run started)",
                    pairs[i].id
                ))
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let ctx = codec.context_length();
    let mut ids = Vec::with_capacity(indices.len() * ctx);
    for &i in &indices {
        ids.extend(codec.tokens(&pairs[i].caption));
    }
    let b = indices.len() as i64;
    Ok(Batch {
        pixels: cliptune_clip::pixel_batch(&images, s as i64)?,
        tokens: Tensor::from_slice(&ids).view([b, ctx as i64]),
        indices,
    })
}

/// Decodes every pair once (in parallel) and lists those that cannot be used: unreadable
/// or corrupt images, empty captions.
pub fn find_bad(pairs: &[Pair], codec: &Codec, pool: &rayon::ThreadPool) -> Vec<BadPair> {
    pool.install(|| {
        pairs
            .par_iter()
            .filter_map(|p| {
                let reason = if p.caption.trim().is_empty() {
                    Some("empty caption".to_string())
                } else {
                    match p.image.read() {
                        Err(e) => Some(format!("cannot read image: {e}")),
                        Ok(bytes) => codec
                            .image(&bytes, &p.id)
                            .err()
                            .map(|e| format!("cannot decode image: {e}")),
                    }
                };
                reason.map(|reason| BadPair {
                    id: p.id.clone(),
                    reason,
                })
            })
            .collect()
    })
}

/// torchvision's `RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3))` on an already
/// preprocessed `[3, s, s]` image, with bilinear resampling back to `s x s`.
pub fn random_resized_crop(chw: &[f32], s: usize, rng: &mut Rng) -> Vec<f32> {
    let area = (s * s) as f64;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut crop = None;
    for _ in 0..10 {
        let target = area * (0.9 + 0.1 * rng.next_f64());
        let ratio = (log_lo + (log_hi - log_lo) * rng.next_f64()).exp();
        let w = (target * ratio).sqrt().round() as usize;
        let h = (target / ratio).sqrt().round() as usize;
        if w > 0 && h > 0 && w <= s && h <= s {
            let top = rng.below(s - h + 1);
            let left = rng.below(s - w + 1);
            crop = Some((top, left, h, w));
            break;
        }
    }
    let (top, left, h, w) = crop.unwrap_or((0, 0, s, s));
    let mut out = vec![0f32; 3 * s * s];
    let sample = |o: usize, n: usize, len: usize| -> (usize, usize, f32) {
        // Align pixel centres, as `align_corners=False`.
        let x = ((o as f64 + 0.5) * len as f64 / n as f64 - 0.5).clamp(0.0, (len - 1) as f64);
        let x0 = x.floor() as usize;
        let x1 = (x0 + 1).min(len - 1);
        (x0, x1, (x - x0 as f64) as f32)
    };
    let ys: Vec<_> = (0..s).map(|o| sample(o, s, h)).collect();
    let xs: Vec<_> = (0..s).map(|o| sample(o, s, w)).collect();
    for c in 0..3 {
        let plane = &chw[c * s * s..(c + 1) * s * s];
        let at = |y: usize, x: usize| plane[(top + y) * s + left + x];
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                let a = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let b = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out[c * s * s + oy * s + ox] = a * (1.0 - fy) + b * fy;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_is_identity_for_a_constant_image_and_seeded() {
        let s = 8;
        let img = vec![0.25f32; 3 * s * s];
        let out = random_resized_crop(&img, s, &mut Rng::new(3));
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6));
        let ramp: Vec<f32> = (0..3 * s * s).map(|i| (i % s) as f32).collect();
        let a = random_resized_crop(&ramp, s, &mut Rng::new(5));
        let b = random_resized_crop(&ramp, s, &mut Rng::new(5));
        assert_eq!(a, b);
        // A horizontal ramp stays monotone along x after a crop and resize.
        for row in a.chunks(s) {
            assert!(row.windows(2).all(|w| w[1] >= w[0] - 1e-5), "{row:?}");
        }
    }
}
