//! The embedded backend: one home directory holding `store.db` (SQLite, WAL) and `blobs/`
//! (content-addressed item bytes and model artifacts). See docs/store.md for the layout.
//!
//! One file per entity (datasets, items, models, pipelines, executions, features), each
//! implementing that entity's store trait next to its SQL and row mapping: [`Datasets`]
//! (with items, in items.rs), [`Models`], [`Pipelines`], [`Executions`] and [`Vectors`]
//! (features.rs); [`crate::Platform`] follows from the five. Validation shared with the
//! Dataloop backend lives in [`crate::rules`].

use crate::blobs::{BlobRef, Blobs};
use crate::db::Db;
use crate::dql::Filter;
use crate::entities::*;
use crate::error::{Result, StoreError};
use crate::platform::{Datasets, Executions, Models, Pipelines, Vectors};
use crate::rules;
use crate::util::{merge_metadata, name_timestamp, new_id, now_rfc3339, now_secs};
use crate::vectors::{from_blob, to_blob, VectorCache};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

mod datasets;
mod executions;
mod features;
mod items;
mod models;
mod pipelines;

// What import.rs builds on, and the Dataloop backend's share of the item rules.
pub(crate) use crate::rules::normalize_filename;
pub(crate) use crate::util::guess_mimetype;
pub(crate) use datasets::{dataset_by, insert_dataset};
pub(crate) use items::{set_free_text_tx, upsert_item_tx, Change, StagedItem};
use models::model_by;

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
