//! The worker's modules import in one direction (docs/architecture.md, "Inside the
//! worker"): what runs nodes sits above them, and nothing below imports what is above.

use std::path::{Path, PathBuf};

/// Modules below the queue, and what they must not import.
const BELOW: [&str; 7] = [
    "nodes",
    "infer",
    "pipeline.rs",
    "template.rs",
    "ctx.rs",
    "function.rs",
    "device.rs",
];
const ABOVE: [&str; 6] = [
    "crate::executions",
    "crate::run",
    "crate::dispatch",
    "crate::attached",
    "crate::http",
    "crate::Worker",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            rust_files(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn nodes_and_what_they_use_never_import_the_queue_or_the_server() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for m in BELOW {
        rust_files(&src.join(m), &mut files);
    }
    assert!(files.len() >= 12, "found only {files:?}");
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests may reach up; comments may name anything.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for a in ABOVE {
                // A whole path segment: `crate::Worker` but not `crate::WorkerConfig`.
                let hit = line.match_indices(a).any(|(i, _)| {
                    !line[i + a.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if hit {
                    found.push(format!("{}:{}: {line}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "upward imports:\n{}", found.join("\n"));
}
