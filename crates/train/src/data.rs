//! Image-caption pairs: where they come from (a folder, or any caller-built list such as a
//! platform dataset), the train/validation split, and the check for unusable pairs.

use crate::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fetches image bytes by key, for sources whose images live elsewhere (a blob store).
pub trait ImageFetcher: Send + Sync {
    fn fetch(&self, key: &str) -> std::io::Result<Vec<u8>>;
}

/// Where a pair's image bytes come from. Bytes are read when a batch needs them, never all
/// at once.
#[derive(Clone)]
pub enum ImageSource {
    Path(PathBuf),
    Bytes(Arc<[u8]>),
    Fetch {
        key: String,
        fetcher: Arc<dyn ImageFetcher>,
    },
}

impl ImageSource {
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Path(p) => std::fs::read(p),
            Self::Bytes(b) => Ok(b.to_vec()),
            Self::Fetch { key, fetcher } => fetcher.fetch(key),
        }
    }
}

impl std::fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(p) => write!(f, "Path({})", p.display()),
            Self::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Self::Fetch { key, .. } => write!(f, "Fetch({key})"),
        }
    }
}

pub const TRAIN: &str = "train";
pub const VALIDATION: &str = "validation";

/// One image-caption pair.
#[derive(Clone, Debug)]
pub struct Pair {
    /// Names the pair in reports and errors (a file name or an item id).
    pub id: String,
    pub image: ImageSource,
    pub caption: String,
    /// `train`, `validation` or another subset name; `None` when the source has no split.
    pub subset: Option<String>,
    pub label: Option<String>,
}

/// A pair that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPair {
    pub id: String,
    pub reason: String,
}

impl std::fmt::Display for BadPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.id, self.reason)
    }
}

/// Pairs read from a source, plus the entries that could not even be read as pairs.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub pairs: Vec<Pair>,
    pub bad: Vec<BadPair>,
}

/// The manifest of a folder source.
pub const MANIFEST: &str = "captions.jsonl";

#[derive(Deserialize)]
struct Line {
    file: String,
    caption: Option<String>,
    subset: Option<String>,
    label: Option<serde_json::Value>,
}

/// Reads `DIR/captions.jsonl`: one JSON object per line, `{"file", "caption", "subset"?,
/// "label"?}`, `file` relative to `DIR`. Lines that are not such objects are bad pairs;
/// images are not opened here.
pub fn read_folder(dir: &Path) -> Result<Source> {
    let manifest = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        TrainError::Data(format!(
            "{}: {e} (a data folder needs {MANIFEST} with one {{\"file\", \"caption\"}} object per line)",
            manifest.display()
        ))
    })?;
    let mut source = Source::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{MANIFEST} line {}", i + 1);
        match serde_json::from_str::<Line>(line) {
            Ok(l) => {
                if l.file.trim().is_empty()
                    || Path::new(&l.file).is_absolute()
                    || l.file.contains("..")
                {
                    source.bad.push(BadPair {
                        id: at,
                        reason: format!("file {:?} must be a path inside the data folder", l.file),
                    });
                    continue;
                }
                source.pairs.push(Pair {
                    image: ImageSource::Path(dir.join(&l.file)),
                    id: l.file,
                    caption: l.caption.unwrap_or_default(),
                    subset: l.subset,
                    label: l.label.map(|v| match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    }),
                })
            }
            Err(e) => source.bad.push(BadPair {
                id: at,
                reason: format!("not a {{\"file\", \"caption\"}} object: {e}"),
            }),
        }
    }
    if source.pairs.is_empty() && source.bad.is_empty() {
        return Err(TrainError::Data(format!(
            "{} has no pairs",
            manifest.display()
        )));
    }
    Ok(source)
}

/// splitmix64: a tiny, well-mixed PRNG; all data-order randomness derives from it so that
/// order depends only on the seed and the epoch.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for a sub-stream (`seed`, `a`, `b`).
    pub fn derive(seed: u64, a: u64, b: u64) -> Self {
        let mut r = Self(seed ^ 0x5851_f42d_4c95_7f2d);
        let x = r.next_u64() ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut r = Self(x);
        let y = r.next_u64() ^ b.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Self(y)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// FNV-1a, for stable hashes of ids (std's hasher is not stable across releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Train and validation pairs.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub train: Vec<Pair>,
    pub validation: Vec<Pair>,
    /// Pairs in other subsets (e.g. `test`), not used by training.
    pub ignored: usize,
}

/// Splits pairs by their `subset`. When no pair has one, a seeded share `fraction` (at least
/// one pair) goes to validation, chosen by a hash of (seed, id, caption) so the split does
/// not depend on line order. When some pairs have a subset, those without go to `train`.
pub fn split(pairs: Vec<Pair>, seed: u64, fraction: f64) -> Split {
    let mut out = Split::default();
    if pairs.iter().all(|p| p.subset.is_none()) {
        let salt = Rng::derive(seed, 0, 0).next_u64();
        let mut keys: Vec<(u64, usize)> = pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = format!("{}\u{0}{}", p.id, p.caption);
                (Rng::new(fnv1a(key.as_bytes()) ^ salt).next_u64(), i)
            })
            .collect();
        keys.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| pairs[a.1].id.cmp(&pairs[b.1].id))
        });
        let n_val = ((pairs.len() as f64 * fraction).round() as usize)
            .max(1)
            .min(pairs.len().saturating_sub(1));
        let mut is_val = vec![false; pairs.len()];
        for &(_, i) in &keys[..n_val] {
            is_val[i] = true;
        }
        // The source's order is kept within each subset.
        for (p, v) in pairs.into_iter().zip(is_val) {
            if v {
                out.validation.push(p);
            } else {
                out.train.push(p);
            }
        }
        return out;
    }
    for p in pairs {
        match p.subset.as_deref() {
            None | Some(TRAIN) => out.train.push(p),
            Some(VALIDATION) | Some("val") => out.validation.push(p),
            Some(_) => out.ignored += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(id: &str, subset: Option<&str>) -> Pair {
        Pair {
            id: id.into(),
            image: ImageSource::Bytes(Arc::from(&b""[..])),
            caption: format!("caption of {id}"),
            subset: subset.map(str::to_string),
            label: None,
        }
    }

    #[test]
    fn seeded_split_is_stable_and_order_independent() {
        let pairs: Vec<Pair> = (0..50).map(|i| pair(&format!("{i}.png"), None)).collect();
        let a = split(pairs.clone(), 7, 0.1);
        assert_eq!((a.train.len(), a.validation.len()), (45, 5));
        let mut reversed = pairs.clone();
        reversed.reverse();
        let b = split(reversed, 7, 0.1);
        let ids = |s: &Split| {
            let mut v: Vec<String> = s.validation.iter().map(|p| p.id.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(
            ids(&a),
            ids(&split(pairs, 8, 0.1)),
            "another seed picks other pairs"
        );
    }

    #[test]
    fn explicit_subsets() {
        let pairs = vec![
            pair("a", Some("train")),
            pair("b", Some("validation")),
            pair("c", None),
            pair("d", Some("test")),
        ];
        let s = split(pairs, 0, 0.1);
        assert_eq!(s.train.len(), 2);
        assert_eq!(s.validation.len(), 1);
        assert_eq!(s.ignored, 1);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        Rng::derive(1, 2, 0).shuffle(&mut a);
        Rng::derive(1, 2, 0).shuffle(&mut b);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut c: Vec<u32> = (0..100).collect();
        Rng::derive(1, 3, 0).shuffle(&mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn folder_manifest_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MANIFEST),
            "{\"file\": \"a.png\", \"caption\": \"a cat\", \"label\": 3}\n\nnot json\n{\"file\": \"../x.png\", \"caption\": \"y\"}\n",
        )
        .unwrap();
        let s = read_folder(dir.path()).unwrap();
        assert_eq!(s.pairs.len(), 1);
        assert_eq!(s.pairs[0].label.as_deref(), Some("3"));
        assert_eq!(s.bad.len(), 2);
        assert!(s.bad[0].id.contains("line 3"));
        assert!(read_folder(&dir.path().join("missing")).is_err());
    }
}
