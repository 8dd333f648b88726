//! The embedded backend: one home directory holding `store.db` (SQLite, WAL) and `blobs/`
//! (content-addressed item bytes and model artifacts). See docs/store.md for the layout.
//!
//! One file per entity (datasets, items, models, pipelines, executions, features), each an
//! `impl LocalStore` block with that entity's [`Platform`] methods and its row mapping. The
//! `Platform` impl below only delegates, one line per method: Rust allows one impl of a
//! trait per type, and per-entity helper traits would add a name per entity for no caller's
//! benefit, while inherent methods keep each body exactly where its SQL lives. Validation
//! shared with the Dataloop backend lives in [`crate::rules`].

use crate::blobs::{BlobRef, Blobs};
use crate::db::Db;
use crate::dql::Filter;
use crate::entities::*;
use crate::error::{Result, StoreError};
use crate::platform::Platform;
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
pub(crate) use datasets::dataset_by;
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

#[async_trait]
impl Platform for LocalStore {
    fn backend_name(&self) -> &'static str {
        "local"
    }

    async fn create_dataset(&self, name: &str) -> Result<Dataset> {
        LocalStore::create_dataset(self, name).await
    }

    async fn get_dataset(&self, id: &str) -> Result<Dataset> {
        LocalStore::get_dataset(self, id).await
    }

    async fn dataset_by_name(&self, name: &str) -> Result<Dataset> {
        LocalStore::dataset_by_name(self, name).await
    }

    async fn list_datasets(&self) -> Result<Vec<Dataset>> {
        LocalStore::list_datasets(self).await
    }

    async fn upload_item(&self, dataset_id: &str, item: NewItem) -> Result<Item> {
        LocalStore::upload_item(self, dataset_id, item).await
    }

    async fn get_item(&self, id: &str) -> Result<Item> {
        LocalStore::get_item(self, id).await
    }

    async fn update_item(&self, item: &Item) -> Result<Item> {
        LocalStore::update_item(self, item).await
    }

    async fn query_items(&self, dataset_id: &str, query: &ItemQuery) -> Result<ItemPage> {
        LocalStore::query_items(self, dataset_id, query).await
    }

    async fn item_bytes(&self, id: &str) -> Result<Vec<u8>> {
        LocalStore::item_bytes(self, id).await
    }

    async fn annotations(&self, item_id: &str) -> Result<Vec<Annotation>> {
        LocalStore::annotations(self, item_id).await
    }

    async fn add_annotation(&self, item_id: &str, annotation: NewAnnotation) -> Result<Annotation> {
        LocalStore::add_annotation(self, item_id, annotation).await
    }

    async fn create_model(&self, model: NewModel) -> Result<Model> {
        LocalStore::create_model(self, model).await
    }

    async fn get_model(&self, id: &str) -> Result<Model> {
        LocalStore::get_model(self, id).await
    }

    async fn model_by_name(&self, name: &str) -> Result<Model> {
        LocalStore::model_by_name(self, name).await
    }

    async fn list_models(&self) -> Result<Vec<Model>> {
        LocalStore::list_models(self).await
    }

    async fn clone_model(&self, id: &str, options: CloneModel) -> Result<Model> {
        LocalStore::clone_model(self, id, options).await
    }

    async fn update_model(&self, model: &Model) -> Result<Model> {
        LocalStore::update_model(self, model).await
    }

    async fn upload_artifacts(&self, id: &str, dir: &Path) -> Result<Model> {
        LocalStore::upload_artifacts(self, id, dir).await
    }

    async fn download_artifacts(&self, id: &str, dir: &Path) -> Result<()> {
        LocalStore::download_artifacts(self, id, dir).await
    }

    async fn publish_metrics(&self, samples: &[MetricSample]) -> Result<usize> {
        LocalStore::publish_metrics(self, samples).await
    }

    async fn list_metrics(&self, model_id: &str) -> Result<Vec<MetricSample>> {
        LocalStore::list_metrics(self, model_id).await
    }

    async fn create_pipeline(&self, p: NewPipeline) -> Result<Pipeline> {
        LocalStore::create_pipeline(self, p).await
    }

    async fn get_pipeline(&self, id: &str) -> Result<Pipeline> {
        LocalStore::get_pipeline(self, id).await
    }

    async fn pipeline_by_name(&self, name: &str) -> Result<Pipeline> {
        LocalStore::pipeline_by_name(self, name).await
    }

    async fn list_pipelines(&self) -> Result<Vec<Pipeline>> {
        LocalStore::list_pipelines(self).await
    }

    async fn get_variables(&self, pipeline_id: &str) -> Result<Vec<Variable>> {
        LocalStore::get_variables(self, pipeline_id).await
    }

    async fn update_variables(
        &self,
        pipeline_id: &str,
        updates: &[VariableUpdate],
    ) -> Result<Vec<Variable>> {
        LocalStore::update_variables(self, pipeline_id, updates).await
    }

    async fn promote_model_variable(
        &self,
        pipeline_id: &str,
        variable: &str,
        model_id: &str,
    ) -> Result<Variable> {
        LocalStore::promote_model_variable(self, pipeline_id, variable, model_id).await
    }

    async fn create_execution(&self, e: NewExecution) -> Result<Execution> {
        LocalStore::create_execution(self, e).await
    }

    async fn get_execution(&self, id: &str) -> Result<Execution> {
        LocalStore::get_execution(self, id).await
    }

    async fn list_executions(&self, q: &ExecutionQuery) -> Result<Vec<Execution>> {
        LocalStore::list_executions(self, q).await
    }

    async fn progress_execution(&self, id: &str, p: ExecutionProgress) -> Result<Execution> {
        LocalStore::progress_execution(self, id, p).await
    }

    async fn rerun_execution(&self, id: &str) -> Result<Execution> {
        LocalStore::rerun_execution(self, id).await
    }

    async fn finish_execution(
        &self,
        id: &str,
        status: ExecutionStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<Execution> {
        LocalStore::finish_execution(self, id, status, output, error).await
    }

    async fn feature_set_for_model(
        &self,
        model_id: &str,
        name: &str,
        size: u32,
    ) -> Result<FeatureSet> {
        LocalStore::feature_set_for_model(self, model_id, name, size).await
    }

    async fn get_feature_set(&self, id: &str) -> Result<FeatureSet> {
        LocalStore::get_feature_set(self, id).await
    }

    async fn list_feature_sets(&self) -> Result<Vec<FeatureSet>> {
        LocalStore::list_feature_sets(self).await
    }

    async fn upsert_vectors(
        &self,
        feature_set_id: &str,
        vectors: &[NewVector],
    ) -> Result<UpsertSummary> {
        LocalStore::upsert_vectors(self, feature_set_id, vectors).await
    }

    async fn vector_entities(
        &self,
        feature_set_id: &str,
        dataset_id: Option<&str>,
    ) -> Result<Vec<Id>> {
        LocalStore::vector_entities(self, feature_set_id, dataset_id).await
    }

    async fn entities_with_vectors(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<Id>> {
        LocalStore::entities_with_vectors(self, feature_set_id, entity_ids).await
    }

    async fn get_vector(&self, feature_set_id: &str, entity_id: &str) -> Result<FeatureVector> {
        LocalStore::get_vector(self, feature_set_id, entity_id).await
    }

    async fn nearest(&self, feature_set_id: &str, q: &NearestQuery) -> Result<Vec<Neighbor>> {
        LocalStore::nearest(self, feature_set_id, q).await
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
