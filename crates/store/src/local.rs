//! The embedded backend: one home directory holding `store.db` (SQLite, WAL) and `blobs/`
//! (content-addressed item bytes and model artifacts). See docs/store.md for the layout.

use crate::blobs::{BlobRef, Blobs};
use crate::db::Db;
use crate::dql::Filter;
use crate::entities::*;
use crate::error::{Result, StoreError};
use crate::platform::Platform;
use crate::util::{name_timestamp, new_id, now_rfc3339, now_secs};
use crate::vectors::{from_blob, to_blob, VectorCache};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The embedded store of one home directory. Cheap to share behind an `Arc`.
pub struct LocalStore {
    home: PathBuf,
    pub(crate) db: Db,
    pub(crate) blobs: Blobs,
    vectors: Arc<VectorCache>,
}

impl LocalStore {
    /// Opens (creating if needed) the store in `home`, applying schema migrations.
    pub fn open(home: &Path) -> Result<Self> {
        std::fs::create_dir_all(home).map_err(|e| StoreError::io(home, e))?;
        let blobs = Blobs::open(home)?;
        blobs.clean_tmp();
        let db = Db::open(&home.join("store.db"))?;
        Ok(Self {
            home: home.to_path_buf(),
            db,
            blobs,
            vectors: Arc::new(VectorCache::default()),
        })
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Where the store keeps an item's bytes (for readers that want a file path).
    pub async fn item_path(&self, id: &str) -> Result<PathBuf> {
        let id = id.to_string();
        let sha = self
            .db
            .read(move |c| {
                c.query_row("SELECT blob FROM items WHERE id = ?1", [&id], |r| {
                    r.get::<_, Option<String>>(0)
                })
                .optional()?
                .ok_or_else(|| StoreError::not_found("item", &id))?
                .ok_or_else(|| StoreError::invalid(format!("item {id}"), "has no content"))
            })
            .await?;
        Ok(self.blobs.path(&sha))
    }

    /// `PRAGMA integrity_check` plus: every referenced blob exists with its recorded size.
    /// Returns the problems found (empty when consistent).
    pub async fn check(&self) -> Result<Vec<String>> {
        let blobs = self.blobs.clone();
        self.db
            .read(move |c| {
                let mut problems = Vec::new();
                let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
                if ok != "ok" {
                    problems.push(format!("sqlite integrity_check: {ok}"));
                }
                let mut stmt = c.prepare(
                    "SELECT 'item ' || id, blob, (SELECT json_extract(metadata, '$.system.size')) FROM items WHERE blob IS NOT NULL
                     UNION ALL SELECT 'artifact ' || model_id || ' ' || path, blob, size FROM artifacts",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let what: String = r.get(0)?;
                    let sha: String = r.get(1)?;
                    let size: Option<i64> = r.get(2)?;
                    match std::fs::metadata(blobs.path(&sha)) {
                        Err(_) => problems.push(format!("{what}: blob {sha} missing")),
                        Ok(m) if size.is_some_and(|s| s as u64 != m.len()) => problems.push(
                            format!("{what}: blob {sha} has {} bytes, expected {size:?}", m.len()),
                        ),
                        Ok(_) => {}
                    }
                }
                Ok(problems)
            })
            .await
    }
}

// ---------- row mapping ----------

fn json_col(r: &Row, i: usize) -> rusqlite::Result<Value> {
    let s: Option<String> = r.get(i)?;
    Ok(s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null))
}

fn to_json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

const DATASET_COLS: &str = "id, name, metadata, created_at, updated_at,
    (SELECT COUNT(*) FROM items i WHERE i.dataset_id = datasets.id AND i.type = 'file')";

fn dataset_row(r: &Row) -> rusqlite::Result<Dataset> {
    Ok(Dataset {
        id: r.get(0)?,
        name: r.get(1)?,
        metadata: json_col(r, 2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        items_count: r.get::<_, i64>(5)? as u64,
    })
}

pub(crate) fn dataset_by(conn: &Connection, col: &str, key: &str) -> Result<Dataset> {
    conn.query_row(
        &format!("SELECT {DATASET_COLS} FROM datasets WHERE {col} = ?1"),
        [key],
        dataset_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("dataset", key))
}

pub(crate) const ITEM_COLS: &str = "id, dataset_id, dir, filename, name, type, hidden, description,
    metadata, annotations_count, created_at, updated_at";

pub(crate) fn item_row(r: &Row) -> rusqlite::Result<Item> {
    let t: String = r.get(5)?;
    Ok(Item {
        id: r.get(0)?,
        dataset_id: r.get(1)?,
        dir: r.get(2)?,
        filename: r.get(3)?,
        name: r.get(4)?,
        item_type: if t == "dir" {
            ItemType::Dir
        } else {
            ItemType::File
        },
        hidden: r.get(6)?,
        description: r.get(7)?,
        metadata: json_col(r, 8)?,
        annotations_count: r.get::<_, i64>(9)? as u64,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

pub(crate) fn get_item_tx(conn: &Connection, id: &str) -> Result<Item> {
    conn.query_row(
        &format!("SELECT {ITEM_COLS} FROM items WHERE id = ?1"),
        [id],
        item_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("item", id))
}

/// `cats\1.jpg`, `/cats/1.jpg`, `cats/1.jpg` -> (`/cats/1.jpg`, `/cats`, `1.jpg`).
/// Rejects empty names and `.`/`..` segments.
pub fn normalize_filename(filename: &str) -> Result<(String, String, String)> {
    let unified = filename.replace('\\', "/");
    let segs: Vec<&str> = unified.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() || segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(StoreError::invalid(
            format!("item filename {filename:?}"),
            "must be a relative path without . or .. segments",
        ));
    }
    let full = format!("/{}", segs.join("/"));
    let dir = format!("/{}", segs[..segs.len() - 1].join("/"));
    Ok((full, dir, segs[segs.len() - 1].to_string()))
}

/// The mimetype Dataloop would record for a file name.
pub fn guess_mimetype(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "txt" => "text/plain",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// An item ready to store: content already in the blob store.
#[derive(Debug, Clone)]
pub(crate) struct StagedItem {
    pub filename: String,
    pub blob: BlobRef,
    pub mimetype: String,
    pub description: Option<String>,
    pub metadata: Value,
    pub hidden: bool,
    /// Keep this id for a new item when it is free (imports from Dataloop exports).
    pub preferred_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Created,
    Updated,
    Unchanged,
}

/// How `update_item` applies an item's metadata, on both backends: members of `over` are
/// written (objects member by member, `null` stored as `null`), members it leaves out are
/// kept. A copy read before someone else (or the platform) added a key cannot remove it.
pub(crate) fn merge_metadata(base: &mut Value, over: &Value) {
    merge_objects(base, over)
}

/// `update_item` merges metadata, so only an object (or none) makes sense.
pub(crate) fn check_update_metadata(item: &Item) -> Result<()> {
    if item.metadata.is_object() || item.metadata.is_null() {
        Ok(())
    } else {
        Err(StoreError::invalid(
            format!("metadata of item {}", item.id),
            "must be a JSON object",
        ))
    }
}

fn merge_objects(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_objects(existing, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) if !o.is_null() => *b = o.clone(),
        _ => {}
    }
}

/// Inserts or updates the item with this filename in the dataset. Updating keeps the id
/// and `createdAt`; identical content and fields leave the row untouched.
pub(crate) fn upsert_item_tx(
    conn: &Connection,
    dataset_id: &str,
    staged: &StagedItem,
) -> Result<(Item, Change)> {
    let (filename, dir, name) = normalize_filename(&staged.filename)?;
    let mut metadata = Value::Object(Map::new());
    merge_objects(&mut metadata, &staged.metadata);
    set_path(
        &mut metadata,
        &["system", "mimetype"],
        Value::String(staged.mimetype.clone()),
    );
    set_path(
        &mut metadata,
        &["system", "size"],
        Value::from(staged.blob.size),
    );
    let metadata_text = to_json_text(&metadata);
    // (id, blob, description, metadata, hidden) of the item already at this filename.
    type Existing = (String, Option<String>, Option<String>, String, bool);
    let existing: Option<Existing> = conn
        .query_row(
            "SELECT id, blob, description, metadata, hidden FROM items WHERE dataset_id = ?1 AND filename = ?2",
            params![dataset_id, filename],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let now = now_rfc3339();
    let (id, change) = match existing {
        Some((id, blob, desc, meta, hidden)) => {
            let same = blob.as_deref() == Some(staged.blob.sha256.as_str())
                && desc == staged.description
                && serde_json::from_str::<Value>(&meta).ok().as_ref() == Some(&metadata)
                && hidden == staged.hidden;
            if !same {
                conn.execute(
                    "UPDATE items SET blob = ?2, description = ?3, metadata = ?4, hidden = ?5, updated_at = ?6 WHERE id = ?1",
                    params![id, staged.blob.sha256, staged.description, metadata_text, staged.hidden, now],
                )?;
            }
            (
                id,
                if same {
                    Change::Unchanged
                } else {
                    Change::Updated
                },
            )
        }
        None => {
            let id = match &staged.preferred_id {
                Some(p) if crate::is_id(p) && !id_taken(conn, p)? => p.clone(),
                _ => new_id(),
            };
            conn.execute(
                "INSERT INTO items (id, dataset_id, dir, filename, name, type, hidden, description, metadata, blob, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'file', ?6, ?7, ?8, ?9, ?10, ?10)",
                params![id, dataset_id, dir, filename, name, staged.hidden, staged.description, metadata_text, staged.blob.sha256, now],
            )?;
            (id, Change::Created)
        }
    };
    Ok((get_item_tx(conn, &id)?, change))
}

fn id_taken(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM items WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(crate) fn annotation_row(r: &Row) -> rusqlite::Result<Annotation> {
    Ok(Annotation {
        id: r.get(0)?,
        item_id: r.get(1)?,
        dataset_id: r.get(2)?,
        annotation_type: r.get(3)?,
        label: r.get(4)?,
        coordinates: json_col(r, 5)?,
        metadata: json_col(r, 6)?,
        created_at: r.get(7)?,
    })
}

pub(crate) fn add_annotation_tx(
    conn: &Connection,
    item: &Item,
    a: &NewAnnotation,
) -> Result<Annotation> {
    let id = new_id();
    let now = now_rfc3339();
    conn.execute(
        "INSERT INTO annotations (id, item_id, dataset_id, type, label, coordinates, metadata, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id,
            item.id,
            item.dataset_id,
            a.annotation_type,
            a.label,
            to_json_text(&a.coordinates),
            to_json_text(&a.metadata),
            now
        ],
    )?;
    conn.execute(
        "UPDATE items SET annotations_count = (SELECT COUNT(*) FROM annotations WHERE item_id = ?1) WHERE id = ?1",
        [&item.id],
    )?;
    Ok(Annotation {
        id,
        item_id: item.id.clone(),
        dataset_id: item.dataset_id.clone(),
        annotation_type: a.annotation_type.clone(),
        label: a.label.clone(),
        coordinates: a.coordinates.clone(),
        metadata: a.metadata.clone(),
        created_at: now,
    })
}

/// Replaces an item's free-text annotations by `texts` (used by idempotent imports).
pub(crate) fn set_free_text_tx(conn: &Connection, item: &Item, texts: &[String]) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT coordinates FROM annotations WHERE item_id = ?1 AND type = 'text' AND label = 'free-text' ORDER BY created_at, id",
    )?;
    let current: Vec<Value> = stmt
        .query_map([&item.id], |r| json_col(r, 0))?
        .collect::<rusqlite::Result<_>>()?;
    let wanted: Vec<Value> = texts.iter().map(|t| Value::String(t.clone())).collect();
    if current == wanted {
        return Ok(false);
    }
    conn.execute(
        "DELETE FROM annotations WHERE item_id = ?1 AND type = 'text' AND label = 'free-text'",
        [&item.id],
    )?;
    for t in texts {
        add_annotation_tx(conn, item, &NewAnnotation::free_text(t.clone()))?;
    }
    conn.execute(
        "UPDATE items SET annotations_count = (SELECT COUNT(*) FROM annotations WHERE item_id = ?1) WHERE id = ?1",
        [&item.id],
    )?;
    Ok(true)
}

const MODEL_COLS: &str = "id, name, status, configuration, dataset_id, base_model_id, metadata,
    labels, description, tags, created_at, updated_at";

fn model_row(r: &Row) -> rusqlite::Result<Model> {
    let status: String = r.get(2)?;
    let configuration = match json_col(r, 3)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let strings = |v: Value| -> Vec<String> { serde_json::from_value(v).unwrap_or_default() };
    Ok(Model {
        id: r.get(0)?,
        name: r.get(1)?,
        status: ModelStatus::parse(&status).unwrap_or(ModelStatus::Failed),
        configuration,
        dataset_id: r.get(4)?,
        base_model_id: r.get(5)?,
        artifacts: Vec::new(),
        metadata: json_col(r, 6)?,
        labels: strings(json_col(r, 7)?),
        description: r.get(8)?,
        tags: strings(json_col(r, 9)?),
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

fn with_artifacts(conn: &Connection, mut m: Model) -> Result<Model> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, size, blob FROM artifacts WHERE model_id = ?1 ORDER BY path",
    )?;
    m.artifacts = stmt
        .query_map([&m.id], |r| {
            Ok(Artifact {
                path: r.get(0)?,
                size: r.get::<_, i64>(1)? as u64,
                sha256: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(m)
}

fn model_by(conn: &Connection, col: &str, key: &str) -> Result<Model> {
    let m = conn
        .query_row(
            &format!("SELECT {MODEL_COLS} FROM models WHERE {col} = ?1"),
            [key],
            model_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::not_found("model", key))?;
    with_artifacts(conn, m)
}

fn name_taken(conn: &Connection, table: &str, name: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            &format!("SELECT 1 FROM {table} WHERE name = ?1"),
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn variables_of(conn: &Connection, pipeline_id: &str) -> Result<Vec<Variable>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, type, value, description FROM variables WHERE pipeline_id = ?1 ORDER BY position",
    )?;
    let vars = stmt
        .query_map([pipeline_id], |r| {
            Ok(Variable {
                id: r.get(0)?,
                name: r.get(1)?,
                reference: pipeline_id.to_string(),
                var_type: r.get(2)?,
                value: json_col(r, 3)?,
                description: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(vars)
}

fn pipeline_by(conn: &Connection, col: &str, key: &str) -> Result<Pipeline> {
    let mut p = conn
        .query_row(
            &format!(
                "SELECT id, name, nodes, connections, start_nodes, created_at, updated_at FROM pipelines WHERE {col} = ?1"
            ),
            [key],
            |r| {
                let arr = |v: Value| -> Vec<Value> { serde_json::from_value(v).unwrap_or_default() };
                Ok(Pipeline {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    nodes: arr(json_col(r, 2)?),
                    connections: arr(json_col(r, 3)?),
                    start_nodes: arr(json_col(r, 4)?),
                    variables: Vec::new(),
                    created_at: r.get(5)?,
                    updated_at: r.get(6)?,
                })
            },
        )
        .optional()?
        .ok_or_else(|| StoreError::not_found("pipeline", key))?;
    p.variables = variables_of(conn, &p.id)?;
    Ok(p)
}

const EXEC_COLS: &str =
    "id, function_name, service_name, pipeline, input, output, status, latest, status_log, created_at, updated_at";

fn execution_row(r: &Row) -> rusqlite::Result<Execution> {
    let status: String = r.get(6)?;
    let status = ExecutionStatus::parse(&status).unwrap_or(ExecutionStatus::SystemFailure);
    let latest: StatusEntry = serde_json::from_value(json_col(r, 7)?).unwrap_or(StatusEntry {
        status,
        percent_complete: 0,
        message: None,
        error: None,
        timestamp: String::new(),
    });
    Ok(Execution {
        id: r.get(0)?,
        function_name: r.get(1)?,
        service_name: r.get(2)?,
        pipeline: serde_json::from_value(json_col(r, 3)?).ok(),
        input: json_col(r, 4)?,
        output: json_col(r, 5)?,
        status,
        latest_status: latest,
        status_log: serde_json::from_value(json_col(r, 8)?).unwrap_or_default(),
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

fn execution_by_id(conn: &Connection, id: &str) -> Result<Execution> {
    conn.query_row(
        &format!("SELECT {EXEC_COLS} FROM executions WHERE id = ?1"),
        [id],
        execution_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("execution", id))
}

fn save_execution(conn: &Connection, e: &Execution) -> Result<()> {
    conn.execute(
        "UPDATE executions SET output = ?2, status = ?3, latest = ?4, status_log = ?5, updated_at = ?6 WHERE id = ?1",
        params![
            e.id,
            to_json_text(&e.output),
            e.status.as_str(),
            to_json_text(&e.latest_status),
            to_json_text(&e.status_log),
            e.updated_at
        ],
    )?;
    Ok(())
}

fn feature_set_row(r: &Row) -> rusqlite::Result<FeatureSet> {
    Ok(FeatureSet {
        id: r.get(0)?,
        name: r.get(1)?,
        set_type: r.get(2)?,
        entity_type: r.get(3)?,
        size: r.get::<_, i64>(4)? as u32,
        model_id: r.get(5)?,
        created_at: r.get(6)?,
    })
}

const FS_COLS: &str = "id, name, type, entity_type, size, model_id, created_at";

fn feature_set_by_id(conn: &Connection, id: &str) -> Result<FeatureSet> {
    conn.query_row(
        &format!("SELECT {FS_COLS} FROM feature_sets WHERE id = ?1"),
        [id],
        feature_set_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("feature set", id))
}

/// Files under `dir`, relative `/`-separated paths, sorted.
fn walk_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| StoreError::io(&d, e))?;
        for e in entries {
            let e = e.map_err(|e| StoreError::io(&d, e))?;
            let p = e.path();
            let meta = std::fs::metadata(&p).map_err(|e| StoreError::io(&p, e))?;
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let rel = p.strip_prefix(dir).map_err(|_| {
                    StoreError::Corrupt(format!("{} outside {}", p.display(), dir.display()))
                })?;
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((rel.join("/"), p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `a/b.bin` under `dir`, refusing paths that would leave it.
fn artifact_dest(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(StoreError::Corrupt(format!(
            "artifact path {rel:?} leaves its folder"
        )));
    }
    Ok(dir.join(p))
}

#[async_trait]
impl Platform for LocalStore {
    fn backend_name(&self) -> &'static str {
        "local"
    }

    async fn create_dataset(&self, name: &str) -> Result<Dataset> {
        let name = name.trim().to_string();
        if name.is_empty() {
            return Err(StoreError::invalid("dataset name", "must not be empty"));
        }
        self.db
            .write(move |t| {
                if name_taken(t, "datasets", &name)? {
                    return Err(StoreError::Conflict(format!("a dataset named {name:?} exists")));
                }
                let id = new_id();
                let now = now_rfc3339();
                t.execute(
                    "INSERT INTO datasets (id, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                    params![id, name, now],
                )?;
                dataset_by(t, "id", &id)
            })
            .await
    }

    async fn get_dataset(&self, id: &str) -> Result<Dataset> {
        let id = id.to_string();
        self.db.read(move |c| dataset_by(c, "id", &id)).await
    }

    async fn dataset_by_name(&self, name: &str) -> Result<Dataset> {
        let name = name.to_string();
        self.db.read(move |c| dataset_by(c, "name", &name)).await
    }

    async fn list_datasets(&self) -> Result<Vec<Dataset>> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {DATASET_COLS} FROM datasets ORDER BY name"
                ))?;
                let v = stmt
                    .query_map([], dataset_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn upload_item(&self, dataset_id: &str, item: NewItem) -> Result<Item> {
        normalize_filename(&item.filename)?;
        let blob = self.blobs.put_bytes(&item.bytes, true)?;
        self.blobs.sync_dirs([&blob.sha256])?;
        let staged = StagedItem {
            mimetype: item
                .mimetype
                .clone()
                .unwrap_or_else(|| guess_mimetype(&item.filename).to_string()),
            filename: item.filename,
            blob,
            description: item.description,
            metadata: item.metadata,
            hidden: item.hidden,
            preferred_id: None,
        };
        let dataset_id = dataset_id.to_string();
        self.db
            .write(move |t| {
                dataset_by(t, "id", &dataset_id)?;
                Ok(upsert_item_tx(t, &dataset_id, &staged)?.0)
            })
            .await
    }

    async fn get_item(&self, id: &str) -> Result<Item> {
        let id = id.to_string();
        self.db.read(move |c| get_item_tx(c, &id)).await
    }

    async fn update_item(&self, item: &Item) -> Result<Item> {
        let mut item = item.clone();
        check_update_metadata(&item)?;
        self.db
            .write(move |t| {
                let stored: Option<String> = t
                    .query_row(
                        "SELECT metadata FROM items WHERE id = ?1",
                        params![item.id],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(stored) = stored else {
                    return Err(StoreError::not_found("item", &item.id));
                };
                let mut metadata: Value = serde_json::from_str(&stored).unwrap_or(Value::Null);
                merge_metadata(&mut metadata, &item.metadata);
                item.metadata = metadata;
                let n = t.execute(
                    "UPDATE items SET description = ?2, metadata = ?3, hidden = ?4, updated_at = ?5 WHERE id = ?1",
                    params![
                        item.id,
                        item.description,
                        to_json_text(&item.metadata),
                        item.hidden,
                        now_rfc3339()
                    ],
                )?;
                if n == 0 {
                    return Err(StoreError::not_found("item", &item.id));
                }
                get_item_tx(t, &item.id)
            })
            .await
    }

    async fn query_items(&self, dataset_id: &str, query: &ItemQuery) -> Result<ItemPage> {
        if query.page_size == 0 || query.page_size > 10_000 {
            return Err(StoreError::invalid(
                "pageSize",
                format!("{} is not in 1..=10000", query.page_size),
            ));
        }
        // A bare filter or a whole body (a model's subsets are stored as Dataloop bodies).
        let filter = Filter::parse_given(query.filter.as_ref())?;
        let (where_sql, mut params) = filter.to_sql();
        let dataset_id = dataset_id.to_string();
        let (page, page_size) = (query.page, query.page_size);
        self.db
            .read(move |c| {
                dataset_by(c, "id", &dataset_id)?;
                params.insert(0, rusqlite::types::Value::Text(dataset_id.clone()));
                let total: i64 = c.query_row(
                    &format!("SELECT COUNT(*) FROM items WHERE dataset_id = ? AND {where_sql}"),
                    rusqlite::params_from_iter(params.iter()),
                    |r| r.get(0),
                )?;
                let offset = u64::from(page) * u64::from(page_size);
                let mut stmt = c.prepare(&format!(
                    "SELECT {ITEM_COLS} FROM items WHERE dataset_id = ? AND {where_sql}
                     ORDER BY filename LIMIT {page_size} OFFSET {offset}"
                ))?;
                let items: Vec<Item> = stmt
                    .query_map(rusqlite::params_from_iter(params.iter()), item_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(ItemPage {
                    has_next_page: offset + (items.len() as u64) < total as u64,
                    items,
                    total_items_count: total as u64,
                    page,
                })
            })
            .await
    }

    async fn item_bytes(&self, id: &str) -> Result<Vec<u8>> {
        let path = self.item_path(id).await?;
        tokio_read(path).await
    }

    async fn annotations(&self, item_id: &str) -> Result<Vec<Annotation>> {
        let item_id = item_id.to_string();
        self.db
            .read(move |c| {
                get_item_tx(c, &item_id)?;
                let mut stmt = c.prepare_cached(
                    "SELECT id, item_id, dataset_id, type, label, coordinates, metadata, created_at
                     FROM annotations WHERE item_id = ?1 ORDER BY created_at, id",
                )?;
                let v = stmt
                    .query_map([&item_id], annotation_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn add_annotation(&self, item_id: &str, annotation: NewAnnotation) -> Result<Annotation> {
        let item_id = item_id.to_string();
        self.db
            .write(move |t| {
                let item = get_item_tx(t, &item_id)?;
                add_annotation_tx(t, &item, &annotation)
            })
            .await
    }

    async fn create_model(&self, model: NewModel) -> Result<Model> {
        if model.name.trim().is_empty() {
            return Err(StoreError::invalid("model name", "must not be empty"));
        }
        self.db
            .write(move |t| {
                if name_taken(t, "models", &model.name)? {
                    return Err(StoreError::Conflict(format!(
                        "a model named {:?} exists",
                        model.name
                    )));
                }
                let id = new_id();
                let now = now_rfc3339();
                t.execute(
                    "INSERT INTO models (id, name, status, configuration, dataset_id, metadata, description, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                    params![
                        id,
                        model.name,
                        model.status.as_str(),
                        to_json_text(&model.configuration),
                        model.dataset_id,
                        to_json_text(&if model.metadata.is_null() { Value::Object(Map::new()) } else { model.metadata.clone() }),
                        model.description,
                        now
                    ],
                )?;
                model_by(t, "id", &id)
            })
            .await
    }

    async fn get_model(&self, id: &str) -> Result<Model> {
        let id = id.to_string();
        self.db.read(move |c| model_by(c, "id", &id)).await
    }

    async fn model_by_name(&self, name: &str) -> Result<Model> {
        let name = name.to_string();
        self.db.read(move |c| model_by(c, "name", &name)).await
    }

    async fn list_models(&self) -> Result<Vec<Model>> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {MODEL_COLS} FROM models ORDER BY created_at, id"
                ))?;
                let models: Vec<Model> = stmt
                    .query_map([], model_row)?
                    .collect::<rusqlite::Result<_>>()?;
                models.into_iter().map(|m| with_artifacts(c, m)).collect()
            })
            .await
    }

    async fn clone_model(&self, id: &str, options: CloneModel) -> Result<Model> {
        let id = id.to_string();
        let stamp = name_timestamp(now_secs());
        self.db
            .write(move |t| {
                let base = model_by(t, "id", &id)?;
                let wanted = options
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}_{stamp}", base.name));
                if wanted.trim().is_empty() {
                    return Err(StoreError::invalid("model name", "must not be empty"));
                }
                let mut name = wanted.clone();
                let mut n = 0;
                while name_taken(t, "models", &name)? {
                    n += 1;
                    if n > 1000 {
                        return Err(StoreError::Conflict(format!(
                            "model names {wanted:?} to {wanted}_v1000 are all taken"
                        )));
                    }
                    name = format!("{wanted}_v{n}");
                }
                let mut configuration = base.configuration.clone();
                if let Some(over) = &options.configuration {
                    for (k, v) in over {
                        configuration.insert(k.clone(), v.clone());
                    }
                }
                let mut clone = base.clone();
                clone.metadata = if base.metadata.is_object() {
                    base.metadata.clone()
                } else {
                    Value::Object(Map::new())
                };
                clone.set_subsets(&options.subsets.clone().unwrap_or_else(Subsets::default_filters));
                let new = new_id();
                let now = now_rfc3339();
                t.execute(
                    "INSERT INTO models (id, name, status, configuration, dataset_id, base_model_id, metadata, labels, description, tags, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                    params![
                        new,
                        name,
                        options.status.unwrap_or(ModelStatus::Created).as_str(),
                        to_json_text(&configuration),
                        options.dataset_id.clone().or(base.dataset_id.clone()),
                        base.id,
                        to_json_text(&clone.metadata),
                        to_json_text(&base.labels),
                        options.description.clone().or(base.description.clone()),
                        to_json_text(&base.tags),
                        now
                    ],
                )?;
                model_by(t, "id", &new)
            })
            .await
    }

    async fn update_model(&self, model: &Model) -> Result<Model> {
        let m = model.clone();
        if m.name.trim().is_empty() {
            return Err(StoreError::invalid("model name", "must not be empty"));
        }
        self.db
            .write(move |t| {
                let other: Option<String> = t
                    .query_row("SELECT id FROM models WHERE name = ?1", [&m.name], |r| r.get(0))
                    .optional()?;
                if other.as_ref().is_some_and(|o| *o != m.id) {
                    return Err(StoreError::Conflict(format!("a model named {:?} exists", m.name)));
                }
                let n = t.execute(
                    "UPDATE models SET name = ?2, status = ?3, configuration = ?4, dataset_id = ?5, metadata = ?6,
                     labels = ?7, description = ?8, tags = ?9, updated_at = ?10 WHERE id = ?1",
                    params![
                        m.id,
                        m.name,
                        m.status.as_str(),
                        to_json_text(&m.configuration),
                        m.dataset_id,
                        to_json_text(&m.metadata),
                        to_json_text(&m.labels),
                        m.description,
                        to_json_text(&m.tags),
                        now_rfc3339()
                    ],
                )?;
                if n == 0 {
                    return Err(StoreError::not_found("model", &m.id));
                }
                model_by(t, "id", &m.id)
            })
            .await
    }

    async fn upload_artifacts(&self, id: &str, dir: &Path) -> Result<Model> {
        self.get_model(id).await?;
        let files = walk_files(dir)?;
        if files.is_empty() {
            return Err(StoreError::invalid(
                format!("artifacts folder {}", dir.display()),
                "holds no files",
            ));
        }
        let blobs = self.blobs.clone();
        let staged = tokio_blocking(move || {
            let staged = files
                .iter()
                .map(|(rel, p)| Ok((rel.clone(), blobs.put_file(p, true)?)))
                .collect::<Result<Vec<_>>>()?;
            blobs.sync_dirs(staged.iter().map(|(_, b)| b.sha256.clone()))?;
            Ok(staged)
        })
        .await?;
        let id = id.to_string();
        self.db
            .write(move |t| {
                model_by(t, "id", &id)?;
                t.execute("DELETE FROM artifacts WHERE model_id = ?1", [&id])?;
                for (rel, b) in &staged {
                    t.execute(
                        "INSERT INTO artifacts (model_id, path, blob, size) VALUES (?1, ?2, ?3, ?4)",
                        params![id, rel, b.sha256, b.size as i64],
                    )?;
                }
                t.execute(
                    "UPDATE models SET updated_at = ?2 WHERE id = ?1",
                    params![id, now_rfc3339()],
                )?;
                model_by(t, "id", &id)
            })
            .await
    }

    async fn download_artifacts(&self, id: &str, dir: &Path) -> Result<()> {
        let model = self.get_model(id).await?;
        if model.artifacts.is_empty() {
            return Err(StoreError::Conflict(format!(
                "model {} ({}) has no artifacts",
                model.name, model.id
            )));
        }
        let blobs = self.blobs.clone();
        let dir = dir.to_path_buf();
        tokio_blocking(move || {
            for a in &model.artifacts {
                let dest = artifact_dest(&dir, &a.path)?;
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
                }
                let tmp = dest.with_extension("cliptune-part");
                std::fs::copy(blobs.path(&a.sha256), &tmp)
                    .map_err(|e| StoreError::io(blobs.path(&a.sha256), e))?;
                std::fs::rename(&tmp, &dest).map_err(|e| StoreError::io(&dest, e))?;
            }
            Ok(())
        })
        .await
    }

    async fn publish_metrics(&self, samples: &[MetricSample]) -> Result<usize> {
        for s in samples {
            if !s.data.x.is_finite() || !s.data.y.is_finite() {
                return Err(StoreError::invalid(
                    format!("metric sample {}/{}", s.figure, s.legend),
                    "x and y must be finite numbers",
                ));
            }
        }
        let samples = samples.to_vec();
        self.db
            .write(move |t| {
                let now = now_rfc3339();
                for s in &samples {
                    model_by(t, "id", &s.model_id)?;
                    t.execute(
                        "INSERT INTO metrics (model_id, dataset_id, figure, legend, x, y, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![s.model_id, s.dataset_id, s.figure, s.legend, s.data.x, s.data.y, now],
                    )?;
                }
                Ok(samples.len())
            })
            .await
    }

    async fn list_metrics(&self, model_id: &str) -> Result<Vec<MetricSample>> {
        let model_id = model_id.to_string();
        self.db
            .read(move |c| {
                model_by(c, "id", &model_id)?;
                let mut stmt = c.prepare_cached(
                    "SELECT model_id, dataset_id, figure, legend, x, y, created_at FROM metrics WHERE model_id = ?1 ORDER BY seq",
                )?;
                let v = stmt
                    .query_map([&model_id], |r| {
                        Ok(MetricSample {
                            model_id: r.get(0)?,
                            dataset_id: r.get(1)?,
                            figure: r.get(2)?,
                            legend: r.get(3)?,
                            data: MetricPoint {
                                x: r.get(4)?,
                                y: r.get(5)?,
                            },
                            created_at: r.get(6)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn create_pipeline(&self, p: NewPipeline) -> Result<Pipeline> {
        if p.name.trim().is_empty() {
            return Err(StoreError::invalid("pipeline name", "must not be empty"));
        }
        let mut seen = HashSet::new();
        for v in &p.variables {
            if !seen.insert(v.name.clone()) {
                return Err(StoreError::invalid(
                    format!("pipeline {}", p.name),
                    format!("variable {:?} is declared twice", v.name),
                ));
            }
        }
        self.db
            .write(move |t| {
                if name_taken(t, "pipelines", &p.name)? {
                    return Err(StoreError::Conflict(format!("a pipeline named {:?} exists", p.name)));
                }
                let id = new_id();
                let now = now_rfc3339();
                t.execute(
                    "INSERT INTO pipelines (id, name, nodes, connections, start_nodes, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![id, p.name, to_json_text(&p.nodes), to_json_text(&p.connections), to_json_text(&p.start_nodes), now],
                )?;
                for (i, v) in p.variables.iter().enumerate() {
                    t.execute(
                        "INSERT INTO variables (id, pipeline_id, position, name, type, value, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![new_id(), id, i as i64, v.name, v.var_type, to_json_text(&v.value), v.description],
                    )?;
                }
                pipeline_by(t, "id", &id)
            })
            .await
    }

    async fn get_pipeline(&self, id: &str) -> Result<Pipeline> {
        let id = id.to_string();
        self.db.read(move |c| pipeline_by(c, "id", &id)).await
    }

    async fn pipeline_by_name(&self, name: &str) -> Result<Pipeline> {
        let name = name.to_string();
        self.db.read(move |c| pipeline_by(c, "name", &name)).await
    }

    async fn list_pipelines(&self) -> Result<Vec<Pipeline>> {
        self.db
            .read(|c| {
                let ids: Vec<String> = c
                    .prepare("SELECT id FROM pipelines ORDER BY name")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                ids.iter().map(|id| pipeline_by(c, "id", id)).collect()
            })
            .await
    }

    async fn get_variables(&self, pipeline_id: &str) -> Result<Vec<Variable>> {
        Ok(self.get_pipeline(pipeline_id).await?.variables)
    }

    async fn update_variables(
        &self,
        pipeline_id: &str,
        updates: &[VariableUpdate],
    ) -> Result<Vec<Variable>> {
        let pipeline_id = pipeline_id.to_string();
        let updates = updates.to_vec();
        self.db
            .write(move |t| {
                pipeline_by(t, "id", &pipeline_id)?;
                for u in &updates {
                    let n = t.execute(
                        "UPDATE variables SET value = ?3 WHERE pipeline_id = ?1 AND name = ?2",
                        params![pipeline_id, u.name, to_json_text(&u.value)],
                    )?;
                    if n == 0 {
                        return Err(StoreError::not_found(
                            "pipeline variable",
                            format!("{} (pipeline {pipeline_id})", u.name),
                        ));
                    }
                }
                t.execute(
                    "UPDATE pipelines SET updated_at = ?2 WHERE id = ?1",
                    params![pipeline_id, now_rfc3339()],
                )?;
                variables_of(t, &pipeline_id)
            })
            .await
    }

    async fn promote_model_variable(
        &self,
        pipeline_id: &str,
        variable: &str,
        model_id: &str,
    ) -> Result<Variable> {
        let (pipeline_id, variable, model_id) = (
            pipeline_id.to_string(),
            variable.to_string(),
            model_id.to_string(),
        );
        self.db
            .write(move |t| {
                let vars = variables_of(t, &pipeline_id)?;
                pipeline_by(t, "id", &pipeline_id)?;
                let var = vars.iter().find(|v| v.name == variable).ok_or_else(|| {
                    StoreError::not_found(
                        "pipeline variable",
                        format!("{variable} (pipeline {pipeline_id})"),
                    )
                })?;
                if !var.var_type.eq_ignore_ascii_case("model") {
                    return Err(StoreError::invalid(
                        format!("variable {variable:?}"),
                        format!("has type {}, not Model", var.var_type),
                    ));
                }
                // Checked in the same transaction as the update: no window in which the
                // variable could point at a model whose artifacts are not stored.
                let model = model_by(t, "id", &model_id)?;
                if !matches!(model.status, ModelStatus::Trained | ModelStatus::Deployed) {
                    return Err(StoreError::Conflict(format!(
                        "model {} ({}) is {}, not trained: variable {variable:?} left unchanged",
                        model.name,
                        model.id,
                        model.status.as_str()
                    )));
                }
                if model.artifacts.is_empty() {
                    return Err(StoreError::Conflict(format!(
                        "model {} ({}) has no stored artifacts: variable {variable:?} left unchanged",
                        model.name, model.id
                    )));
                }
                t.execute(
                    "UPDATE variables SET value = ?3 WHERE pipeline_id = ?1 AND name = ?2",
                    params![pipeline_id, variable, to_json_text(&Value::String(model_id.clone()))],
                )?;
                t.execute(
                    "UPDATE pipelines SET updated_at = ?2 WHERE id = ?1",
                    params![pipeline_id, now_rfc3339()],
                )?;
                variables_of(t, &pipeline_id)?
                    .into_iter()
                    .find(|v| v.name == variable)
                    .ok_or_else(|| StoreError::Corrupt("variable vanished in its own transaction".into()))
            })
            .await
    }

    async fn create_execution(&self, e: NewExecution) -> Result<Execution> {
        if e.function_name.trim().is_empty() {
            return Err(StoreError::invalid("functionName", "must not be empty"));
        }
        self.db
            .write(move |t| {
                let id = new_id();
                let now = now_rfc3339();
                let entry = StatusEntry {
                    status: ExecutionStatus::Created,
                    percent_complete: 0,
                    message: None,
                    error: None,
                    timestamp: now.clone(),
                };
                t.execute(
                    "INSERT INTO executions (id, function_name, service_name, pipeline, pipeline_id, pipeline_execution_id, input, output, status, latest, status_log, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'null', 'created', ?8, ?9, ?10, ?10)",
                    params![
                        id,
                        e.function_name,
                        e.service_name,
                        e.pipeline.as_ref().map(to_json_text),
                        e.pipeline.as_ref().map(|p| p.id.clone()),
                        e.pipeline.as_ref().and_then(|p| p.execution_id.clone()),
                        to_json_text(&e.input),
                        to_json_text(&entry),
                        to_json_text(&vec![entry.clone()]),
                        now
                    ],
                )?;
                execution_by_id(t, &id)
            })
            .await
    }

    async fn get_execution(&self, id: &str) -> Result<Execution> {
        let id = id.to_string();
        self.db.read(move |c| execution_by_id(c, &id)).await
    }

    async fn list_executions(&self, q: &ExecutionQuery) -> Result<Vec<Execution>> {
        let q = q.clone();
        self.db
            .read(move |c| {
                let mut sql = format!("SELECT {EXEC_COLS} FROM executions WHERE 1");
                let mut params: Vec<String> = Vec::new();
                if let Some(s) = q.status {
                    sql.push_str(" AND status = ?");
                    params.push(s.as_str().into());
                }
                if let Some(f) = &q.function_name {
                    sql.push_str(" AND function_name = ?");
                    params.push(f.clone());
                }
                if let Some(p) = &q.pipeline_id {
                    sql.push_str(" AND pipeline_id = ?");
                    params.push(p.clone());
                }
                if let Some(p) = &q.pipeline_execution_id {
                    sql.push_str(" AND pipeline_execution_id = ?");
                    params.push(p.clone());
                }
                sql.push_str(" ORDER BY created_at DESC, rowid DESC");
                if q.limit > 0 {
                    sql.push_str(&format!(" LIMIT {}", q.limit));
                }
                let mut stmt = c.prepare(&sql)?;
                let v = stmt
                    .query_map(rusqlite::params_from_iter(params.iter()), execution_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn progress_execution(&self, id: &str, p: ExecutionProgress) -> Result<Execution> {
        if p.status.is_some_and(ExecutionStatus::is_terminal) {
            return Err(StoreError::invalid(
                "execution progress",
                "terminal statuses are set with finish_execution",
            ));
        }
        if p.percent_complete.is_some_and(|x| x > 100) {
            return Err(StoreError::invalid(
                "percentComplete",
                format!("{} is over 100", p.percent_complete.unwrap_or(0)),
            ));
        }
        let id = id.to_string();
        self.db
            .write(move |t| {
                let mut e = execution_by_id(t, &id)?;
                if e.status.is_terminal() {
                    return Err(StoreError::Conflict(format!(
                        "execution {id} already finished ({})",
                        e.status.as_str()
                    )));
                }
                let now = now_rfc3339();
                let status = p.status.unwrap_or(if e.status == ExecutionStatus::Created {
                    ExecutionStatus::InProgress
                } else {
                    e.status
                });
                let entry = StatusEntry {
                    status,
                    percent_complete: p
                        .percent_complete
                        .unwrap_or(e.latest_status.percent_complete),
                    message: p.message.or(e.latest_status.message.clone()),
                    error: None,
                    timestamp: now.clone(),
                };
                // The log records status changes; percent and message updates only move `latestStatus`.
                if status != e.status {
                    e.status_log.push(entry.clone());
                }
                e.status = status;
                e.latest_status = entry;
                if let Some(o) = p.output {
                    e.output = o;
                }
                e.updated_at = now;
                save_execution(t, &e)?;
                Ok(e)
            })
            .await
    }

    async fn finish_execution(
        &self,
        id: &str,
        status: ExecutionStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<Execution> {
        if !status.is_terminal() {
            return Err(StoreError::invalid(
                "execution status",
                format!("{} is not a final status", status.as_str()),
            ));
        }
        let id = id.to_string();
        self.db
            .write(move |t| {
                let mut e = execution_by_id(t, &id)?;
                if e.status.is_terminal() {
                    return Err(StoreError::Conflict(format!(
                        "execution {id} already finished ({})",
                        e.status.as_str()
                    )));
                }
                let now = now_rfc3339();
                let entry = StatusEntry {
                    status,
                    percent_complete: if status == ExecutionStatus::Success {
                        100
                    } else {
                        e.latest_status.percent_complete
                    },
                    message: e.latest_status.message.clone(),
                    error,
                    timestamp: now.clone(),
                };
                e.status_log.push(entry.clone());
                e.status = status;
                e.latest_status = entry;
                if let Some(o) = output {
                    e.output = o;
                }
                e.updated_at = now;
                save_execution(t, &e)?;
                Ok(e)
            })
            .await
    }

    async fn feature_set_for_model(
        &self,
        model_id: &str,
        name: &str,
        size: u32,
    ) -> Result<FeatureSet> {
        if size == 0 {
            return Err(StoreError::invalid("feature set size", "must be positive"));
        }
        let (model_id, name) = (model_id.to_string(), name.to_string());
        self.db
            .write(move |t| {
                model_by(t, "id", &model_id)?;
                let existing = t
                    .query_row(
                        &format!("SELECT {FS_COLS} FROM feature_sets WHERE model_id = ?1"),
                        [&model_id],
                        feature_set_row,
                    )
                    .optional()?;
                if let Some(fs) = existing {
                    if fs.size != size {
                        return Err(StoreError::Conflict(format!(
                            "feature set {} of model {model_id} has size {}, not {size}",
                            fs.id, fs.size
                        )));
                    }
                    return Ok(fs);
                }
                let id = new_id();
                t.execute(
                    "INSERT INTO feature_sets (id, name, type, entity_type, size, model_id, created_at) VALUES (?1, ?2, 'embeddings', 'item', ?3, ?4, ?5)",
                    params![id, name, size, model_id, now_rfc3339()],
                )?;
                feature_set_by_id(t, &id)
            })
            .await
    }

    async fn get_feature_set(&self, id: &str) -> Result<FeatureSet> {
        let id = id.to_string();
        self.db.read(move |c| feature_set_by_id(c, &id)).await
    }

    async fn list_feature_sets(&self) -> Result<Vec<FeatureSet>> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {FS_COLS} FROM feature_sets ORDER BY created_at, id"
                ))?;
                let v = stmt
                    .query_map([], feature_set_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn upsert_vectors(
        &self,
        feature_set_id: &str,
        vectors: &[NewVector],
    ) -> Result<UpsertSummary> {
        for v in vectors {
            if v.value.iter().any(|x| !x.is_finite()) {
                return Err(StoreError::invalid(
                    format!("vector of {}", v.entity_id),
                    "holds NaN or infinite values",
                ));
            }
        }
        let rows: Vec<(String, String, Vec<u8>, usize)> = vectors
            .iter()
            .map(|v| {
                (
                    v.entity_id.clone(),
                    v.dataset_id.clone(),
                    to_blob(&v.value),
                    v.value.len(),
                )
            })
            .collect();
        let fs_id = feature_set_id.to_string();
        self.db
            .write(move |t| {
                let fs = feature_set_by_id(t, &fs_id)?;
                if let Some((e, _, _, n)) = rows.iter().find(|r| r.3 != fs.size as usize) {
                    return Err(StoreError::invalid(
                        format!("vector of {e}"),
                        format!("has {n} values, feature set {fs_id} has size {}", fs.size),
                    ));
                }
                let mut seq: i64 =
                    t.query_row("SELECT IFNULL(MAX(seq), 0) FROM vectors", [], |r| r.get(0))?;
                let mut summary = UpsertSummary::default();
                let mut exists = t.prepare_cached(
                    "SELECT 1 FROM vectors WHERE feature_set_id = ?1 AND entity_id = ?2",
                )?;
                let mut upsert = t.prepare_cached(
                    "INSERT INTO vectors (id, feature_set_id, entity_id, dataset_id, value, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (feature_set_id, entity_id) DO UPDATE SET dataset_id = excluded.dataset_id, value = excluded.value, seq = excluded.seq",
                )?;
                for (entity, dataset, blob, _) in &rows {
                    seq += 1;
                    if exists.exists(params![fs_id, entity])? {
                        summary.updated += 1;
                    } else {
                        summary.inserted += 1;
                    }
                    upsert.execute(params![new_id(), fs_id, entity, dataset, blob, seq])?;
                }
                Ok(summary)
            })
            .await
    }

    async fn vector_entities(
        &self,
        feature_set_id: &str,
        dataset_id: Option<&str>,
    ) -> Result<Vec<Id>> {
        let fs_id = feature_set_id.to_string();
        let ds = dataset_id.map(String::from);
        self.db
            .read(move |c| {
                feature_set_by_id(c, &fs_id)?;
                let mut stmt = c.prepare_cached(
                    "SELECT entity_id FROM vectors WHERE feature_set_id = ?1 AND (?2 IS NULL OR dataset_id = ?2) ORDER BY entity_id",
                )?;
                let v = stmt
                    .query_map(params![fs_id, ds], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn entities_with_vectors(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<Id>> {
        let fs_id = feature_set_id.to_string();
        let ids = entity_ids.to_vec();
        self.db
            .read(move |c| {
                feature_set_by_id(c, &fs_id)?;
                let mut out = Vec::new();
                // Well below SQLite's bound on host parameters.
                for chunk in ids.chunks(500) {
                    let marks = vec!["?"; chunk.len()].join(", ");
                    let mut stmt = c.prepare(&format!(
                        "SELECT entity_id FROM vectors WHERE feature_set_id = ? AND entity_id IN ({marks})"
                    ))?;
                    let args = std::iter::once(&fs_id).chain(chunk);
                    let found = stmt
                        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    out.extend(found);
                }
                Ok(out)
            })
            .await
    }

    async fn get_vector(&self, feature_set_id: &str, entity_id: &str) -> Result<FeatureVector> {
        let (fs_id, entity) = (feature_set_id.to_string(), entity_id.to_string());
        self.db
            .read(move |c| {
                let row: Option<(String, String, Vec<u8>)> = c
                    .query_row(
                        "SELECT id, dataset_id, value FROM vectors WHERE feature_set_id = ?1 AND entity_id = ?2",
                        params![fs_id, entity],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let (id, dataset_id, blob) = row.ok_or_else(|| {
                    StoreError::not_found("feature vector", format!("{entity} in {fs_id}"))
                })?;
                Ok(FeatureVector {
                    id,
                    feature_set_id: fs_id,
                    entity_id: entity,
                    dataset_id,
                    value: from_blob(&blob)?,
                })
            })
            .await
    }

    async fn nearest(&self, feature_set_id: &str, q: &NearestQuery) -> Result<Vec<Neighbor>> {
        if q.k == 0 || q.k > 10_000 {
            return Err(StoreError::invalid(
                "k",
                format!("{} is not in 1..=10000", q.k),
            ));
        }
        let filter = match &q.filter {
            Some(f) => {
                if q.dataset_id.is_none() {
                    return Err(StoreError::invalid(
                        "nearest query",
                        "a filter needs a datasetId",
                    ));
                }
                Some(Filter::parse_given(Some(f))?)
            }
            None => None,
        };
        let (fs_id, q) = (feature_set_id.to_string(), q.clone());
        let cache = self.vectors.clone();
        self.db
            .read(move |c| {
                let fs = feature_set_by_id(c, &fs_id)?;
                if q.vector.len() != fs.size as usize {
                    return Err(StoreError::invalid(
                        "query vector",
                        format!(
                            "has {} values, feature set {fs_id} has size {}",
                            q.vector.len(),
                            fs.size
                        ),
                    ));
                }
                let allowed: Option<HashSet<String>> = match (&filter, &q.dataset_id) {
                    (Some(f), Some(ds)) => {
                        let (where_sql, mut params) = f.to_sql();
                        params.insert(0, rusqlite::types::Value::Text(ds.clone()));
                        let mut stmt = c.prepare(&format!(
                            "SELECT id FROM items WHERE dataset_id = ? AND {where_sql}"
                        ))?;
                        let ids = stmt
                            .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?
                            .collect::<rusqlite::Result<_>>()?;
                        Some(ids)
                    }
                    _ => None,
                };
                let m = cache.fresh(c, &fs_id, fs.size as usize)?;
                let m = m
                    .read()
                    .map_err(|_| StoreError::Unavailable("vector cache lock poisoned".into()))?;
                let hits = match (&allowed, &q.dataset_id) {
                    (Some(ids), _) => {
                        let mut mask = vec![false; m.len()];
                        for id in ids {
                            if let Some(r) = m.row_of(id) {
                                mask[r] = true;
                            }
                        }
                        m.top_k(&q.vector, q.k, &|r| mask[r])
                    }
                    (None, Some(ds)) => match m.dataset_index(ds) {
                        Some(di) => m.top_k(&q.vector, q.k, &|r| m.row_dataset_index(r) == di),
                        None => Vec::new(),
                    },
                    (None, None) => m.top_k(&q.vector, q.k, &|_| true),
                };
                Ok(hits
                    .into_iter()
                    .map(|(r, score)| Neighbor {
                        entity_id: m.entity_id(r).to_string(),
                        dataset_id: m.dataset_id(r).to_string(),
                        score,
                    })
                    .collect())
            })
            .await
    }
}

/// Runs blocking file work off the async threads when inside a tokio runtime.
pub(crate) async fn tokio_blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h
            .spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Unavailable(format!("blocking task: {e}")))?,
        Err(_) => f(),
    }
}

async fn tokio_read(path: PathBuf) -> Result<Vec<u8>> {
    tokio_blocking(move || std::fs::read(&path).map_err(|e| StoreError::io(&path, e))).await
}
