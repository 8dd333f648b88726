//! Exact cosine search over an in-memory matrix per feature set.
//!
//! SQLite holds the vectors (f32 little-endian blobs); each feature set gets a contiguous
//! row-major matrix of L2-normalized rows, plus an int8 copy of it (one scale per row). A
//! query first scans the int8 copy (a quarter of the memory traffic, which is what bounds
//! a scan of a million rows), keeps a few times k candidates, and rescores them in f32.
//! The int8 error of each row is bounded (half a step per component), so the result is
//! checked to be the exact top-k; when the bound cannot prove it, a second pass rescores
//! every row that could still beat the k-th score. Every upsert gives its rows a new `seq`
//! (store-wide, increasing); before a query the cache loads the rows with a `seq` above the
//! last one it saw, so writes by this process or another process sharing the home are
//! visible to the next query without reloading everything.

use crate::error::{Result, StoreError};
use rayon::prelude::*;
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Top-k searches since the process started, and how many of them needed the second pass
/// (the int8 bound could not prove the top-k alone): exported by the worker's /metrics.
static SEARCHES: AtomicU64 = AtomicU64::new(0);
static SECOND_PASSES: AtomicU64 = AtomicU64::new(0);

/// (searches, second passes) so far in this process.
pub fn search_counts() -> (u64, u64) {
    (
        SEARCHES.load(Ordering::Relaxed),
        SECOND_PASSES.load(Ordering::Relaxed),
    )
}

/// The rows of one feature set.
#[derive(Default)]
pub struct Matrix {
    pub dim: usize,
    /// `len * dim` floats, each row L2-normalized (zero rows stay zero).
    data: Vec<f32>,
    /// `data` quantized: `codes[r * dim + i] * scales[r]` is within `scales[r] / 2` of it.
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// At least every row's scale (replaced rows may leave it higher: still a valid bound).
    max_scale: f32,
    entity_ids: Vec<String>,
    dataset_idx: Vec<u32>,
    datasets: Vec<String>,
    row_of: HashMap<String, usize>,
    max_seq: i64,
}

impl Matrix {
    pub fn len(&self) -> usize {
        self.entity_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entity_ids.is_empty()
    }

    pub fn entity_id(&self, row: usize) -> &str {
        &self.entity_ids[row]
    }

    pub fn dataset_id(&self, row: usize) -> &str {
        &self.datasets[self.dataset_idx[row] as usize]
    }

    pub fn row_of(&self, entity_id: &str) -> Option<usize> {
        self.row_of.get(entity_id).copied()
    }

    pub fn dataset_index(&self, dataset_id: &str) -> Option<u32> {
        self.datasets
            .iter()
            .position(|d| d == dataset_id)
            .map(|i| i as u32)
    }

    pub fn row_dataset_index(&self, row: usize) -> u32 {
        self.dataset_idx[row]
    }

    /// Inserts or replaces a row; `value` must have `dim` entries.
    pub fn set(&mut self, entity_id: &str, dataset_id: &str, value: &[f32]) {
        let ds = match self.dataset_index(dataset_id) {
            Some(i) => i,
            None => {
                self.datasets.push(dataset_id.to_string());
                (self.datasets.len() - 1) as u32
            }
        };
        let row = match self.row_of.get(entity_id) {
            Some(&r) => r,
            None => {
                let r = self.entity_ids.len();
                self.entity_ids.push(entity_id.to_string());
                self.dataset_idx.push(ds);
                self.data.resize(self.data.len() + self.dim, 0.0);
                self.codes.resize(self.codes.len() + self.dim, 0);
                self.scales.push(0.0);
                self.row_of.insert(entity_id.to_string(), r);
                r
            }
        };
        self.dataset_idx[row] = ds;
        let dst = &mut self.data[row * self.dim..(row + 1) * self.dim];
        dst.copy_from_slice(value);
        normalize(dst);
        let max = dst.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 && max.is_finite() {
            max / 127.0
        } else {
            0.0
        };
        let codes = &mut self.codes[row * self.dim..(row + 1) * self.dim];
        for (c, x) in codes.iter_mut().zip(dst.iter()) {
            *c = if scale > 0.0 {
                (x / scale).round().clamp(-127.0, 127.0) as i8
            } else {
                0
            };
        }
        self.scales[row] = scale;
        self.max_scale = self.max_scale.max(scale);
    }

    /// Top-k rows by cosine with `query` among rows where `keep(row)` holds, best first.
    /// Exact: the int8 scan only chooses which rows get an f32 score.
    pub fn top_k(
        &self,
        query: &[f32],
        k: usize,
        keep: &(dyn Fn(usize) -> bool + Sync),
    ) -> Vec<(usize, f32)> {
        let mut q = query.to_vec();
        normalize(&mut q);
        if k == 0 || self.is_empty() {
            return Vec::new();
        }
        SEARCHES.fetch_add(1, Ordering::Relaxed);
        // |exact - approx| <= scale / 2 * ||q||_1 per row (plus rounding of the sums).
        let half_l1 = 0.5 * q.iter().map(|x| x.abs()).sum::<f32>() * 1.001;
        let bound = |r: usize| self.scales[r] * half_l1 + 1e-5;
        let candidates = k.saturating_mul(4).max(k + 32);
        let approx = self.scan(candidates, keep, &q);
        let mut top = TopK::new(k);
        for &(r, _) in &approx {
            top.push(r, dot(self.row(r), &q));
        }
        if approx.len() < candidates {
            // Every row that passed `keep` was a candidate.
            return top.into_sorted();
        }
        // Rows left out scored at most `floor` approximately, so at most
        // `floor + max_bound` exactly.
        let floor = approx.last().map_or(f32::NEG_INFINITY, |c| c.1);
        let max_bound = self.max_scale * half_l1 + 1e-5;
        if top.floor() >= floor + max_bound {
            return top.into_sorted();
        }
        // The bound cannot rule out some rows: rescore every row that might beat the k-th.
        SECOND_PASSES.fetch_add(1, Ordering::Relaxed);
        let threshold = top.floor();
        let seen: std::collections::HashSet<usize> = approx.iter().map(|c| c.0).collect();
        let extra = self.fold_rows(k, &q, |more, r, a| {
            if a + bound(r) >= threshold && !seen.contains(&r) && keep(r) {
                more.push(r, dot(self.row(r), &q));
            }
        });
        top.merge(extra).into_sorted()
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    /// The best `n` rows by approximate (int8) score among rows where `keep(r)` holds,
    /// best first.
    fn scan(
        &self,
        n: usize,
        keep: &(dyn Fn(usize) -> bool + Sync),
        q: &[f32],
    ) -> Vec<(usize, f32)> {
        self.fold_rows(n, q, |top, r, s| {
            if s > top.floor() && keep(r) {
                top.push(r, s);
            }
        })
        .into_sorted()
    }

    /// Every row's int8 score with `q`, folded into per-task top-`n` lists by
    /// `visit(top, row, score)` over 4096-row chunks in parallel, then merged.
    fn fold_rows(&self, n: usize, q: &[f32], visit: impl Fn(&mut TopK, usize, f32) + Sync) -> TopK {
        let dim = self.dim;
        let kernel = kernel();
        self.codes
            .par_chunks(CHUNK * dim)
            .enumerate()
            .map(|(c, block)| {
                let mut top = TopK::new(n);
                for (i, codes) in block.chunks_exact(dim).enumerate() {
                    let r = c * CHUNK + i;
                    visit(&mut top, r, kernel(codes, q) * self.scales[r]);
                }
                top
            })
            .reduce(|| TopK::new(n), TopK::merge)
    }
}

/// Rows per parallel task of a scan.
const CHUNK: usize = 4096;

fn normalize(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        for x in v {
            *x /= n;
        }
    }
}

/// Dot product with 16 independent accumulators so the compiler vectorizes it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `sum q[i] * codes[i]`, compiled for the best instruction set the CPU has.
type Kernel = fn(&[i8], &[f32]) -> f32;

// The one place this crate uses `unsafe`: calling a function compiled for AVX2 / AVX-512,
// which is sound only after the CPU was seen to support it. The build itself targets
// baseline x86-64 so the binary runs anywhere (no `target-cpu=native`).
#[allow(unsafe_code)]
fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return |c, q| unsafe { dot_i8_avx512(c, q) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return |c, q| unsafe { dot_i8_avx2(c, q) };
        }
    }
    dot_i8
}

#[inline(always)]
fn dot_i8_generic(codes: &[i8], q: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let cc = codes.chunks_exact(16);
    let cq = q.chunks_exact(16);
    let (rc, rq) = (cc.remainder(), cq.remainder());
    for (x, y) in cc.zip(cq) {
        for i in 0..16 {
            acc[i] += x[i] as f32 * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in rc.iter().zip(rq) {
        s += *x as f32 * y;
    }
    s
}

fn dot_i8(codes: &[i8], q: &[f32]) -> f32 {
    dot_i8_generic(codes, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_i8_avx2(codes: &[i8], q: &[f32]) -> f32 {
    dot_i8_generic(codes, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_i8_avx512(codes: &[i8], q: &[f32]) -> f32 {
    dot_i8_generic(codes, q)
}

/// The k best (row, score) seen so far.
struct TopK {
    k: usize,
    items: Vec<(usize, f32)>,
    min_at: usize,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            items: Vec::with_capacity(k.min(1024)),
            min_at: 0,
        }
    }

    /// Scores at or below this cannot enter.
    fn floor(&self) -> f32 {
        if self.items.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.items[self.min_at].1
        }
    }

    fn push(&mut self, row: usize, score: f32) {
        if score.is_nan() {
            return;
        }
        if self.items.len() < self.k {
            self.items.push((row, score));
        } else if score > self.items[self.min_at].1 {
            self.items[self.min_at] = (row, score);
        } else {
            return;
        }
        self.min_at = self
            .items
            .iter()
            .enumerate()
            .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
            .map_or(0, |(i, _)| i);
    }

    fn merge(mut self, other: TopK) -> TopK {
        for (r, s) in other.items {
            self.push(r, s);
        }
        self
    }

    fn into_sorted(mut self) -> Vec<(usize, f32)> {
        self.items
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        self.items
    }
}

pub fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn from_blob(b: &[u8]) -> Result<Vec<f32>> {
    if !b.chunks_exact(4).remainder().is_empty() {
        return Err(StoreError::Corrupt(format!(
            "vector blob of {} bytes is not a whole number of f32",
            b.len()
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Matrices of the feature sets queried so far.
#[derive(Default)]
pub struct VectorCache {
    sets: Mutex<HashMap<String, Arc<RwLock<Matrix>>>>,
}

impl VectorCache {
    /// The feature set's matrix, brought up to date with the database.
    pub fn fresh(
        &self,
        conn: &Connection,
        feature_set_id: &str,
        dim: usize,
    ) -> Result<Arc<RwLock<Matrix>>> {
        let m = {
            let mut sets = self
                .sets
                .lock()
                .map_err(|_| StoreError::Unavailable("vector cache lock poisoned".into()))?;
            sets.entry(feature_set_id.to_string())
                .or_insert_with(|| {
                    Arc::new(RwLock::new(Matrix {
                        dim,
                        ..Matrix::default()
                    }))
                })
                .clone()
        };
        let latest: i64 = conn.query_row(
            "SELECT IFNULL(MAX(seq), 0) FROM vectors WHERE feature_set_id = ?1",
            [feature_set_id],
            |r| r.get(0),
        )?;
        let stale = m
            .read()
            .map_err(|_| StoreError::Unavailable("vector cache lock poisoned".into()))?
            .max_seq
            < latest;
        if stale {
            let mut w = m
                .write()
                .map_err(|_| StoreError::Unavailable("vector cache lock poisoned".into()))?;
            // Another query may have caught up while we waited for the lock.
            if w.max_seq < latest {
                let mut stmt = conn.prepare_cached(
                    "SELECT entity_id, dataset_id, value, seq FROM vectors
                     WHERE feature_set_id = ?1 AND seq > ?2 ORDER BY seq",
                )?;
                let mut rows = stmt.query(rusqlite::params![feature_set_id, w.max_seq])?;
                while let Some(row) = rows.next()? {
                    let entity: String = row.get(0)?;
                    let dataset: String = row.get(1)?;
                    let blob: Vec<u8> = row.get(2)?;
                    let seq: i64 = row.get(3)?;
                    let v = from_blob(&blob)?;
                    if v.len() != w.dim {
                        return Err(StoreError::Corrupt(format!(
                            "vector of {entity} has {} values, feature set {feature_set_id} has size {}",
                            v.len(),
                            w.dim
                        )));
                    }
                    w.set(&entity, &dataset, &v);
                    w.max_seq = w.max_seq.max(seq);
                }
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_matches_brute_force() {
        let dim = 37;
        let mut m = Matrix {
            dim,
            ..Matrix::default()
        };
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let rows: Vec<Vec<f32>> = (0..10_000)
            .map(|_| (0..dim).map(|_| rnd()).collect())
            .collect();
        for (i, r) in rows.iter().enumerate() {
            m.set(&format!("e{i}"), if i % 2 == 0 { "a" } else { "b" }, r);
        }
        let q: Vec<f32> = (0..dim).map(|_| rnd()).collect();
        let keep = |r: usize| !matches!(r % 3, 0);
        let got = m.top_k(&q, 10, &keep);
        let qn = dot(&q, &q).sqrt();
        let mut want: Vec<(usize, f32)> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(i, r)| (i, dot(r, &q) / (dot(r, r).sqrt() * qn)))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(got.len(), 10);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0);
            assert!((g.1 - w.1).abs() < 1e-5);
        }
        // Replacing a row moves it, never duplicates it.
        m.set("e1", "b", &q);
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.top_k(&q, 1, &|_| true)[0].0, 1);
    }

    /// Near-duplicate rows: the int8 error bound cannot separate the candidates from the
    /// rest, so the second pass runs; the result must still be the exact top-k.
    #[test]
    fn top_k_is_exact_when_scores_crowd() {
        let dim = 64;
        let mut m = Matrix {
            dim,
            ..Matrix::default()
        };
        let base: Vec<f32> = (0..dim).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let mut rows = Vec::new();
        for i in 0..5000usize {
            let mut r = base.clone();
            r[i % dim] += 1e-3 * ((i * 31 % 97) as f32);
            r[(i / dim) % dim] -= 1e-3 * ((i * 17 % 89) as f32);
            m.set(&format!("e{i}"), "d", &r);
            rows.push(r);
        }
        let q: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, x)| x + (i % 5) as f32 * 0.01)
            .collect();
        let score = |r: &Vec<f32>| dot(r, &q) / (dot(r, r).sqrt() * dot(&q, &q).sqrt());
        let mut want: Vec<(usize, f32)> = rows.iter().map(score).enumerate().collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let before = search_counts().1;
        let got = m.top_k(&q, 10, &|_| true);
        // Other tests may search at the same time; the counter only grows.
        assert!(search_counts().1 > before, "the second pass did not run");
        assert_eq!(got.len(), 10);
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() < 1e-6, "{g:?} vs {w:?}");
        }
        // A filter that leaves fewer rows than k.
        let few = m.top_k(&q, 10, &|r| r < 3);
        assert_eq!(few.iter().map(|x| x.0).collect::<Vec<_>>().len(), 3);
    }
}
