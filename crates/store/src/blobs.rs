//! Content-addressed blob store: `blobs/<first 2 hex>/<sha256>`.
//!
//! A blob is written to `tmp/`, flushed to disk, then renamed into place, so a blob path
//! either does not exist or holds the full content. The database only references a blob
//! after it is in place; a crash can leave unreferenced blobs (harmless), never a
//! reference to a missing or partial one.

use crate::error::{Result, StoreError};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Blobs {
    root: PathBuf,
    tmp: PathBuf,
}

/// A stored blob: its hash and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

impl Blobs {
    pub fn open(home: &Path) -> Result<Self> {
        let root = home.join("blobs");
        let tmp = home.join("tmp");
        for d in [&root, &tmp] {
            fs::create_dir_all(d).map_err(|e| StoreError::io(d, e))?;
        }
        Ok(Self { root, tmp })
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("xx");
        self.root.join(prefix).join(sha256)
    }

    pub fn contains(&self, sha256: &str) -> bool {
        self.path(sha256).is_file()
    }

    /// Stores `bytes`; `sync` flushes the file before it becomes visible.
    pub fn put_bytes(&self, bytes: &[u8], sync: bool) -> Result<BlobRef> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let blob = BlobRef {
            sha256,
            size: bytes.len() as u64,
        };
        if self.contains(&blob.sha256) {
            return Ok(blob);
        }
        let tmp = self.tmp_path();
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            if sync {
                f.sync_data()?;
            }
            Ok(())
        };
        write().map_err(|e| StoreError::io(&tmp, e))?;
        self.place(&tmp, &blob.sha256)?;
        Ok(blob)
    }

    /// Streams a file in, hashing as it copies (for large checkpoints).
    pub fn put_file(&self, src: &Path, sync: bool) -> Result<BlobRef> {
        let tmp = self.tmp_path();
        let copy = || -> std::io::Result<BlobRef> {
            let mut input = File::open(src)?;
            let mut out = File::create(&tmp)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                size += n as u64;
            }
            if sync {
                out.sync_data()?;
            }
            Ok(BlobRef {
                sha256: hex::encode(hasher.finalize()),
                size,
            })
        };
        let blob = copy().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::io(src, e)
        })?;
        if self.contains(&blob.sha256) {
            let _ = fs::remove_file(&tmp);
        } else {
            self.place(&tmp, &blob.sha256)?;
        }
        Ok(blob)
    }

    pub fn read(&self, sha256: &str) -> Result<Vec<u8>> {
        let p = self.path(sha256);
        fs::read(&p).map_err(|e| StoreError::io(p, e))
    }

    /// Makes renames into the blob folders durable (call before committing references).
    pub fn sync_dirs(&self, shas: impl IntoIterator<Item = impl AsRef<str>>) -> Result<()> {
        let mut dirs: Vec<PathBuf> = shas
            .into_iter()
            .filter_map(|s| self.path(s.as_ref()).parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(&d, e))?;
        }
        Ok(())
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()))
    }

    fn place(&self, tmp: &Path, sha256: &str) -> Result<()> {
        let dest = self.path(sha256);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        fs::rename(tmp, &dest).map_err(|e| StoreError::io(&dest, e))
    }

    /// Removes leftovers of interrupted writes. Only old ones: another process sharing the
    /// home may be writing a fresh one right now.
    pub fn clean_tmp(&self) {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}
