//! The Dataloop backend: [`Platform`] over Dataloop's REST API (the gate).
//!
//! Endpoints and body shapes follow `docs/dataloop-platform.md` (the `dtlpy` SDK and the
//! OpenAPI spec); where the public sources leave a shape open, both forms are accepted and
//! the choice is listed in `docs/dataloop.md`. Everything is scoped to one project.
//!
//! What Dataloop cannot do in one request (promoting a model variable, replacing artifacts,
//! upserting vectors) is done in the order that never leaves a reader pointing at something
//! missing; see the method docs.

mod config;
mod files;
mod http;
mod wire;

pub use config::{DataloopAuth, DataloopConfig, ModelApp, DEFAULT_GATE_URL};

use crate::entities::*;
use crate::error::{Result, StoreError};
use crate::platform::{is_id, Platform};
use async_trait::async_trait;
use http::{Body, Content, Gate, Req, Target};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;
use wire::{seg, ArtifactRef};

/// Dataloop's largest page.
const PAGE_SIZE: u32 = 1000;
/// Ids per `$in` when looking vectors up by entity.
const IN_CHUNK: usize = 200;
/// Vectors per `POST /features/vectors`.
const VECTOR_CHUNK: usize = 500;
/// Guard against a gate that never stops saying `hasNextPage`.
const MAX_PAGES: u32 = 100_000;
/// Fewest candidates fetched for a nearest-neighbour query before re-ranking by cosine.
const CANDIDATE_POOL_MIN: usize = 64;
/// What cliptune's models produce and take, as dtlpy's `models.create` states them (the
/// model adapter trains without annotations only for `embedding`).
const MODEL_OUTPUT_TYPE: &str = "embedding";
const MODEL_INPUT_TYPE: &str = "image";
/// Where a model's checkpoint files live in the project's Binaries dataset.
const ARTIFACTS_ROOT: &str = "/artifacts/models";

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

    // ---- DQL paging ----

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
                .query_page(path, resource, filter, page, PAGE_SIZE, extra, target)
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

    /// `PATCH /items/{id}` with the difference between `current` (as the gate has it) and
    /// `wanted`, whose metadata is merged into the current one as `update_item` promises.
    /// Nothing to change: no request.
    async fn patch_item(&self, current: &Item, wanted: &Item) -> Result<Item> {
        let mut metadata = current.metadata.clone();
        crate::local::merge_metadata(&mut metadata, &wanted.metadata);
        let fields = |description: &Option<String>, metadata: &Value, hidden: bool| {
            json!({
                "description": description,
                "metadata": metadata,
                "hidden": hidden,
            })
        };
        let Some(patch) = wire::diff(
            &fields(&current.description, &current.metadata, current.hidden),
            &fields(&wanted.description, &metadata, wanted.hidden),
        ) else {
            return Ok(current.clone());
        };
        let system = patch
            .get("metadata")
            .is_some_and(|m| m.get("system").is_some());
        let path = format!(
            "/items/{}{}",
            id_seg("item", &current.id)?,
            if system { "?system=true" } else { "" }
        );
        wire::item(
            self.gate
                .json(Req::patch(path, patch, Target::new("item", &current.id)))
                .await?,
        )
    }

    fn project_scope(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("context".into(), self.context());
        m
    }

    // ---- datasets ----

    async fn datasets_named(&self, name: Option<&str>, system: bool) -> Result<Vec<Dataset>> {
        let filter = match name {
            Some(n) => json!({"name": n}),
            None => json!({}),
        };
        let mut extra = self.project_scope();
        if system {
            extra.insert("systemSpace".into(), json!(true));
        }
        self.query_all(
            "/datasets/query",
            "datasets",
            &filter,
            &extra,
            &Target::new("dataset", name.unwrap_or("*")),
        )
        .await?
        .into_iter()
        .map(wire::dataset)
        // A glob-like name must match exactly, whatever the gate made of it.
        .filter(|d| !matches!((d, name), (Ok(d), Some(n)) if d.name != n))
        .collect()
    }

    /// The project's "Binaries" system dataset, looked up once.
    async fn binaries_id(&self) -> Result<Id> {
        self.binaries
            .get_or_try_init(|| async {
                let name = self.cfg.binaries_dataset.clone();
                self.datasets_named(Some(&name), true)
                    .await?
                    .into_iter()
                    .next()
                    .map(|d| d.id)
                    .ok_or_else(|| StoreError::not_found("dataset", name))
            })
            .await
            .cloned()
    }

    // ---- models ----

    async fn model_raw(&self, id: &str) -> Result<Map<String, Value>> {
        let path = format!("/ml/models/{}", id_seg("model", id)?);
        match self
            .gate
            .json(Req::get(path, Target::new("model", id)))
            .await?
        {
            Value::Object(m) => Ok(m),
            _ => Err(wire::bad_answer("model", "expected an object")),
        }
    }

    async fn patch_model(&self, id: &str, raw: Map<String, Value>) -> Result<wire::WireModel> {
        self.patch_model_with(id, raw, false).await
    }

    /// `system`: the body changes `metadata.system`, which the gate takes only with
    /// `?system=true`.
    async fn patch_model_with(
        &self,
        id: &str,
        raw: Map<String, Value>,
        system: bool,
    ) -> Result<wire::WireModel> {
        let path = format!(
            "/ml/models/{}{}",
            id_seg("model", id)?,
            if system { "?system=true" } else { "" }
        );
        let v = self
            .gate
            .json(Req::patch(
                path,
                Value::Object(raw),
                Target::new("model", id),
            ))
            .await?;
        wire::model(v)
    }

    async fn models_where(&self, extra_filter: Option<Value>) -> Result<Vec<wire::WireModel>> {
        let mut and = vec![json!({"projectId": self.project()})];
        and.extend(extra_filter);
        self.query_all(
            "/ml/models/query",
            "models",
            &json!({"$and": and}),
            &Map::new(),
            &Target::new("project", self.project()),
        )
        .await?
        .into_iter()
        .map(wire::model)
        .collect()
    }

    /// A model entity with its artifact items resolved to paths, sizes and hashes.
    async fn finish_model(&self, w: wire::WireModel) -> Result<Model> {
        let (files, missing) = self.artifact_files(&w.model.name, &w.artifacts).await?;
        if !missing.is_empty() {
            tracing::warn!(
                "model {} lists artifact items that no longer exist: {missing:?}",
                w.model.id
            );
        }
        let mut m = w.model;
        m.artifacts = files.into_iter().map(|(a, _)| a).collect();
        Ok(m)
    }

    /// Resolves artifact references: `(artifact, item id)` for each found, and the ids of
    /// referenced items that do not exist.
    async fn artifact_files(
        &self,
        model_name: &str,
        refs: &[ArtifactRef],
    ) -> Result<(Vec<(Artifact, Option<Id>)>, Vec<Id>)> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for r in refs {
            match r {
                ArtifactRef::Inline(a) => out.push((a.clone(), None)),
                ArtifactRef::Item(id) => match self.get_item(id).await {
                    Ok(item) => {
                        let art = artifact_of_item(&item, model_name);
                        out.push((art, Some(item.id)));
                    }
                    Err(StoreError::NotFound { .. }) => missing.push(id.clone()),
                    Err(e) => return Err(e),
                },
            }
        }
        Ok((out, missing))
    }

    /// `stem`, or `stem_v1`, `stem_v2`, ... whichever is free.
    async fn free_model_name(&self, stem: &str) -> Result<String> {
        for i in 0..=100u32 {
            let name = if i == 0 {
                stem.to_string()
            } else {
                format!("{stem}_v{i}")
            };
            match self.model_by_name(&name).await {
                Err(StoreError::NotFound { .. }) => return Ok(name),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Err(StoreError::Conflict(format!(
            "model names {stem:?} to {stem}_v100 are all taken"
        )))
    }

    // ---- pipelines ----

    async fn pipeline_raw(&self, id: &str) -> Result<Pipeline> {
        let path = format!("/pipelines/{}", id_seg("pipeline", id)?);
        wire::pipeline(
            self.gate
                .json(Req::get(path, Target::new("pipeline", id)))
                .await?,
        )
    }

    /// PATCHes the whole variable list in the SDK's `{"variables": [...]}` form.
    async fn patch_variables(
        &self,
        pipeline: &Pipeline,
        vars: &[Variable],
    ) -> Result<Vec<Variable>> {
        let body: Vec<Value> = vars
            .iter()
            .map(|v| {
                let mut o = json!({
                    "name": v.name,
                    "type": v.var_type,
                    "value": v.value,
                    "reference": if v.reference.is_empty() { &pipeline.id } else { &v.reference },
                });
                if !v.id.is_empty() {
                    o["id"] = json!(v.id);
                }
                if let Some(d) = &v.description {
                    o["description"] = json!(d);
                }
                o
            })
            .collect();
        let path = format!("/pipelines/{}/variables", id_seg("pipeline", &pipeline.id)?);
        let answer = self
            .gate
            .json(Req::patch(
                path,
                json!({"variables": body}),
                Target::new("pipeline", &pipeline.id),
            ))
            .await?;
        // The answer is the pipeline; some gates may answer with the variables alone.
        let vars = match answer {
            Value::Object(ref m) if m.contains_key("variables") => {
                wire::pipeline(answer)?.variables
            }
            Value::Array(a) => a
                .into_iter()
                .map(|v| wire::variable(v, &pipeline.id))
                .collect::<Result<_>>()?,
            _ => self.pipeline_raw(&pipeline.id).await?.variables,
        };
        Ok(vars)
    }

    // ---- executions ----

    async fn service_for(&self, execution: &NewExecution) -> Result<Id> {
        match execution.service_name.as_deref() {
            Some(s) if is_id(s) => Ok(s.to_string()),
            Some(name) => {
                let filter = json!({"$and": [{"name": name}, {"projectId": self.project()}]});
                let found = self
                    .query_page(
                        "/query/faas",
                        "services",
                        &filter,
                        0,
                        PAGE_SIZE,
                        &Map::new(),
                        &Target::new("service", name),
                    )
                    .await?;
                found
                    .items
                    .iter()
                    .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
                    .and_then(|s| s.get("id").and_then(Value::as_str))
                    .map(String::from)
                    .ok_or_else(|| StoreError::not_found("service", name))
            }
            None => self.cfg.service_id.clone().ok_or_else(|| {
                StoreError::invalid(
                    "execution",
                    "Dataloop needs a FaaS service to create an execution: name one in \
                     service_name or set DATALOOP_SERVICE_ID",
                )
            }),
        }
    }

    async fn post_progress(&self, id: &str, body: Value) -> Result<Execution> {
        let path = format!("/executions/{}/progress", id_seg("execution", id)?);
        let v = self
            .gate
            .json(Req::post(path, body, Target::new("execution", id)))
            .await?;
        // Some gates answer progress with an empty body; read the execution back then.
        match v {
            Value::Object(ref m) if m.contains_key("id") => wire::execution(v),
            _ => self.get_execution(id).await,
        }
    }

    // ---- vectors ----

    /// Vectors of `feature_set_id` matching `extra` (ANDed), all pages.
    async fn vectors_where(
        &self,
        feature_set_id: &str,
        extra: Vec<Value>,
    ) -> Result<Vec<FeatureVector>> {
        let mut and = vec![json!({"featureSetId": feature_set_id})];
        and.extend(extra);
        self.query_all(
            "/features/vectors/query",
            "feature_vectors",
            &json!({"$and": and}),
            &self.project_scope(),
            &Target::new("feature set", feature_set_id),
        )
        .await?
        .into_iter()
        .map(wire::feature_vector)
        .collect()
    }

    async fn vectors_of_entities(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<FeatureVector>> {
        let mut out = Vec::new();
        for chunk in entity_ids.chunks(IN_CHUNK) {
            out.extend(
                self.vectors_where(feature_set_id, vec![json!({"entityId": {"$in": chunk}})])
                    .await?,
            );
        }
        Ok(out)
    }
}

/// An artifact entry from its item: the path cliptune stamped on upload, else the item's
/// path below `/artifacts/models/<model name>/`.
fn artifact_of_item(item: &Item, model_name: &str) -> Artifact {
    let user = item.metadata.get("user");
    let stamped = user
        .and_then(|u| u.get("artifactPath"))
        .and_then(Value::as_str)
        .map(String::from);
    let prefix = format!("{ARTIFACTS_ROOT}/{model_name}/");
    let path = stamped.unwrap_or_else(|| match item.filename.strip_prefix(&prefix) {
        Some(rel) => rel.to_string(),
        None => item.name.clone(),
    });
    let size = item
        .metadata
        .get("system")
        .and_then(|s| s.get("size"))
        .and_then(Value::as_u64)
        .or_else(|| user.and_then(|u| u.get("size")).and_then(Value::as_u64))
        .unwrap_or(0);
    let sha256 = user
        .and_then(|u| u.get("sha256"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Artifact { path, size, sha256 }
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(StoreError::invalid(format!("{kind} name"), "is empty"));
    }
    Ok(())
}

fn cosine(q_unit: &[f32], v: &[f32]) -> Option<f32> {
    if v.len() != q_unit.len() {
        return None;
    }
    let dot: f64 = q_unit
        .iter()
        .zip(v)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    let norm: f64 = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    (norm > 0.0).then(|| (dot / norm) as f32)
}

#[async_trait]
impl Platform for DataloopBackend {
    fn backend_name(&self) -> &'static str {
        "dataloop"
    }

    // ---- datasets ----

    async fn create_dataset(&self, name: &str) -> Result<Dataset> {
        check_name("dataset", name)?;
        if !self.datasets_named(Some(name), false).await?.is_empty() {
            return Err(StoreError::Conflict(format!(
                "dataset {name:?} already exists"
            )));
        }
        let v = self
            .gate
            .json(Req::post(
                "/datasets",
                json!({"name": name, "projects": [self.project()]}),
                Target::new("project", self.project()),
            ))
            .await?;
        wire::dataset(v)
    }

    async fn get_dataset(&self, id: &str) -> Result<Dataset> {
        let path = format!("/datasets/{}", id_seg("dataset", id)?);
        wire::dataset(
            self.gate
                .json(Req::get(path, Target::new("dataset", id)))
                .await?,
        )
    }

    async fn dataset_by_name(&self, name: &str) -> Result<Dataset> {
        self.datasets_named(Some(name), false)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::not_found("dataset", name))
    }

    async fn list_datasets(&self) -> Result<Vec<Dataset>> {
        self.datasets_named(None, false).await
    }

    // ---- items ----

    /// Multipart upload with `mode=overwrite` (an existing filename is replaced in place);
    /// a hidden item is then PATCHed hidden, as the upload form has no such field.
    async fn upload_item(&self, dataset_id: &str, item: NewItem) -> Result<Item> {
        let ds = id_seg("dataset", dataset_id)?;
        // Same rules as the embedded store, so both backends accept the same names.
        let (filename, _, name) = crate::normalize_filename(&item.filename)?;
        let mime = item
            .mimetype
            .clone()
            .unwrap_or_else(|| crate::guess_mimetype(&filename).to_string());
        let mut fields = vec![
            ("type".to_string(), "file".to_string()),
            ("path".to_string(), filename.clone()),
        ];
        if item.metadata.is_object() {
            fields.push(("metadata".into(), item.metadata.to_string()));
        } else if !item.metadata.is_null() {
            return Err(StoreError::invalid(
                format!("metadata of item {filename}"),
                "must be a JSON object",
            ));
        }
        if let Some(d) = &item.description {
            fields.push(("description".into(), d.clone()));
        }
        let mut req = Req::new(
            reqwest::Method::POST,
            format!("/datasets/{ds}/items?mode=overwrite"),
            Target::new("dataset", dataset_id),
        );
        req.body = Body::Multipart {
            fields,
            file_name: name,
            mime,
            content: Content::Bytes(item.bytes),
        };
        req.transfer = true;
        // Overwrite mode makes a resend harmless.
        req.idempotent = true;
        let out = wire::item(self.gate.json(req).await?)?;
        if item.hidden && !out.hidden {
            let hidden = Item {
                hidden: true,
                ..out.clone()
            };
            return self.patch_item(&out, &hidden).await;
        }
        Ok(out)
    }

    async fn get_item(&self, id: &str) -> Result<Item> {
        let path = format!("/items/{}", id_seg("item", id)?);
        wire::item(
            self.gate
                .json(Req::get(path, Target::new("item", id)))
                .await?,
        )
    }

    /// Reads the item, then PATCHes only what differs (dtlpy's `items.update` sends its
    /// `DictDiffer` diff), adding `?system=true` only when that touches `metadata.system`.
    async fn update_item(&self, item: &Item) -> Result<Item> {
        crate::local::check_update_metadata(item)?;
        let current = self.get_item(&item.id).await?;
        self.patch_item(&current, item).await
    }

    async fn query_items(&self, dataset_id: &str, query: &ItemQuery) -> Result<ItemPage> {
        let ds = id_seg("dataset", dataset_id)?;
        if query.page_size == 0 || query.page_size > PAGE_SIZE {
            return Err(StoreError::invalid(
                "page size",
                format!("{} is outside 1..={PAGE_SIZE}", query.page_size),
            ));
        }
        // A whole body (a model's stored subsets) contributes its filter, never itself.
        let filter = match &query.filter {
            Some(f) => crate::dql::body_filter(f)?,
            None => crate::dql::default_filter(),
        };
        let mut extra = Map::new();
        // A stable order, so paging neither skips nor repeats items.
        extra.insert("sort".into(), json!({"filename": "ascending"}));
        let p = self
            .query_page(
                &format!("/datasets/{ds}/query"),
                "items",
                &filter,
                query.page,
                query.page_size,
                &extra,
                &Target::new("dataset", dataset_id),
            )
            .await?;
        Ok(ItemPage {
            items: p.items.into_iter().map(wire::item).collect::<Result<_>>()?,
            total_items_count: p.total,
            has_next_page: p.has_next,
            page: query.page,
        })
    }

    async fn item_bytes(&self, id: &str) -> Result<Vec<u8>> {
        let mut req = Req::get(
            format!("/items/{}/stream", id_seg("item", id)?),
            Target::new("item", id),
        );
        req.transfer = true;
        self.gate.bytes(req).await
    }

    async fn annotations(&self, item_id: &str) -> Result<Vec<Annotation>> {
        let path = format!("/items/{}/annotations", id_seg("item", item_id)?);
        let v = self
            .gate
            .json(Req::get(path, Target::new("item", item_id)))
            .await?;
        wire::list(v, "annotations")?
            .into_iter()
            .map(|a| wire::annotation(a, item_id))
            .collect()
    }

    async fn add_annotation(&self, item_id: &str, annotation: NewAnnotation) -> Result<Annotation> {
        let path = format!("/items/{}/annotations", id_seg("item", item_id)?);
        let mut a = json!({
            "type": annotation.annotation_type,
            "label": annotation.label,
            "coordinates": annotation.coordinates,
        });
        if !annotation.metadata.is_null() {
            a["metadata"] = annotation.metadata;
        }
        let v = self
            .gate
            .json(Req::post(path, json!([a]), Target::new("item", item_id)))
            .await?;
        wire::annotation(wire::first(v, "annotation")?, item_id)
    }

    // ---- models ----

    async fn create_model(&self, model: NewModel) -> Result<Model> {
        check_name("model", &model.name)?;
        match self.model_by_name(&model.name).await {
            Ok(_) => {
                return Err(StoreError::Conflict(format!(
                    "model {:?} already exists",
                    model.name
                )))
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // dtlpy's models.create: the fields it always sends, the app's when one is configured.
        let mut body = json!({
            "name": model.name,
            "projectId": self.project(),
            "status": model.status.as_str(),
            "configuration": model.configuration,
            "metadata": if model.metadata.is_object() { model.metadata } else { json!({"system": {}}) },
            "labels": [],
            "tags": [],
            "scope": "project",
            "version": "1.0.0",
            "artifacts": [],
            "outputType": MODEL_OUTPUT_TYPE,
            "inputType": MODEL_INPUT_TYPE,
        });
        if let Some(app) = &self.cfg.model_app {
            body["packageId"] = json!(app.package_id);
            body["moduleName"] = json!(app.module_name);
            if let Some(a) = &app.app {
                body["app"] = a.clone();
            }
        }
        if let Some(d) = model.dataset_id {
            body["datasetId"] = json!(d);
        }
        if let Some(d) = model.description {
            body["description"] = json!(d);
        }
        let v = self
            .gate
            .json(Req::post(
                "/ml/models",
                body,
                Target::new("project", self.project()),
            ))
            .await?;
        self.finish_model(wire::model(v)?).await
    }

    async fn get_model(&self, id: &str) -> Result<Model> {
        let raw = self.model_raw(id).await?;
        self.finish_model(wire::model(Value::Object(raw))?).await
    }

    async fn model_by_name(&self, name: &str) -> Result<Model> {
        let found = self
            .models_where(Some(json!({"name": name})))
            .await?
            .into_iter()
            .find(|w| w.model.name == name)
            .ok_or_else(|| StoreError::not_found("model", name))?;
        self.finish_model(found).await
    }

    async fn list_models(&self) -> Result<Vec<Model>> {
        let mut out = Vec::new();
        for w in self.models_where(None).await? {
            out.push(self.finish_model(w).await?);
        }
        Ok(out)
    }

    /// `POST /ml/models/{id}/clone`, then polls while the clone is `cloning`. Dataloop's clone
    /// may carry the source's artifact references; they are dropped (the source keeps them),
    /// so the clone starts without artifacts as the trait requires.
    async fn clone_model(&self, id: &str, options: CloneModel) -> Result<Model> {
        let base_raw = self.model_raw(id).await?;
        // dtlpy's model.clone sends these from the source model.
        let inherited: Vec<(&str, Value)> = ["packageId", "outputType", "inputType"]
            .into_iter()
            .filter_map(|k| {
                base_raw
                    .get(k)
                    .filter(|v| !v.is_null())
                    .map(|v| (k, v.clone()))
            })
            .collect();
        let base = wire::model(Value::Object(base_raw))?.model;
        let stem = match options.name {
            Some(n) => n,
            None => format!(
                "{}_{}",
                base.name,
                crate::util::name_timestamp(crate::util::now_secs())
            ),
        };
        check_name("model", &stem)?;
        let name = self.free_model_name(&stem).await?;
        let mut configuration = base.configuration.clone();
        for (k, v) in options.configuration.unwrap_or_default() {
            configuration.insert(k, v);
        }
        let subsets = options.subsets.unwrap_or_else(Subsets::default_filters);
        let status = options.status.unwrap_or(ModelStatus::Created);
        let metadata = wire::model_metadata_out(&json!({"system": {"subsets": subsets}}), Some(id));
        let mut body = json!({
            "name": name,
            "projectId": self.project(),
            "configuration": configuration,
            "status": status.as_str(),
            "metadata": metadata,
        });
        for (k, v) in inherited {
            body[k] = v;
        }
        if let Some(ds) = options.dataset_id.or(base.dataset_id) {
            body["datasetId"] = json!(ds);
        }
        if let Some(d) = options.description {
            body["description"] = json!(d);
        }
        let path = format!("/ml/models/{}/clone", id_seg("model", id)?);
        let mut clone = wire::model(
            self.gate
                .json(Req::post(path, body, Target::new("model", id)))
                .await?,
        )?;
        let started = Instant::now();
        while clone.model.status == ModelStatus::Cloning {
            if started.elapsed() > self.cfg.clone_timeout {
                return Err(StoreError::Unavailable(format!(
                    "model {} ({name}) is still cloning after {} s",
                    clone.model.id,
                    started.elapsed().as_secs()
                )));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
            clone = wire::model(Value::Object(self.model_raw(&clone.model.id).await?))?;
        }
        // Bring what the gate decided on its own back to what was asked.
        let fix_status = clone.model.status != status;
        let fix_artifacts = !clone.artifacts.is_empty();
        let fix_base = clone.model.base_model_id.as_deref() != Some(id);
        if fix_status || fix_artifacts || fix_base {
            let clone_id = clone.model.id.clone();
            let mut raw = self.model_raw(&clone_id).await?;
            raw.insert("status".into(), json!(status.as_str()));
            raw.insert("artifacts".into(), json!([]));
            let meta = raw.get("metadata").cloned().unwrap_or(json!({}));
            raw.insert("metadata".into(), wire::model_metadata_out(&meta, Some(id)));
            clone = self.patch_model(&clone_id, raw).await?;
        }
        self.finish_model(clone).await
    }

    /// GETs the model and PATCHes it back whole (as the SDK does), so fields cliptune does
    /// not know (package, app, ...) are preserved.
    async fn update_model(&self, model: &Model) -> Result<Model> {
        check_name("model", &model.name)?;
        let mut raw = self.model_raw(&model.id).await?;
        let current = wire::model(Value::Object(raw.clone()))?.model;
        if current.name != model.name {
            match self.model_by_name(&model.name).await {
                Ok(other) if other.id != model.id => {
                    return Err(StoreError::Conflict(format!(
                        "model {:?} already exists",
                        model.name
                    )))
                }
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // dtlpy: model.update(system_metadata=True) adds ?system=true.
        let system = current.metadata.get("system") != model.metadata.get("system");
        raw.insert("name".into(), json!(model.name));
        raw.insert("status".into(), json!(model.status.as_str()));
        raw.insert(
            "configuration".into(),
            Value::Object(model.configuration.clone()),
        );
        raw.insert("datasetId".into(), json!(model.dataset_id));
        raw.insert(
            "metadata".into(),
            wire::model_metadata_out(&model.metadata, current.base_model_id.as_deref()),
        );
        raw.insert("labels".into(), json!(model.labels));
        raw.insert("description".into(), json!(model.description));
        raw.insert("tags".into(), json!(model.tags));
        let w = self.patch_model_with(&model.id, raw, system).await?;
        self.finish_model(w).await
    }

    /// Uploads every file to `/artifacts/models/<model name>/<path>` in the Binaries dataset
    /// (overwriting), then points the model at the new items, then deletes this model's
    /// stale artifact items. A crash in between leaves the model pointing at complete
    /// files (old or new), never at deleted ones.
    async fn upload_artifacts(&self, id: &str, dir: &Path) -> Result<Model> {
        let raw = self.model_raw(id).await?;
        let current = wire::model(Value::Object(raw.clone()))?;
        let name = current.model.name.clone();
        let dir_owned = dir.to_path_buf();
        let local = tokio::task::spawn_blocking(move || files::walk(&dir_owned))
            .await
            .map_err(|e| StoreError::Remote {
                status: 0,
                message: format!("hashing artifacts: {e}"),
            })??;
        if local.is_empty() {
            return Err(StoreError::invalid(
                format!("artifact directory {}", dir.display()),
                "has no files",
            ));
        }
        let binaries = self.binaries_id().await?;
        let prefix = format!("{ARTIFACTS_ROOT}/{name}");
        let mut new_ids = Vec::new();
        for f in &local {
            let remote = format!("{prefix}/{}", f.rel);
            let meta = json!({"user": {
                "sha256": f.sha256,
                "size": f.size,
                "artifactPath": f.rel,
                "modelId": id,
            }});
            let mut req = Req::new(
                reqwest::Method::POST,
                format!("/datasets/{}/items?mode=overwrite", seg(&binaries)),
                Target::new("dataset", &binaries),
            );
            req.body = Body::Multipart {
                fields: vec![
                    ("type".into(), "file".into()),
                    ("path".into(), remote.clone()),
                    ("metadata".into(), meta.to_string()),
                ],
                file_name: f.rel.rsplit('/').next().unwrap_or(&f.rel).to_string(),
                mime: "application/octet-stream".into(),
                content: Content::File(f.path.clone()),
            };
            req.transfer = true;
            req.idempotent = true;
            let item = wire::item(self.gate.json(req).await?)?;
            new_ids.push(item.id);
        }
        let mut raw = raw;
        raw.insert(
            "artifacts".into(),
            Value::Array(
                new_ids
                    .iter()
                    .map(|i| json!({"type": "item", "itemId": i}))
                    .collect(),
            ),
        );
        let updated = self.patch_model(id, raw).await?;
        // Stale files: this model's items (stamped with its id) under its folder that the new
        // list does not reference. Items of other models are never touched.
        let keep: HashSet<&Id> = new_ids.iter().collect();
        if glob_free(&prefix) {
            let filter = json!({"$and": [{"filename": format!("{prefix}/**")}, {"type": "file"}]});
            let stale = self
                .query_all(
                    &format!("/datasets/{}/query", seg(&binaries)),
                    "items",
                    &filter,
                    &Map::new(),
                    &Target::new("dataset", &binaries),
                )
                .await;
            match stale {
                Ok(items) => {
                    for it in items.into_iter().filter_map(|v| wire::item(v).ok()) {
                        let owner = it
                            .metadata
                            .get("user")
                            .and_then(|u| u.get("modelId"))
                            .and_then(Value::as_str);
                        if owner == Some(id) && !keep.contains(&it.id) {
                            let del = Req::delete(
                                format!("/items/{}", seg(&it.id)),
                                Target::new("item", &it.id),
                            );
                            if let Err(e) = self.gate.json(del).await {
                                tracing::warn!(
                                    "could not delete stale artifact {}: {e}",
                                    it.filename
                                );
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("could not list stale artifacts of model {id}: {e}"),
            }
        }
        self.finish_model(updated).await
    }

    /// Streams each artifact item into `dir/<path>` (via a `.partial` file, renamed when
    /// complete) and checks its SHA-256 when one was recorded.
    async fn download_artifacts(&self, id: &str, dir: &Path) -> Result<()> {
        let w = wire::model(Value::Object(self.model_raw(id).await?))?;
        let (files, missing) = self.artifact_files(&w.model.name, &w.artifacts).await?;
        if let Some(m) = missing.first() {
            return Err(StoreError::Corrupt(format!(
                "model {id} lists artifact item {m}, which does not exist"
            )));
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| StoreError::io(dir, e))?;
        for (art, item_id) in files {
            let Some(item_id) = item_id else {
                return Err(StoreError::Corrupt(format!(
                    "artifact {} of model {id} has no item to download",
                    art.path
                )));
            };
            let dest = files::safe_join(dir, &art.path)?;
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| StoreError::io(parent, e))?;
            }
            let mut partial = dest.clone().into_os_string();
            partial.push(".partial");
            let partial = std::path::PathBuf::from(partial);
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(|e| StoreError::io(&partial, e))?;
            let mut req = Req::get(
                format!("/items/{}/stream", seg(&item_id)),
                Target::new("item", &item_id),
            );
            req.transfer = true;
            let result = self.gate.download(req, &mut file, &partial).await;
            drop(file);
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            if !art.sha256.is_empty() {
                let p = partial.clone();
                let (_, sha) = tokio::task::spawn_blocking(move || files::hash_file(&p))
                    .await
                    .map_err(|e| StoreError::Remote {
                        status: 0,
                        message: format!("hashing {}: {e}", art.path),
                    })??;
                if sha != art.sha256 {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(StoreError::Corrupt(format!(
                        "artifact {} of model {id}: SHA-256 {sha} differs from the recorded {}",
                        art.path, art.sha256
                    )));
                }
            }
            tokio::fs::rename(&partial, &dest)
                .await
                .map_err(|e| StoreError::io(&dest, e))?;
        }
        Ok(())
    }

    async fn publish_metrics(&self, samples: &[MetricSample]) -> Result<usize> {
        if samples.is_empty() {
            return Ok(0);
        }
        let mut models = HashSet::new();
        for s in samples {
            if !(s.data.x.is_finite() && s.data.y.is_finite()) {
                return Err(StoreError::invalid(
                    format!("metric sample {}/{}", s.figure, s.legend),
                    format!("x = {}, y = {} must be finite", s.data.x, s.data.y),
                ));
            }
            if models.insert(s.model_id.as_str()) {
                // Names the model when it does not exist instead of a vague publish failure.
                self.model_raw(&s.model_id).await?;
            }
        }
        let body: Vec<Value> = samples
            .iter()
            .map(|s| {
                json!({
                    "modelId": s.model_id,
                    "datasetId": s.dataset_id,
                    "figure": s.figure,
                    "legend": s.legend,
                    "data": {"x": s.data.x, "y": s.data.y},
                })
            })
            .collect();
        let v = self
            .gate
            .json(Req::post(
                "/ml/metrics/publish",
                Value::Array(body),
                Target::new("model", samples[0].model_id.clone()),
            ))
            .await?;
        let failed = v.get("failed").map_or(0, |f| {
            f.as_u64()
                .or_else(|| f.as_array().map(|a| a.len() as u64))
                .unwrap_or(0)
        });
        if failed > 0 {
            return Err(StoreError::Remote {
                status: 200,
                message: format!(
                    "Dataloop refused {failed} of {} metric samples",
                    samples.len()
                ),
            });
        }
        let ok = v
            .get("succeeded")
            .and_then(|s| s.as_u64().or_else(|| s.as_array().map(|a| a.len() as u64)));
        Ok(ok.map_or(samples.len(), |n| n as usize))
    }

    async fn list_metrics(&self, model_id: &str) -> Result<Vec<MetricSample>> {
        self.model_raw(model_id).await?;
        let mut extra = Map::new();
        extra.insert("sort".into(), json!({"createdAt": "ascending"}));
        self.query_all(
            "/ml/metrics/query",
            "metrics",
            &json!({"modelId": model_id}),
            &extra,
            &Target::new("model", model_id),
        )
        .await?
        .into_iter()
        .map(wire::metric)
        .collect()
    }

    // ---- pipelines and variables ----

    async fn create_pipeline(&self, pipeline: NewPipeline) -> Result<Pipeline> {
        check_name("pipeline", &pipeline.name)?;
        match self.pipeline_by_name(&pipeline.name).await {
            Ok(_) => {
                return Err(StoreError::Conflict(format!(
                    "pipeline {:?} already exists",
                    pipeline.name
                )))
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let vars: Vec<Value> = pipeline
            .variables
            .iter()
            .map(|v| {
                let mut o = json!({"name": v.name, "type": v.var_type, "value": v.value});
                if let Some(d) = &v.description {
                    o["description"] = json!(d);
                }
                o
            })
            .collect();
        let body = json!({
            "name": pipeline.name,
            "projectId": self.project(),
            "nodes": pipeline.nodes,
            "connections": pipeline.connections,
            "startNodes": pipeline.start_nodes,
            "variables": vars,
        });
        wire::pipeline(
            self.gate
                .json(Req::post(
                    "/pipelines",
                    body,
                    Target::new("project", self.project()),
                ))
                .await?,
        )
    }

    async fn get_pipeline(&self, id: &str) -> Result<Pipeline> {
        self.pipeline_raw(id).await
    }

    async fn pipeline_by_name(&self, name: &str) -> Result<Pipeline> {
        let filter = json!({"$and": [{"projectId": self.project()}, {"name": name}]});
        self.query_all(
            "/pipelines/query",
            "pipeline",
            &filter,
            &Map::new(),
            &Target::new("pipeline", name),
        )
        .await?
        .into_iter()
        .map(wire::pipeline)
        .find(|p| !matches!(p, Ok(p) if p.name != name))
        .unwrap_or_else(|| Err(StoreError::not_found("pipeline", name)))
    }

    async fn list_pipelines(&self) -> Result<Vec<Pipeline>> {
        self.query_all(
            "/pipelines/query",
            "pipeline",
            &json!({"projectId": self.project()}),
            &Map::new(),
            &Target::new("project", self.project()),
        )
        .await?
        .into_iter()
        .map(wire::pipeline)
        .collect()
    }

    async fn get_variables(&self, pipeline_id: &str) -> Result<Vec<Variable>> {
        Ok(self.pipeline_raw(pipeline_id).await?.variables)
    }

    /// All names are checked before the single PATCH, so either every value changes or none.
    async fn update_variables(
        &self,
        pipeline_id: &str,
        updates: &[VariableUpdate],
    ) -> Result<Vec<Variable>> {
        let pipeline = self.pipeline_raw(pipeline_id).await?;
        let mut vars = pipeline.variables.clone();
        for u in updates {
            let v = vars
                .iter_mut()
                .find(|v| v.name == u.name)
                .ok_or_else(|| StoreError::not_found("variable", &u.name))?;
            v.value = u.value.clone();
        }
        if updates.is_empty() {
            return Ok(vars);
        }
        self.patch_variables(&pipeline, &vars).await
    }

    /// Dataloop has no conditional update, so this checks first and writes last: the model
    /// must be usable (trained, pre-trained or deployed) with every artifact item present,
    /// and only then is the variable PATCHed. A model changed by someone else between the
    /// check and the PATCH is not detected (documented in docs/dataloop.md).
    async fn promote_model_variable(
        &self,
        pipeline_id: &str,
        variable: &str,
        model_id: &str,
    ) -> Result<Variable> {
        let pipeline = self.pipeline_raw(pipeline_id).await?;
        let var = pipeline
            .variable(variable)
            .ok_or_else(|| StoreError::not_found("variable", variable))?;
        if var.var_type != "Model" {
            return Err(StoreError::invalid(
                format!("variable {variable:?}"),
                format!("has type {}, not Model", var.var_type),
            ));
        }
        let w = wire::model(Value::Object(self.model_raw(model_id).await?))?;
        if !w.model.status.is_usable() {
            return Err(StoreError::Conflict(format!(
                "model {model_id} ({}) is {}, not trained: {variable:?} keeps its value",
                w.model.name,
                w.model.status.as_str()
            )));
        }
        if w.artifacts.is_empty() {
            return Err(StoreError::Conflict(format!(
                "model {model_id} ({}) has no stored artifacts: {variable:?} keeps its value",
                w.model.name
            )));
        }
        let (_, missing) = self.artifact_files(&w.model.name, &w.artifacts).await?;
        if let Some(m) = missing.first() {
            return Err(StoreError::Conflict(format!(
                "artifact item {m} of model {model_id} is missing: {variable:?} keeps its value"
            )));
        }
        let vars: Vec<Variable> = pipeline
            .variables
            .iter()
            .map(|v| {
                let mut v = v.clone();
                if v.name == variable {
                    v.value = json!(model_id);
                }
                v
            })
            .collect();
        let after = self.patch_variables(&pipeline, &vars).await?;
        after
            .into_iter()
            .find(|v| v.name == variable)
            .ok_or_else(|| wire::bad_answer("pipeline", format!("variable {variable:?} vanished")))
    }

    // ---- executions ----

    async fn create_execution(&self, execution: NewExecution) -> Result<Execution> {
        if execution.function_name.trim().is_empty() {
            return Err(StoreError::invalid("execution", "function name is empty"));
        }
        let service = self.service_for(&execution).await?;
        let input = if execution.input.is_null() {
            json!({})
        } else {
            execution.input
        };
        let mut body = json!({
            "projectId": self.project(),
            "functionName": execution.function_name,
            "input": input,
        });
        // Only for executions cliptune runs on behalf of a pipeline node; on Dataloop the
        // platform itself creates pipeline executions (whether it accepts this is unconfirmed).
        if let Some(p) = &execution.pipeline {
            let mut pj = json!({"id": p.id});
            if let Some(n) = &p.node_id {
                pj["nodeId"] = json!(n);
            }
            if let Some(e) = &p.execution_id {
                pj["executionId"] = json!(e);
            }
            body["pipeline"] = pj;
        }
        let path = format!("/executions/{}", seg(&service));
        wire::execution(
            self.gate
                .json(Req::post(path, body, Target::new("service", &service)))
                .await?,
        )
    }

    async fn get_execution(&self, id: &str) -> Result<Execution> {
        let path = format!("/executions/{}", id_seg("execution", id)?);
        wire::execution(
            self.gate
                .json(Req::get(path, Target::new("execution", id)))
                .await?,
        )
    }

    async fn list_executions(&self, query: &ExecutionQuery) -> Result<Vec<Execution>> {
        let mut and = vec![json!({"projectId": self.project()})];
        if let Some(s) = query.status {
            and.push(json!({"latestStatus.status": s.as_str()}));
        }
        if let Some(f) = &query.function_name {
            and.push(json!({"functionName": f}));
        }
        if let Some(p) = &query.pipeline_id {
            and.push(json!({"pipeline.id": p}));
        }
        if let Some(p) = &query.pipeline_execution_id {
            and.push(json!({"pipeline.executionId": p}));
        }
        let mut extra = Map::new();
        extra.insert("sort".into(), json!({"createdAt": "descending"}));
        let filter = json!({"$and": and});
        let target = Target::new("project", self.project());
        let raw = if query.limit > 0 && query.limit <= PAGE_SIZE {
            self.query_page(
                "/query/faas",
                "executions",
                &filter,
                0,
                query.limit,
                &extra,
                &target,
            )
            .await?
            .items
        } else {
            self.query_all("/query/faas", "executions", &filter, &extra, &target)
                .await?
        };
        let mut out: Vec<Execution> = raw
            .into_iter()
            .map(wire::execution)
            .collect::<Result<_>>()?;
        if query.limit > 0 {
            out.truncate(query.limit as usize);
        }
        Ok(out)
    }

    async fn progress_execution(&self, id: &str, progress: ExecutionProgress) -> Result<Execution> {
        if let Some(p) = progress.percent_complete {
            if p > 100 {
                return Err(StoreError::invalid(
                    "execution progress",
                    format!("percent {p} is over 100"),
                ));
            }
        }
        if let Some(s) = progress.status {
            if s.is_terminal() {
                return Err(StoreError::invalid(
                    "execution progress",
                    format!("{} is terminal: finish the execution instead", s.as_str()),
                ));
            }
        }
        let current = self.get_execution(id).await?;
        if current.status.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "execution {id} already finished ({})",
                current.status.as_str()
            )));
        }
        let mut body = Map::new();
        // Without a status the SDK reports "inProgress" (a progress report means it runs).
        let status = progress
            .status
            .map_or("inProgress", ExecutionStatus::as_str);
        body.insert("status".into(), json!(status));
        if let Some(p) = progress.percent_complete {
            body.insert("percentComplete".into(), json!(p));
        }
        if let Some(m) = progress.message {
            body.insert("message".into(), json!(m));
        }
        if let Some(o) = progress.output {
            body.insert("output".into(), o);
        }
        self.post_progress(id, Value::Object(body)).await
    }

    /// The progress endpoint has no error field: the error travels as the message.
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
                format!("{} is not terminal", status.as_str()),
            ));
        }
        let current = self.get_execution(id).await?;
        if current.status.is_terminal() {
            return Err(StoreError::Conflict(format!(
                "execution {id} already finished ({})",
                current.status.as_str()
            )));
        }
        let mut body = Map::new();
        body.insert("status".into(), json!(status.as_str()));
        if status == ExecutionStatus::Success {
            body.insert("percentComplete".into(), json!(100));
        }
        if let Some(e) = error {
            body.insert("message".into(), json!(e));
        }
        if let Some(o) = output {
            body.insert("output".into(), o);
        }
        self.post_progress(id, Value::Object(body)).await
    }

    // ---- feature sets and vectors ----

    /// Looks the set up by model, creates it when missing (`POST /features/sets` answers an
    /// array). Two workers racing here can create two sets; the first found wins afterwards.
    async fn feature_set_for_model(
        &self,
        model_id: &str,
        name: &str,
        size: u32,
    ) -> Result<FeatureSet> {
        check_name("feature set", name)?;
        if size == 0 {
            return Err(StoreError::invalid("feature set size", "must be positive"));
        }
        self.model_raw(model_id).await?;
        let existing = self
            .query_all(
                "/features/sets/query",
                "feature_sets",
                &json!({"modelId": model_id}),
                &self.project_scope(),
                &Target::new("model", model_id),
            )
            .await?;
        let mut sets: Vec<FeatureSet> = existing
            .into_iter()
            .map(wire::feature_set)
            .collect::<Result<_>>()?;
        sets.retain(|s| s.model_id.as_deref() == Some(model_id));
        if let Some(fs) = sets.into_iter().next() {
            if fs.size != size {
                return Err(StoreError::Conflict(format!(
                    "feature set {} of model {model_id} has size {}, not {size}",
                    fs.id, fs.size
                )));
            }
            return Ok(fs);
        }
        let body = json!({
            "name": name,
            "size": size,
            "type": "embeddings",
            "project": self.project(),
            "modelId": model_id,
            "entityType": "item",
        });
        let v = self
            .gate
            .json(Req::post(
                "/features/sets",
                body,
                Target::new("model", model_id),
            ))
            .await?;
        wire::feature_set(wire::first(v, "feature set")?)
    }

    async fn get_feature_set(&self, id: &str) -> Result<FeatureSet> {
        let path = format!("/features/sets/{}", id_seg("feature set", id)?);
        wire::feature_set(
            self.gate
                .json(Req::get(path, Target::new("feature set", id)))
                .await?,
        )
    }

    async fn list_feature_sets(&self) -> Result<Vec<FeatureSet>> {
        self.query_all(
            "/features/sets/query",
            "feature_sets",
            &json!({}),
            &self.project_scope(),
            &Target::new("project", self.project()),
        )
        .await?
        .into_iter()
        .map(wire::feature_set)
        .collect()
    }

    /// Dataloop stores vectors by POST only. New vectors are written first, then the
    /// entities' previous vectors deleted: a failure in between leaves an extra (old)
    /// vector, never a missing one, and repeating the call converges.
    async fn upsert_vectors(
        &self,
        feature_set_id: &str,
        vectors: &[NewVector],
    ) -> Result<UpsertSummary> {
        let fs = self.get_feature_set(feature_set_id).await?;
        // Last one wins for an entity listed twice.
        let mut order: Vec<&str> = Vec::new();
        let mut latest: HashMap<&str, &NewVector> = HashMap::new();
        for v in vectors {
            if v.value.len() != fs.size as usize {
                return Err(StoreError::invalid(
                    format!("vector of {}", v.entity_id),
                    format!(
                        "has {} values, feature set {} has size {}",
                        v.value.len(),
                        fs.id,
                        fs.size
                    ),
                ));
            }
            if v.value.iter().any(|x| !x.is_finite()) {
                return Err(StoreError::invalid(
                    format!("vector of {}", v.entity_id),
                    "has a NaN or infinite value",
                ));
            }
            if v.entity_id.is_empty() {
                return Err(StoreError::invalid("vector", "entity id is empty"));
            }
            if latest.insert(v.entity_id.as_str(), v).is_none() {
                order.push(v.entity_id.as_str());
            }
        }
        if order.is_empty() {
            return Ok(UpsertSummary::default());
        }
        let off_unit = latest
            .values()
            .filter(|v| {
                let n: f32 = v.value.iter().map(|x| x * x).sum::<f32>().sqrt();
                (n - 1.0).abs() > 1e-3
            })
            .count();
        if off_unit > 0 {
            tracing::warn!(
                "{off_unit} vectors for feature set {} are not unit length: Dataloop ranks by \
                 euclidean distance, so nearest() is exact only within its candidate pool",
                fs.id
            );
        }
        let ids: Vec<Id> = order.iter().map(|s| s.to_string()).collect();
        let old = self.vectors_of_entities(&fs.id, &ids).await?;
        let had: HashSet<&str> = old.iter().map(|v| v.entity_id.as_str()).collect();
        let updated = order.iter().filter(|e| had.contains(**e)).count() as u64;
        let inserted = order.len() as u64 - updated;
        let keep_new: HashSet<Id>;
        {
            let mut created = HashSet::new();
            for chunk in order.chunks(VECTOR_CHUNK) {
                let body: Vec<Value> = chunk
                    .iter()
                    .map(|e| {
                        let v = latest[e];
                        json!({
                            "entityId": v.entity_id,
                            "value": v.value,
                            "featureSetId": fs.id,
                            "datasetId": v.dataset_id,
                            "project": self.project(),
                        })
                    })
                    .collect();
                let answer = self
                    .gate
                    .json(Req::post(
                        "/features/vectors",
                        Value::Array(body),
                        Target::new("feature set", &fs.id),
                    ))
                    .await?;
                for v in wire::list(answer, "feature vectors")? {
                    if let Some(id) = v.get("id").and_then(Value::as_str) {
                        created.insert(id.to_string());
                    }
                }
            }
            keep_new = created;
        }
        let mut first_err = None;
        for v in old.iter().filter(|v| !keep_new.contains(&v.id)) {
            let req = Req::delete(
                format!("/features/vectors/{}", seg(&v.id)),
                Target::new("feature vector", &v.id),
            );
            match self.gate.json(req).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(UpsertSummary { inserted, updated })
    }

    async fn vector_entities(
        &self,
        feature_set_id: &str,
        dataset_id: Option<&str>,
    ) -> Result<Vec<Id>> {
        self.get_feature_set(feature_set_id).await?;
        let extra = dataset_id
            .map(|d| vec![json!({"datasetId": d})])
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for v in self.vectors_where(feature_set_id, extra).await? {
            if seen.insert(v.entity_id.clone()) {
                out.push(v.entity_id);
            }
        }
        Ok(out)
    }

    async fn entities_with_vectors(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<Id>> {
        self.get_feature_set(feature_set_id).await?;
        let mut seen = HashSet::new();
        Ok(self
            .vectors_of_entities(feature_set_id, entity_ids)
            .await?
            .into_iter()
            .filter(|v| seen.insert(v.entity_id.clone()))
            .map(|v| v.entity_id)
            .collect())
    }

    async fn get_vector(&self, feature_set_id: &str, entity_id: &str) -> Result<FeatureVector> {
        self.get_feature_set(feature_set_id).await?;
        self.vectors_where(feature_set_id, vec![json!({"entityId": entity_id})])
            .await?
            .into_iter()
            .last()
            .ok_or_else(|| StoreError::not_found("vector", entity_id))
    }

    /// Dataloop ranks by euclidean distance (`$euclid`); for L2-normalised vectors (what the
    /// embed node writes) that is the cosine order. A pool of at least 4k candidates is
    /// re-ranked by cosine similarity computed from the returned vectors, which are the scores.
    async fn nearest(&self, feature_set_id: &str, query: &NearestQuery) -> Result<Vec<Neighbor>> {
        if query.k == 0 || query.k > 10_000 {
            return Err(StoreError::invalid(
                "k",
                format!("{} is not in 1..=10000", query.k),
            ));
        }
        let fs = self.get_feature_set(feature_set_id).await?;
        if query.vector.len() != fs.size as usize {
            return Err(StoreError::invalid(
                "query vector",
                format!(
                    "has {} values, feature set {} has size {}",
                    query.vector.len(),
                    fs.id,
                    fs.size
                ),
            ));
        }
        let norm = query
            .vector
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(StoreError::invalid(
                "query vector",
                "must be finite and not all zeros",
            ));
        }
        if query.filter.is_some() && query.dataset_id.is_none() {
            return Err(StoreError::invalid(
                "nearest query",
                "a filter needs a dataset id",
            ));
        }
        let unit: Vec<f32> = query
            .vector
            .iter()
            .map(|x| (f64::from(*x) / norm) as f32)
            .collect();
        let euclid = json!({"$euclid": {"input": unit, "$euclidSort": {"eu_dist": "ascending"}}});
        // Euclidean order equals cosine order only for unit-length stored vectors; a wider
        // pool re-ranked by cosine here keeps small or nearly-normalised sets exact.
        let pool = (query.k * 4).clamp(CANDIDATE_POOL_MIN, 10_000);
        let page_size = (pool as u32).clamp(1, PAGE_SIZE);
        let mut candidates: Vec<FeatureVector> = Vec::new();
        if let Some(ds) = &query.dataset_id {
            let ds_seg = id_seg("dataset", ds)?;
            // No filter means every item of the dataset (hidden ones too), as in the embedded store.
            let filter = match &query.filter {
                Some(f) => crate::dql::body_filter(f)?,
                None => json!({}),
            };
            let mut extra = Map::new();
            extra.insert(
                "join".into(),
                json!({
                    "on": {"resource": "feature_vectors", "local": "entityId", "forigen": "id"},
                    "filter": {"value": euclid, "featureSetId": fs.id, "datasetId": ds},
                }),
            );
            let mut entity_ids: Vec<Id> = Vec::new();
            let mut page = 0;
            while entity_ids.len() < pool {
                let p = self
                    .query_page(
                        &format!("/datasets/{ds_seg}/query"),
                        "items",
                        &filter,
                        page,
                        page_size,
                        &extra,
                        &Target::new("dataset", ds),
                    )
                    .await?;
                let more = p.has_next && !p.items.is_empty();
                for it in p.items {
                    if let Some(id) = it.get("id").and_then(Value::as_str) {
                        entity_ids.push(id.to_string());
                    }
                }
                if !more {
                    break;
                }
                page += 1;
            }
            entity_ids.truncate(pool);
            candidates = self.vectors_of_entities(&fs.id, &entity_ids).await?;
        } else {
            let filter = json!({"featureSetId": fs.id, "value": euclid});
            let mut page = 0;
            while candidates.len() < pool {
                let p = self
                    .query_page(
                        "/features/vectors/query",
                        "feature_vectors",
                        &filter,
                        page,
                        page_size,
                        &self.project_scope(),
                        &Target::new("feature set", &fs.id),
                    )
                    .await?;
                let more = p.has_next && !p.items.is_empty();
                for v in p.items {
                    candidates.push(wire::feature_vector(v)?);
                }
                if !more {
                    break;
                }
                page += 1;
            }
        }
        let mut seen = HashSet::new();
        let mut out: Vec<Neighbor> = candidates
            .into_iter()
            .rev() // with duplicates left by an interrupted upsert, the newest wins
            .filter(|v| seen.insert(v.entity_id.clone()))
            .filter_map(|v| {
                cosine(&unit, &v.value).map(|score| Neighbor {
                    entity_id: v.entity_id,
                    dataset_id: v.dataset_id,
                    score,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.entity_id.cmp(&b.entity_id))
        });
        out.truncate(query.k);
        Ok(out)
    }
}
