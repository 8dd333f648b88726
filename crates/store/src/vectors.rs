//! Exact cosine search over an in-memory matrix per feature set.
//!
//! SQLite holds the vectors (f32 little-endian blobs); each feature set gets a contiguous
//! row-major matrix of L2-normalized rows, so a query is one dot product per row: a
//! SIMD-friendly loop, split across rayon's threads for large sets. Every upsert gives its
//! rows a new `seq` (store-wide, increasing); before a query the cache loads the rows with
//! a `seq` above the last one it saw, so writes by this process or another process sharing
//! the home are visible to the next query without reloading everything.

use crate::error::{Result, StoreError};
use rayon::prelude::*;
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// The rows of one feature set.
#[derive(Default)]
pub struct Matrix {
    pub dim: usize,
    /// `len * dim` floats, each row L2-normalized (zero rows stay zero).
    data: Vec<f32>,
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
                self.row_of.insert(entity_id.to_string(), r);
                r
            }
        };
        self.dataset_idx[row] = ds;
        let dst = &mut self.data[row * self.dim..(row + 1) * self.dim];
        dst.copy_from_slice(value);
        normalize(dst);
    }

    /// Top-k rows by cosine with `query` among rows where `keep(row)` holds, best first.
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
        const CHUNK: usize = 4096;
        let dim = self.dim;
        let merged = self
            .data
            .par_chunks(CHUNK * dim)
            .enumerate()
            .map(|(c, block)| {
                let mut top = TopK::new(k);
                for (i, row) in block.chunks_exact(dim).enumerate() {
                    let r = c * CHUNK + i;
                    let s = dot(row, &q);
                    if s > top.floor() && keep(r) {
                        top.push(r, s);
                    }
                }
                top
            })
            .reduce(
                || TopK::new(k),
                |mut a, b| {
                    for (r, s) in b.items {
                        a.push(r, s);
                    }
                    a
                },
            );
        merged.into_sorted()
    }
}

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
            items: Vec::with_capacity(k),
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
}
