//! The Dataloop backend: [`Platform`] over Dataloop's REST API (the gate).
//!
//! Endpoints and body shapes follow `docs/dataloop-platform.md` (the `dtlpy` SDK and the
//! OpenAPI spec); where the public sources leave a shape open, both forms are accepted and
//! the choice is listed in `docs/dataloop.md`. Everything is scoped to one project.
//!
//! What Dataloop cannot do in one request (promoting a model variable, replacing artifacts,
//! upserting vectors) is done in the order that never leaves a reader pointing at something
//! missing; see the method docs.
//!
//! One file per entity (datasets, items, models, pipelines, executions, features), each an
//! `impl DataloopBackend` block with that entity's requests; this file keeps the client, DQL
//! paging and the `Platform` impl, which only delegates (one impl of a trait per type; the
//! embedded store is laid out the same way). Validation shared with the embedded store lives
//! in [`crate::rules`].

mod config;
mod datasets;
mod executions;
mod features;
mod files;
mod http;
mod items;
mod models;
mod pipelines;
mod wire;

pub use config::{DataloopAuth, DataloopConfig, ModelApp, DEFAULT_GATE_URL};

use crate::entities::*;
use crate::error::{Result, StoreError};
use crate::platform::{is_id, Platform};
use crate::rules;
use async_trait::async_trait;
use http::{Body, Content, Gate, Req, Target};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;
use wire::{seg, ArtifactRef};

/// Dataloop's largest page.
const PAGE_SIZE: u32 = rules::MAX_PAGE_SIZE;
/// The FaaS queries (`/query/faas`: executions, services) allow at most 100 per page.
const FAAS_PAGE_SIZE: u32 = 100;
/// Guard against a gate that never stops saying `hasNextPage`.
const MAX_PAGES: u32 = 100_000;

/// [`Platform`] over Dataloop's REST API. Cheap to share: hold it in an `Arc<dyn Platform>`.
pub struct DataloopBackend {
    cfg: DataloopConfig,
    gate: Gate,
    binaries: tokio::sync::OnceCell<Id>,
}

impl std::fmt::Debug for DataloopBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataloopBackend")
            .field("gate_url", &self.cfg.gate_url)
            .field("project_id", &self.cfg.project_id)
            .finish()
    }
}

/// A Dataloop id in a URL path. Dataloop ids are 24 hex digits, so anything else cannot
/// exist; refusing it here also keeps caller strings out of URL paths.
fn id_seg(kind: &'static str, id: &str) -> Result<String> {
    if is_id(id) {
        Ok(id.to_string())
    } else {
        Err(StoreError::not_found(kind, id))
    }
}

fn glob_free(s: &str) -> bool {
    !s.contains(['*', '?', '[', ']'])
}

impl DataloopBackend {
    /// Checks the configuration; no request is made until the first call.
    pub fn new(cfg: DataloopConfig) -> Result<Self> {
        cfg.validate()?;
        let gate = Gate::new(&cfg)?;
        Ok(Self {
            cfg,
            gate,
            binaries: tokio::sync::OnceCell::new(),
        })
    }

    /// [`DataloopConfig::from_env`] then [`DataloopBackend::new`].
    pub fn from_env() -> Result<Self> {
        Self::new(DataloopConfig::from_env()?)
    }

    pub fn config(&self) -> &DataloopConfig {
        &self.cfg
    }

    /// Starts a run of a pipeline (`POST /pipelines/{id}/execute`); returns the pipeline
    /// execution JSON (`id`, `status`, ...).
    pub async fn execute_pipeline(
        &self,
        pipeline_id: &str,
        input: Map<String, Value>,
    ) -> Result<Value> {
        let id = id_seg("pipeline", pipeline_id)?;
        self.gate
            .json(Req::post(
                format!("/pipelines/{id}/execute"),
                json!({"pipeline": {"input": input}}),
                Target::new("pipeline", pipeline_id),
            ))
            .await
    }

    fn project(&self) -> &str {
        &self.cfg.project_id
    }

    fn context(&self) -> Value {
        json!({"projects": [self.project()]})
    }

    /// One page of `POST path` with a DQL body; `extra` adds `sort`, `join`, `context`...
    // Each argument is one field of the DQL body; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn query_page(
        &self,
        path: &str,
        resource: &str,
        filter: &Value,
        page: u32,
        page_size: u32,
        extra: &Map<String, Value>,
        target: &Target,
    ) -> Result<wire::Page> {
        let mut body = Map::new();
        body.insert("filter".into(), filter.clone());
        body.insert("resource".into(), json!(resource));
        body.insert("page".into(), json!(page));
        body.insert("pageSize".into(), json!(page_size));
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
        let v = self
            .gate
            .json(Req::query(path, Value::Object(body), target.clone()))
            .await?;
        wire::page(v, page, page_size, resource)
    }

    /// Every page of a DQL query.
    async fn query_all(
        &self,
        path: &str,
        resource: &str,
        filter: &Value,
        extra: &Map<String, Value>,
        target: &Target,
    ) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for page in 0..MAX_PAGES {
            let p = self
                .query_page(path, resource, filter, page, page_size(path), extra, target)
                .await?;
            let more = p.has_next && !p.items.is_empty();
            out.extend(p.items);
            if !more {
                return Ok(out);
            }
        }
        Err(StoreError::Remote {
            status: 200,
            message: format!("{path}: more than {MAX_PAGES} pages"),
        })
    }

    fn project_scope(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("context".into(), self.context());
        m
    }
}

/// The largest page the endpoint `path` serves.
fn page_size(path: &str) -> u32 {
    if path == "/query/faas" {
        FAAS_PAGE_SIZE
    } else {
        PAGE_SIZE
    }
}

#[async_trait]
impl Platform for DataloopBackend {
    fn backend_name(&self) -> &'static str {
        "dataloop"
    }

    async fn create_dataset(&self, name: &str) -> Result<Dataset> {
        DataloopBackend::create_dataset(self, name).await
    }

    async fn get_dataset(&self, id: &str) -> Result<Dataset> {
        DataloopBackend::get_dataset(self, id).await
    }

    async fn dataset_by_name(&self, name: &str) -> Result<Dataset> {
        DataloopBackend::dataset_by_name(self, name).await
    }

    async fn list_datasets(&self) -> Result<Vec<Dataset>> {
        DataloopBackend::list_datasets(self).await
    }

    async fn upload_item(&self, dataset_id: &str, item: NewItem) -> Result<Item> {
        DataloopBackend::upload_item(self, dataset_id, item).await
    }

    async fn get_item(&self, id: &str) -> Result<Item> {
        DataloopBackend::get_item(self, id).await
    }

    async fn update_item(&self, item: &Item) -> Result<Item> {
        DataloopBackend::update_item(self, item).await
    }

    async fn query_items(&self, dataset_id: &str, query: &ItemQuery) -> Result<ItemPage> {
        DataloopBackend::query_items(self, dataset_id, query).await
    }

    async fn item_bytes(&self, id: &str) -> Result<Vec<u8>> {
        DataloopBackend::item_bytes(self, id).await
    }

    async fn annotations(&self, item_id: &str) -> Result<Vec<Annotation>> {
        DataloopBackend::annotations(self, item_id).await
    }

    async fn add_annotation(&self, item_id: &str, annotation: NewAnnotation) -> Result<Annotation> {
        DataloopBackend::add_annotation(self, item_id, annotation).await
    }

    async fn create_model(&self, model: NewModel) -> Result<Model> {
        DataloopBackend::create_model(self, model).await
    }

    async fn get_model(&self, id: &str) -> Result<Model> {
        DataloopBackend::get_model(self, id).await
    }

    async fn model_by_name(&self, name: &str) -> Result<Model> {
        DataloopBackend::model_by_name(self, name).await
    }

    async fn list_models(&self) -> Result<Vec<Model>> {
        DataloopBackend::list_models(self).await
    }

    async fn clone_model(&self, id: &str, options: CloneModel) -> Result<Model> {
        DataloopBackend::clone_model(self, id, options).await
    }

    async fn update_model(&self, model: &Model) -> Result<Model> {
        DataloopBackend::update_model(self, model).await
    }

    async fn upload_artifacts(&self, id: &str, dir: &Path) -> Result<Model> {
        DataloopBackend::upload_artifacts(self, id, dir).await
    }

    async fn download_artifacts(&self, id: &str, dir: &Path) -> Result<()> {
        DataloopBackend::download_artifacts(self, id, dir).await
    }

    async fn publish_metrics(&self, samples: &[MetricSample]) -> Result<usize> {
        DataloopBackend::publish_metrics(self, samples).await
    }

    async fn list_metrics(&self, model_id: &str) -> Result<Vec<MetricSample>> {
        DataloopBackend::list_metrics(self, model_id).await
    }

    async fn create_pipeline(&self, pipeline: NewPipeline) -> Result<Pipeline> {
        DataloopBackend::create_pipeline(self, pipeline).await
    }

    async fn get_pipeline(&self, id: &str) -> Result<Pipeline> {
        DataloopBackend::get_pipeline(self, id).await
    }

    async fn pipeline_by_name(&self, name: &str) -> Result<Pipeline> {
        DataloopBackend::pipeline_by_name(self, name).await
    }

    async fn list_pipelines(&self) -> Result<Vec<Pipeline>> {
        DataloopBackend::list_pipelines(self).await
    }

    async fn get_variables(&self, pipeline_id: &str) -> Result<Vec<Variable>> {
        DataloopBackend::get_variables(self, pipeline_id).await
    }

    async fn update_variables(
        &self,
        pipeline_id: &str,
        updates: &[VariableUpdate],
    ) -> Result<Vec<Variable>> {
        DataloopBackend::update_variables(self, pipeline_id, updates).await
    }

    async fn promote_model_variable(
        &self,
        pipeline_id: &str,
        variable: &str,
        model_id: &str,
    ) -> Result<Variable> {
        DataloopBackend::promote_model_variable(self, pipeline_id, variable, model_id).await
    }

    async fn create_execution(&self, execution: NewExecution) -> Result<Execution> {
        DataloopBackend::create_execution(self, execution).await
    }

    async fn get_execution(&self, id: &str) -> Result<Execution> {
        DataloopBackend::get_execution(self, id).await
    }

    async fn list_executions(&self, query: &ExecutionQuery) -> Result<Vec<Execution>> {
        DataloopBackend::list_executions(self, query).await
    }

    async fn progress_execution(&self, id: &str, progress: ExecutionProgress) -> Result<Execution> {
        DataloopBackend::progress_execution(self, id, progress).await
    }

    async fn rerun_execution(&self, id: &str) -> Result<Execution> {
        DataloopBackend::rerun_execution(self, id).await
    }

    async fn finish_execution(
        &self,
        id: &str,
        status: ExecutionStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<Execution> {
        DataloopBackend::finish_execution(self, id, status, output, error).await
    }

    async fn feature_set_for_model(
        &self,
        model_id: &str,
        name: &str,
        size: u32,
    ) -> Result<FeatureSet> {
        DataloopBackend::feature_set_for_model(self, model_id, name, size).await
    }

    async fn get_feature_set(&self, id: &str) -> Result<FeatureSet> {
        DataloopBackend::get_feature_set(self, id).await
    }

    async fn list_feature_sets(&self) -> Result<Vec<FeatureSet>> {
        DataloopBackend::list_feature_sets(self).await
    }

    async fn upsert_vectors(
        &self,
        feature_set_id: &str,
        vectors: &[NewVector],
    ) -> Result<UpsertSummary> {
        DataloopBackend::upsert_vectors(self, feature_set_id, vectors).await
    }

    async fn vector_entities(
        &self,
        feature_set_id: &str,
        dataset_id: Option<&str>,
    ) -> Result<Vec<Id>> {
        DataloopBackend::vector_entities(self, feature_set_id, dataset_id).await
    }

    async fn entities_with_vectors(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<Id>> {
        DataloopBackend::entities_with_vectors(self, feature_set_id, entity_ids).await
    }

    async fn get_vector(&self, feature_set_id: &str, entity_id: &str) -> Result<FeatureVector> {
        DataloopBackend::get_vector(self, feature_set_id, entity_id).await
    }

    async fn nearest(&self, feature_set_id: &str, query: &NearestQuery) -> Result<Vec<Neighbor>> {
        DataloopBackend::nearest(self, feature_set_id, query).await
    }
}
