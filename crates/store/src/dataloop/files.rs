//! Local files of a model checkpoint: walking, hashing, safe destination paths.

use crate::error::{Result, StoreError};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

pub(crate) struct LocalFile {
    /// Relative, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Every regular file under `dir`, sorted by relative path, with size and SHA-256.
pub(crate) fn walk(dir: &Path) -> Result<Vec<LocalFile>> {
    let meta = std::fs::metadata(dir).map_err(|e| StoreError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(StoreError::invalid(
            format!("artifact directory {}", dir.display()),
            "is not a directory",
        ));
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| StoreError::io(&d, e))? {
            let entry = entry.map_err(|e| StoreError::io(&d, e))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| StoreError::io(&path, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .ok()
                    .and_then(|r| {
                        r.components()
                            .map(|c| c.as_os_str().to_str().map(String::from))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| {
                        StoreError::invalid(
                            format!("artifact {}", path.display()),
                            "path is not valid UTF-8",
                        )
                    })?
                    .join("/");
                let (size, sha256) = hash_file(&path)?;
                out.push(LocalFile {
                    rel,
                    path,
                    size,
                    sha256,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

pub(crate) fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| StoreError::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// `dir/rel` for an artifact path from the platform, refusing anything that would land
/// outside `dir` (absolute paths, `..`, empty segments).
pub(crate) fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf> {
    let bad = || {
        StoreError::Corrupt(format!(
            "artifact path {rel:?} would be written outside {}",
            dir.display()
        ))
    };
    if rel.is_empty() || rel.starts_with('/') || rel.contains('\\') {
        return Err(bad());
    }
    let mut out = dir.to_path_buf();
    for part in rel.split('/') {
        let p = Path::new(part);
        match p.components().next() {
            Some(Component::Normal(_)) if p.components().count() == 1 => out.push(part),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_escapes() {
        let d = Path::new("/tmp/x");
        assert_eq!(
            safe_join(d, "a/b.bin").unwrap(),
            Path::new("/tmp/x/a/b.bin")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a\\b",
        ] {
            assert!(safe_join(d, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn walk_hashes_sorted() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("sub/b.txt"), b"abc").unwrap();
        std::fs::write(t.path().join("a.bin"), b"").unwrap();
        let files = walk(t.path()).unwrap();
        let rels: Vec<_> = files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["a.bin", "sub/b.txt"]);
        assert_eq!(files[1].size, 3);
        assert_eq!(
            files[1].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(walk(&t.path().join("missing")).is_err());
    }
}
