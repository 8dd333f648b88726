//! Dataset import into the embedded store.
//!
//! Formats (detected from the folder):
//! - **captions.jsonl**: one JSON object per line, `{"file": "a/1.jpg", "caption": "...",
//!   "subset": "train"|"validation"|"test", "label": "..."}` (`file` required, paths relative
//!   to the folder).
//! - **Dataloop export**: a `json/` folder of item JSON files (`filename`, `description`,
//!   `metadata`, `annotations`, `id`, `hidden`), with the item files under `items/<filename>`
//!   (or `<filename>` beside `json/`). Prompt items (JSON content with `"dltype": "prompt"`)
//!   are resolved against the images dataset given with [`ImportOptions::images`], or items
//!   already in the store.
//! - **sidecar captions**: image files anywhere under the folder, each captioned by the `.txt`
//!   file with the same stem, if any.
//!
//! Everything is checked before anything is written; bad entries are reported with their
//! line or file. When more than [`ImportOptions::max_bad_fraction`] of the entries are bad,
//! the import fails and the store is left unchanged. Otherwise the good entries are committed
//! in one transaction. Items are keyed by (dataset, filename), so re-importing the same folder
//! changes nothing.

use crate::blobs::{BlobRef, Blobs};
use crate::entities::{set_path, Dataset, Item, ItemType};
use crate::error::{Result, StoreError};
use crate::local::{
    dataset_by, guess_mimetype, insert_dataset, normalize_filename, set_free_text_tx,
    tokio_blocking, upsert_item_tx, Change, LocalStore, StagedItem,
};
use crate::platform::PromptContent;
use crate::util::now_rfc3339;
use rayon::prelude::*;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Dataset to import into (created when missing).
    pub name: String,
    /// Fail without writing when more than this fraction of entries is bad (default 0.05).
    pub max_bad_fraction: f64,
    /// For a prompt-item export: the Dataloop export of the images it points to.
    pub images: Option<PathBuf>,
    /// Dataset for `images` (default `<name>-images`).
    pub images_name: Option<String>,
}

impl ImportOptions {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_bad_fraction: 0.05,
            images: None,
            images_name: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    CaptionsJsonl,
    DataloopExport,
    Sidecar,
}

/// An entry that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadEntry {
    /// `captions.jsonl:12`, `json/a/1.json`, ...
    pub location: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    pub dataset: Dataset,
    pub format: Format,
    pub entries: u64,
    pub items: Counts,
    pub bad: Vec<BadEntry>,
    /// Entries imported with something a person should know (an empty caption: the item
    /// has no caption, so training skips it until one is set).
    pub warnings: Vec<BadEntry>,
    /// The images dataset of a prompt-item import.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_dataset: Option<Dataset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Counts>,
    pub seconds: f64,
}

/// One good entry, before its bytes are stored.
#[derive(Debug, Clone)]
struct Planned {
    filename: String,
    src: PathBuf,
    mimetype: String,
    description: Option<String>,
    metadata: Value,
    hidden: bool,
    preferred_id: Option<String>,
    /// `Some`: the item's free-text annotations become exactly these.
    free_text: Option<Vec<String>>,
    /// For prompt items: the image item id their JSON points at.
    prompt_image: Option<String>,
}

struct Plan {
    format: Format,
    good: Vec<Planned>,
    bad: Vec<BadEntry>,
    warnings: Vec<BadEntry>,
}

/// The warning for an entry whose caption is present but empty.
fn empty_caption(location: String) -> BadEntry {
    BadEntry {
        location,
        reason: "empty caption: imported without one (training skips it until it has one)".into(),
    }
}

impl Plan {
    fn entries(&self) -> usize {
        self.good.len() + self.bad.len()
    }
}

/// Detects the format of `root`.
pub fn detect(root: &Path) -> Result<Format> {
    if !root.is_dir() {
        return Err(StoreError::invalid(
            format!("import source {}", root.display()),
            "is not a folder",
        ));
    }
    Ok(if root.join("captions.jsonl").is_file() {
        Format::CaptionsJsonl
    } else if root.join("json").is_dir() {
        Format::DataloopExport
    } else {
        Format::Sidecar
    })
}

const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Resolves `rel` under `root`, refusing anything that ends up outside it (`..`, absolute
/// paths, symlinks pointing out).
fn inside(root_canon: &Path, root: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("path {rel:?} escapes the folder"));
    }
    let full = root.join(p);
    match full.canonicalize() {
        Ok(c) if c.starts_with(root_canon) => {
            if c.is_file() {
                Ok(c)
            } else {
                Err(format!("{rel:?} is not a file"))
            }
        }
        Ok(_) => Err(format!("path {rel:?} escapes the folder (symlink)")),
        Err(_) => Err(format!("file {rel:?} not found")),
    }
}

fn canon(root: &Path) -> Result<PathBuf> {
    root.canonicalize().map_err(|e| StoreError::io(root, e))
}

fn plan_jsonl(root: &Path) -> Result<Plan> {
    let root_canon = canon(root)?;
    let list = root.join("captions.jsonl");
    let text = std::fs::read(&list).map_err(|e| StoreError::io(&list, e))?;
    let mut plan = Plan {
        format: Format::CaptionsJsonl,
        good: Vec::new(),
        bad: Vec::new(),
        warnings: Vec::new(),
    };
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let location = format!("captions.jsonl:{line}");
        let Ok(s) = std::str::from_utf8(raw) else {
            plan.bad.push(BadEntry {
                location,
                reason: "not UTF-8".into(),
            });
            continue;
        };
        if s.trim().is_empty() {
            continue;
        }
        let mut bad = |reason: String| {
            plan.bad.push(BadEntry {
                location: location.clone(),
                reason,
            })
        };
        let obj = match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                bad("not a JSON object".into());
                continue;
            }
            Err(e) => {
                bad(format!("unreadable JSON: {e}"));
                continue;
            }
        };
        let Some(file) = obj.get("file").and_then(Value::as_str) else {
            bad("no \"file\" string".into());
            continue;
        };
        let caption = match obj.get("caption") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) if c.trim().is_empty() => {
                plan.warnings.push(empty_caption(location.clone()));
                None
            }
            Some(Value::String(c)) => Some(c.trim().to_string()),
            Some(other) => {
                bad(format!("\"caption\" must be a string, got {other}"));
                continue;
            }
        };
        let mut metadata = Value::Object(Map::new());
        match obj.get("subset") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if ["train", "validation", "test"].contains(&s.as_str()) => {
                set_path(&mut metadata, &["system", "tags", s], Value::Bool(true));
            }
            Some(other) => {
                bad(format!(
                    "\"subset\" must be train, validation or test, got {other}"
                ));
                continue;
            }
        }
        match obj.get("label") {
            None | Some(Value::Null) => {}
            Some(Value::String(l)) => {
                set_path(&mut metadata, &["user", "label"], Value::String(l.clone()))
            }
            Some(other) => {
                bad(format!("\"label\" must be a string, got {other}"));
                continue;
            }
        }
        let src = match inside(&root_canon, root, file) {
            Ok(p) => p,
            Err(reason) => {
                bad(reason);
                continue;
            }
        };
        let filename = match normalize_filename(file) {
            Ok((f, _, _)) => f,
            Err(e) => {
                bad(e.to_string());
                continue;
            }
        };
        if let Some(first) = first_line.get(&filename) {
            bad(format!(
                "duplicate entry for {file:?} (first on line {first})"
            ));
            continue;
        }
        first_line.insert(filename.clone(), line);
        plan.good.push(Planned {
            mimetype: guess_mimetype(&filename).to_string(),
            filename,
            src,
            description: caption,
            metadata,
            hidden: false,
            preferred_id: None,
            free_text: None,
            prompt_image: None,
        });
    }
    Ok(plan)
}

/// Files under `dir` (relative `/` paths, sorted), skipping hidden names.
fn walk(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let d = dir.join(&rel);
        let entries = std::fs::read_dir(&d).map_err(|e| StoreError::io(&d, e))?;
        for e in entries {
            let e = e.map_err(|e| StoreError::io(&d, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let ft = e.file_type().map_err(|err| StoreError::io(e.path(), err))?;
            let r = rel.join(&name);
            if ft.is_dir() {
                stack.push(r);
            } else {
                out.push(
                    r.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

fn plan_sidecar(root: &Path) -> Result<Plan> {
    let root_canon = canon(root)?;
    let mut plan = Plan {
        format: Format::Sidecar,
        good: Vec::new(),
        bad: Vec::new(),
        warnings: Vec::new(),
    };
    for rel in walk(root)? {
        if !is_image(Path::new(&rel)) {
            continue;
        }
        let src = match inside(&root_canon, root, &rel) {
            Ok(p) => p,
            Err(reason) => {
                plan.bad.push(BadEntry {
                    location: rel,
                    reason,
                });
                continue;
            }
        };
        let txt = root.join(Path::new(&rel).with_extension("txt"));
        let caption = if txt.is_file() {
            match std::fs::read(&txt).map(String::from_utf8) {
                Ok(Ok(s)) if s.trim().is_empty() => {
                    plan.warnings.push(empty_caption(rel.clone()));
                    None
                }
                Ok(Ok(s)) => Some(s.trim().to_string()),
                Ok(Err(_)) => {
                    plan.bad.push(BadEntry {
                        location: rel.clone(),
                        reason: format!("caption file {} is not UTF-8", txt.display()),
                    });
                    continue;
                }
                Err(e) => {
                    plan.bad.push(BadEntry {
                        location: rel.clone(),
                        reason: format!("caption file {}: {e}", txt.display()),
                    });
                    continue;
                }
            }
        } else {
            None
        };
        let filename = format!("/{rel}");
        plan.good.push(Planned {
            mimetype: guess_mimetype(&filename).to_string(),
            filename,
            src,
            description: caption,
            metadata: Value::Object(Map::new()),
            hidden: false,
            preferred_id: None,
            free_text: None,
            prompt_image: None,
        });
    }
    Ok(plan)
}

fn plan_export(root: &Path) -> Result<Plan> {
    let root_canon = canon(root)?;
    let json_dir = root.join("json");
    let mut plan = Plan {
        format: Format::DataloopExport,
        good: Vec::new(),
        bad: Vec::new(),
        warnings: Vec::new(),
    };
    let mut first: HashMap<String, String> = HashMap::new();
    for rel in walk(&json_dir)? {
        if !rel.ends_with(".json") {
            continue;
        }
        let location = format!("json/{rel}");
        let mut bad = |reason: String| {
            plan.bad.push(BadEntry {
                location: location.clone(),
                reason,
            })
        };
        let path = json_dir.join(&rel);
        let item: Value = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("unreadable JSON: {e}")))
        {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                bad("not a JSON object".into());
                continue;
            }
            Err(e) => {
                bad(e);
                continue;
            }
        };
        if item.get("type").and_then(Value::as_str) == Some("dir") {
            continue;
        }
        let Some(file) = item.get("filename").and_then(Value::as_str) else {
            bad("no \"filename\"".into());
            continue;
        };
        let filename = match normalize_filename(file) {
            Ok((f, _, _)) => f,
            Err(e) => {
                bad(e.to_string());
                continue;
            }
        };
        let rel_file = filename.trim_start_matches('/');
        let src = match inside(&root_canon, root, &format!("items/{rel_file}"))
            .or_else(|_| inside(&root_canon, root, rel_file))
        {
            Ok(p) => p,
            Err(_) => {
                // Report the real reason for the items/ location, which is the usual layout.
                let reason = inside(&root_canon, root, &format!("items/{rel_file}"))
                    .err()
                    .unwrap_or_default();
                bad(format!("item file: {reason}"));
                continue;
            }
        };
        if let Some(f) = first.get(&filename) {
            bad(format!("duplicate item {filename:?} (first in {f})"));
            continue;
        }
        first.insert(filename.clone(), location.clone());
        let metadata = item
            .get("metadata")
            .filter(|m| m.is_object())
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        let description = item
            .get("description")
            .and_then(Value::as_str)
            .map(String::from);
        let mimetype = metadata
            .get("system")
            .and_then(|s| s.get("mimetype"))
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| guess_mimetype(&filename).to_string());
        let free_text: Vec<String> = item
            .get("annotations")
            .and_then(Value::as_array)
            .map(|anns| {
                anns.iter()
                    .filter(|a| a.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|a| a.get("coordinates").and_then(Value::as_str))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let probe = Item {
            id: String::new(),
            dataset_id: String::new(),
            dir: String::new(),
            filename: filename.clone(),
            name: String::new(),
            item_type: ItemType::File,
            hidden: false,
            description: None,
            metadata: metadata.clone(),
            annotations_count: 0,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let mut prompt_image = None;
        if probe.is_prompt() || mimetype == "application/json" {
            match std::fs::read(&src)
                .ok()
                .and_then(|b| PromptContent::parse(&b))
            {
                Some(p) => match p.image_item_id {
                    Some(id) => prompt_image = Some(id),
                    None => {
                        bad("prompt item has no user image".into());
                        continue;
                    }
                },
                None if probe.is_prompt() => {
                    bad("prompt item content is not a Dataloop prompt JSON".into());
                    continue;
                }
                None => {}
            }
        }
        plan.good.push(Planned {
            filename,
            src,
            mimetype,
            description,
            metadata,
            hidden: item.get("hidden").and_then(Value::as_bool).unwrap_or(false),
            preferred_id: item.get("id").and_then(Value::as_str).map(String::from),
            free_text: Some(free_text),
            prompt_image,
        });
    }
    Ok(plan)
}

fn plan(root: &Path) -> Result<Plan> {
    match detect(root)? {
        Format::CaptionsJsonl => plan_jsonl(root),
        Format::DataloopExport => plan_export(root),
        Format::Sidecar => plan_sidecar(root),
    }
}

fn check_threshold(what: &Path, plan: &Plan, max_bad: f64) -> Result<()> {
    let total = plan.entries();
    if total == 0 {
        return Err(StoreError::invalid(
            format!("import of {}", what.display()),
            "found no entries to import",
        ));
    }
    let fraction = plan.bad.len() as f64 / total as f64;
    if fraction > max_bad {
        let listed: Vec<String> = plan
            .bad
            .iter()
            .take(20)
            .map(|b| format!("{}: {}", b.location, b.reason))
            .collect();
        let more = plan.bad.len().saturating_sub(20);
        return Err(StoreError::invalid(
            format!("import of {}", what.display()),
            format!(
                "{} of {total} entries are bad ({:.1}% > {:.1}%), nothing imported:\n  {}{}",
                plan.bad.len(),
                fraction * 100.0,
                max_bad * 100.0,
                listed.join("\n  "),
                if more > 0 {
                    format!("\n  ... and {more} more")
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(())
}

/// Copies the planned files into the blob store (in parallel) and flushes them to disk.
fn stage(blobs: &Blobs, planned: &[Planned]) -> Result<Vec<BlobRef>> {
    let refs: Vec<BlobRef> = planned
        .par_iter()
        .map(|p| {
            let bytes = std::fs::read(&p.src).map_err(|e| StoreError::io(&p.src, e))?;
            blobs.put_bytes(&bytes, true)
        })
        .collect::<Result<_>>()?;
    blobs.sync_dirs(refs.iter().map(|r| r.sha256.clone()))?;
    Ok(refs)
}

fn get_or_create_dataset(t: &rusqlite::Transaction<'_>, name: &str) -> Result<Dataset> {
    match dataset_by(t, "name", name) {
        Ok(d) => Ok(d),
        Err(StoreError::NotFound { .. }) => insert_dataset(t, name),
        Err(e) => Err(e),
    }
}

fn commit_items(
    t: &rusqlite::Transaction<'_>,
    dataset_id: &str,
    planned: &[Planned],
    refs: &[BlobRef],
    // Old image id -> id in this store, for prompt items.
    image_ids: &HashMap<String, String>,
    blobs: &Blobs,
    ids_out: &mut HashMap<String, String>,
) -> Result<Counts> {
    let mut counts = Counts::default();
    for (p, blob) in planned.iter().zip(refs) {
        let mut blob = blob.clone();
        if let Some(old) = &p.prompt_image {
            let new = match image_ids.get(old) {
                Some(n) => n.clone(),
                None => {
                    let found: Option<String> = t
                        .query_row("SELECT id FROM items WHERE id = ?1", [old], |r| r.get(0))
                        .optional()?;
                    found.ok_or_else(|| {
                        StoreError::invalid(
                            format!("prompt item {}", p.filename),
                            format!("its image item {old} is neither in the images export nor in the store"),
                        )
                    })?
                }
            };
            if &new != old {
                // The image got another id here: point the prompt at it.
                let text = String::from_utf8_lossy(&blobs.read(&blob.sha256)?).replace(old, &new);
                blob = blobs.put_bytes(text.as_bytes(), true)?;
                blobs.sync_dirs([&blob.sha256])?;
            }
        }
        let staged = StagedItem {
            filename: p.filename.clone(),
            blob,
            mimetype: p.mimetype.clone(),
            description: p.description.clone(),
            metadata: p.metadata.clone(),
            hidden: p.hidden,
            preferred_id: p.preferred_id.clone(),
        };
        let (item, mut change) = upsert_item_tx(t, dataset_id, &staged)?;
        if let Some(texts) = &p.free_text {
            if set_free_text_tx(t, &item, texts)? && change == Change::Unchanged {
                change = Change::Updated;
            }
        }
        if let Some(old) = &p.preferred_id {
            ids_out.insert(old.clone(), item.id.clone());
        }
        match change {
            Change::Created => counts.created += 1,
            Change::Updated => counts.updated += 1,
            Change::Unchanged => counts.unchanged += 1,
        }
    }
    Ok(counts)
}

/// Imports the folder `root` (see the module docs) into the dataset `options.name`.
pub async fn import(
    store: &LocalStore,
    root: &Path,
    options: &ImportOptions,
) -> Result<ImportReport> {
    let start = Instant::now();
    if options.name.trim().is_empty() {
        return Err(StoreError::invalid("dataset name", "must not be empty"));
    }
    if !(0.0..=1.0).contains(&options.max_bad_fraction) {
        return Err(StoreError::invalid(
            "bad-entry threshold",
            format!("{} is not between 0 and 1", options.max_bad_fraction),
        ));
    }
    let root = root.to_path_buf();
    let images_root = options.images.clone();
    let max_bad = options.max_bad_fraction;
    let blobs = store.blobs.clone();
    // Plan and stage off the async threads: this reads every file.
    let (main, images, main_refs, image_refs) = tokio_blocking(move || {
        let main = plan(&root)?;
        check_threshold(&root, &main, max_bad)?;
        let images = match &images_root {
            Some(r) => {
                let p = plan(r)?;
                check_threshold(r, &p, max_bad)?;
                Some(p)
            }
            None => None,
        };
        let main_refs = stage(&blobs, &main.good)?;
        let image_refs = match &images {
            Some(p) => stage(&blobs, &p.good)?,
            None => Vec::new(),
        };
        Ok((main, images, main_refs, image_refs))
    })
    .await?;
    let name = options.name.trim().to_string();
    let images_name = options
        .images_name
        .clone()
        .unwrap_or_else(|| format!("{name}-images"));
    let blobs = store.blobs.clone();
    let format = main.format;
    let entries = main.entries() as u64;
    let warnings = main.warnings.clone();
    let mut all_bad = main.bad.clone();
    if let Some(p) = &images {
        all_bad.extend(p.bad.iter().map(|b| BadEntry {
            location: format!("images: {}", b.location),
            reason: b.reason.clone(),
        }));
    }
    let (dataset, counts, images_dataset, image_counts) = store
        .db
        .write(move |t| {
            let mut image_ids = HashMap::new();
            let (images_dataset, image_counts) = match &images {
                Some(p) => {
                    let d = get_or_create_dataset(t, &images_name)?;
                    let c = commit_items(
                        t,
                        &d.id,
                        &p.good,
                        &image_refs,
                        &HashMap::new(),
                        &blobs,
                        &mut image_ids,
                    )?;
                    (Some(dataset_by(t, "id", &d.id)?), Some(c))
                }
                None => (None, None),
            };
            let d = get_or_create_dataset(t, &name)?;
            let mut ids = HashMap::new();
            let c = commit_items(
                t, &d.id, &main.good, &main_refs, &image_ids, &blobs, &mut ids,
            )?;
            t.execute(
                "UPDATE datasets SET updated_at = ?2 WHERE id = ?1",
                params![d.id, now_rfc3339()],
            )?;
            Ok((dataset_by(t, "id", &d.id)?, c, images_dataset, image_counts))
        })
        .await?;
    Ok(ImportReport {
        dataset,
        format,
        entries,
        items: counts,
        bad: all_bad,
        warnings,
        images_dataset,
        images: image_counts,
        seconds: start.elapsed().as_secs_f64(),
    })
}
