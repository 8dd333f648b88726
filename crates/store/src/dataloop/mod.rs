//! The Dataloop backend: the store traits ([`crate::Platform`]) over Dataloop's REST API
//! (the gate).
//!
//! Endpoints and body shapes follow `docs/dataloop-platform.md` (the `dtlpy` SDK and the
//! OpenAPI spec); where the public sources leave a shape open, both forms are accepted and
//! the choice is listed in `docs/dataloop.md`. Everything is scoped to one project.
//!
//! What Dataloop cannot do in one request (promoting a model variable, replacing artifacts,
//! upserting vectors) is done in the order that never leaves a reader pointing at something
//! missing; see the method docs.
//!
//! One file per entity (datasets, items, models, pipelines, executions, features), each
//! implementing that entity's store trait with its requests: [`Datasets`] (with items, in
//! items.rs), [`Models`], [`Pipelines`], [`Executions`] and [`Vectors`] (features.rs); this
//! file keeps the client and DQL paging. The embedded store is laid out the same way.
//! Validation shared with the embedded store lives in [`crate::rules`].

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
use crate::platform::{is_id, Datasets, Executions, Models, Pipelines, Vectors};
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

/// The store traits over Dataloop's REST API. Cheap to share: hold it in an
/// `Arc<dyn Platform>`.
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
