//! The store's traits, one per entity, and [`Platform`], their sum: everything the
//! pipeline nodes and the CLI need from a platform, implemented by the embedded store
//! ([`crate::LocalStore`]) and the Dataloop REST backend.
//!
//! - [`Datasets`]: datasets, their items, item bytes and annotations (and the backend's name);
//! - [`Models`]: models, cloning, artifacts and metrics;
//! - [`Pipelines`]: pipelines and their variables;
//! - [`Executions`]: executions and their status log;
//! - [`Vectors`]: feature sets, vectors and nearest-neighbour search.
//!
//! Each trait is object-safe and its futures are `Send`; [`Platform`] has every one of them
//! as a supertrait and a blanket impl, so a worker can hold one backend chosen at run time
//! (`Arc<dyn Platform>`) and call it from axum handlers and tokio tasks. On a `dyn Platform`
//! (or a `P: Platform`) every supertrait method resolves as is; on a concrete backend
//! (`LocalStore`) a method needs its trait in scope: `use cliptune_store::prelude::*;`.
//! Everything shaped by the template (caption resolution, id-or-name lookup, paging) is a
//! provided method built on the required ones, so both backends behave the same.

use crate::entities::*;
use crate::error::{Result, StoreError};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::future::Future;
use std::path::Path;

/// Datasets, items, item bytes and annotations.
#[async_trait]
pub trait Datasets: Send + Sync {
    /// A short name for logs and `/info` (`local`, `dataloop`).
    fn backend_name(&self) -> &'static str;

    // ---- datasets ----

    /// Creates a dataset; `Conflict` when the name is taken.
    async fn create_dataset(&self, name: &str) -> Result<Dataset>;
    async fn get_dataset(&self, id: &str) -> Result<Dataset>;
    /// `NotFound` when no dataset has this name.
    async fn dataset_by_name(&self, name: &str) -> Result<Dataset>;
    async fn list_datasets(&self) -> Result<Vec<Dataset>>;

    // ---- items ----

    /// Uploads (or, for an existing `filename` in the dataset, overwrites) one item.
    async fn upload_item(&self, dataset_id: &str, item: NewItem) -> Result<Item>;
    async fn get_item(&self, id: &str) -> Result<Item>;
    /// Writes `description` and `hidden` of `item` back and merges its `metadata` into the
    /// stored one: members it holds are written (a `null` stored as `null`), members it
    /// leaves out are kept, so a stale copy cannot erase what others added. On Dataloop only
    /// the difference is sent, `?system=true` only when `metadata.system` changes.
    async fn update_item(&self, item: &Item) -> Result<Item>;
    /// One page of the items of `dataset_id` matching the DQL filter, in a stable order.
    async fn query_items(&self, dataset_id: &str, query: &ItemQuery) -> Result<ItemPage>;
    /// The item's content (image bytes, text, prompt JSON).
    async fn item_bytes(&self, id: &str) -> Result<Vec<u8>>;
    async fn annotations(&self, item_id: &str) -> Result<Vec<Annotation>>;
    async fn add_annotation(&self, item_id: &str, annotation: NewAnnotation) -> Result<Annotation>;

    // ---- provided: shared behaviour of both backends ----

    /// A dataset by id, or else by name.
    async fn resolve_dataset(&self, id_or_name: &str) -> Result<Dataset> {
        resolve(
            self.get_dataset(id_or_name),
            self.dataset_by_name(id_or_name),
            "dataset",
            id_or_name,
        )
        .await
    }

    /// Every item matching `filter` (default filter when `None`), fetched page by page.
    /// For very large datasets prefer paging with [`Datasets::query_items`] directly.
    async fn all_items(&self, dataset_id: &str, filter: Option<Value>) -> Result<Vec<Item>> {
        let mut query = ItemQuery {
            filter,
            ..ItemQuery::default()
        };
        let mut out = Vec::new();
        loop {
            let page = self.query_items(dataset_id, &query).await?;
            let more = page.has_next_page && !page.items.is_empty();
            out.extend(page.items);
            if !more {
                return Ok(out);
            }
            query.page += 1;
        }
    }

    /// The image and caption an item contributes to training, as the template resolves them:
    /// an image item is its own image, captioned by `description`, then
    /// `metadata.system.description`; a prompt item's image is its user prompt's image item
    /// (which may live in another dataset) and its caption is its free-text annotation
    /// (falling back to the prompt's text, then the image item's own caption); a text item
    /// has no image and its caption is its own caption or else its text.
    async fn caption(&self, item: &Item) -> Result<ResolvedCaption> {
        let prompt_like = item.is_prompt() || item.mimetype() == Some("application/json");
        if prompt_like {
            let bytes = self.item_bytes(&item.id).await?;
            if let Some(prompt) = PromptContent::parse(&bytes) {
                let image_item = match &prompt.image_item_id {
                    Some(image_id) => Some(self.get_item(image_id).await?),
                    None => None,
                };
                let annotated = self.annotations(&item.id).await?.iter().find_map(|a| {
                    a.free_text()
                        .filter(|t| !t.trim().is_empty())
                        .map(String::from)
                });
                let caption = annotated
                    .or_else(|| item.own_caption().map(String::from))
                    .or(prompt.text)
                    .or_else(|| {
                        image_item
                            .as_ref()
                            .and_then(|i| i.own_caption().map(String::from))
                    });
                return Ok(ResolvedCaption {
                    image_item,
                    caption,
                });
            }
            if item.is_prompt() {
                return Err(StoreError::invalid(
                    format!("prompt item {}", item.id),
                    "content is not a Dataloop prompt JSON",
                ));
            }
        }
        match item.kind() {
            ItemKind::Text => {
                let caption = match item.own_caption() {
                    Some(c) => Some(c.to_string()),
                    None => {
                        let bytes = self.item_bytes(&item.id).await?;
                        Some(String::from_utf8_lossy(&bytes).trim().to_string())
                            .filter(|s| !s.is_empty())
                    }
                };
                Ok(ResolvedCaption {
                    image_item: None,
                    caption,
                })
            }
            _ => Ok(ResolvedCaption {
                image_item: Some(item.clone()),
                caption: item.own_caption().map(String::from),
            }),
        }
    }
}

/// Models, their clones, artifacts and metrics.
#[async_trait]
pub trait Models: Send + Sync {
    /// Registers a model; `Conflict` when the name is taken.
    async fn create_model(&self, model: NewModel) -> Result<Model>;
    async fn get_model(&self, id: &str) -> Result<Model>;
    async fn model_by_name(&self, name: &str) -> Result<Model>;
    async fn list_models(&self) -> Result<Vec<Model>>;
    /// The template's *Create New Model*: see [`CloneModel`] for names, merge and subsets.
    /// The clone has no artifacts; its `base_model_id` is `id`.
    async fn clone_model(&self, id: &str, options: CloneModel) -> Result<Model>;
    /// Writes name, status, configuration, dataset, metadata, labels, description and tags.
    /// Artifacts change only through [`Models::upload_artifacts`].
    async fn update_model(&self, model: &Model) -> Result<Model>;
    /// Replaces the model's artifacts with the files under `dir` (recursively).
    async fn upload_artifacts(&self, id: &str, dir: &Path) -> Result<Model>;
    /// Recreates the artifact files under `dir` (created if needed; other files left alone).
    async fn download_artifacts(&self, id: &str, dir: &Path) -> Result<()>;
    async fn publish_metrics(&self, samples: &[MetricSample]) -> Result<usize>;
    /// A model's samples in publication order.
    async fn list_metrics(&self, model_id: &str) -> Result<Vec<MetricSample>>;

    // ---- provided ----

    /// A model by id, or else by name.
    async fn resolve_model(&self, id_or_name: &str) -> Result<Model> {
        resolve(
            self.get_model(id_or_name),
            self.model_by_name(id_or_name),
            "model",
            id_or_name,
        )
        .await
    }
}

/// Pipelines and their variables.
#[async_trait]
pub trait Pipelines: Send + Sync {
    /// `Conflict` when the name is taken.
    async fn create_pipeline(&self, pipeline: NewPipeline) -> Result<Pipeline>;
    async fn get_pipeline(&self, id: &str) -> Result<Pipeline>;
    async fn pipeline_by_name(&self, name: &str) -> Result<Pipeline>;
    async fn list_pipelines(&self) -> Result<Vec<Pipeline>>;
    async fn get_variables(&self, pipeline_id: &str) -> Result<Vec<Variable>>;
    /// Sets existing variables' values, all or none (`NotFound` names the missing variable).
    async fn update_variables(
        &self,
        pipeline_id: &str,
        updates: &[VariableUpdate],
    ) -> Result<Vec<Variable>>;
    /// Sets a Model variable to `model_id` in one atomic step, only if that model is
    /// `trained` (or `deployed`) and has artifacts; else `Conflict`, value unchanged.
    async fn promote_model_variable(
        &self,
        pipeline_id: &str,
        variable: &str,
        model_id: &str,
    ) -> Result<Variable>;

    // ---- provided ----

    /// A pipeline by id, or else by name.
    async fn resolve_pipeline(&self, id_or_name: &str) -> Result<Pipeline> {
        resolve(
            self.get_pipeline(id_or_name),
            self.pipeline_by_name(id_or_name),
            "pipeline",
            id_or_name,
        )
        .await
    }
}

/// Executions and their status log.
#[async_trait]
pub trait Executions: Send + Sync {
    async fn create_execution(&self, execution: NewExecution) -> Result<Execution>;
    async fn get_execution(&self, id: &str) -> Result<Execution>;
    async fn list_executions(&self, query: &ExecutionQuery) -> Result<Vec<Execution>>;
    /// Appends to the status log; `Conflict` once the execution is terminal;
    /// `Invalid` for a terminal status here or percent > 100.
    async fn progress_execution(&self, id: &str, progress: ExecutionProgress) -> Result<Execution>;
    /// Queues a started or ended execution again (status `rerun`), as Dataloop's
    /// `POST /executions/{id}/rerun` does; `Conflict` while it is still `created` or `rerun`.
    async fn rerun_execution(&self, id: &str) -> Result<Execution>;
    /// Moves to a terminal status (`success` sets percent 100); `Conflict` when already terminal.
    async fn finish_execution(
        &self,
        id: &str,
        status: ExecutionStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<Execution>;
}

/// Feature sets, vectors and nearest-neighbour search.
#[async_trait]
pub trait Vectors: Send + Sync {
    /// The feature set of `model_id`, created on first use with `name` and `size`;
    /// `Conflict` when it exists with another size.
    async fn feature_set_for_model(
        &self,
        model_id: &str,
        name: &str,
        size: u32,
    ) -> Result<FeatureSet>;
    async fn get_feature_set(&self, id: &str) -> Result<FeatureSet>;
    async fn list_feature_sets(&self) -> Result<Vec<FeatureSet>>;
    /// Inserts or replaces vectors keyed by (feature set, entity id): never duplicates.
    /// All or nothing; `Invalid` when a vector's length differs from the set's size.
    async fn upsert_vectors(
        &self,
        feature_set_id: &str,
        vectors: &[NewVector],
    ) -> Result<UpsertSummary>;
    /// Entity ids that have a vector in the set (optionally only from one dataset).
    async fn vector_entities(
        &self,
        feature_set_id: &str,
        dataset_id: Option<&str>,
    ) -> Result<Vec<Id>>;
    /// Which of `entity_ids` have a vector in the set (any order, no duplicates). The embed
    /// node asks one page of items at a time, so what it holds is bounded by the page, not
    /// by the set.
    async fn entities_with_vectors(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<Id>>;
    async fn get_vector(&self, feature_set_id: &str, entity_id: &str) -> Result<FeatureVector>;
    /// Top-k by cosine similarity, best first.
    async fn nearest(&self, feature_set_id: &str, query: &NearestQuery) -> Result<Vec<Neighbor>>;
}

/// Everything a platform offers: the sum of the five entity traits. Implemented for every
/// type that implements all five, so backends implement only those and callers keep holding
/// `Arc<dyn Platform>` / `&dyn Platform`, on which every supertrait method is callable.
pub trait Platform: Datasets + Models + Pipelines + Executions + Vectors + Send + Sync {}

impl<T: Datasets + Models + Pipelines + Executions + Vectors + ?Sized> Platform for T {}

/// The `resolve_*` methods: `by_id` when `id_or_name` is an id that exists, else `by_name`
/// (its `NotFound` naming `id_or_name`). Each future runs only if awaited here.
async fn resolve<T>(
    by_id: impl Future<Output = Result<T>>,
    by_name: impl Future<Output = Result<T>>,
    kind: &'static str,
    id_or_name: &str,
) -> Result<T> {
    if is_id(id_or_name) {
        match by_id.await {
            Err(StoreError::NotFound { .. }) => {}
            other => return other,
        }
    }
    by_name.await.map_err(|err| match err {
        StoreError::NotFound { .. } => StoreError::NotFound {
            kind,
            id: id_or_name.to_string(),
        },
        other => other,
    })
}

/// True for a 24-hex-digit id (Dataloop's format).
pub fn is_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The parts of a Dataloop prompt item's JSON that training uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptContent {
    /// From the user prompt's image element: `.../items/<id>/stream` -> `<id>`.
    pub image_item_id: Option<Id>,
    /// The user prompt's `application/text` element.
    pub text: Option<String>,
}

impl PromptContent {
    /// `None` when `bytes` is not a prompt JSON (`shebang` `dataloop`, `metadata.dltype` `prompt`).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let json: Value = serde_json::from_slice(bytes).ok()?;
        let dltype = json.get("metadata")?.get("dltype")?.as_str()?;
        if dltype != "prompt" {
            return None;
        }
        let prompts = json.get("prompts")?.as_object()?;
        // Keys are prompt ids ("1", "2", ...); take the user prompt, the first one by key order
        // when roles are missing.
        let mut keys: Vec<&String> = prompts.keys().collect();
        keys.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.to_string()));
        let elements = |k: &String| prompts.get(k).and_then(Value::as_array);
        let is_user = |els: &Vec<Value>| {
            els.iter().any(|e| {
                e.get("mimetype").and_then(Value::as_str) == Some("metadata")
                    && e.get("value")
                        .and_then(|v| v.get("role"))
                        .and_then(Value::as_str)
                        == Some("user")
            })
        };
        let chosen = keys
            .iter()
            .filter_map(|k| elements(k))
            .find(|els| is_user(els))
            .or_else(|| keys.iter().filter_map(|k| elements(k)).next())?;
        let mut out = PromptContent::default();
        for el in chosen {
            let mime = el.get("mimetype").and_then(Value::as_str).unwrap_or("");
            let value = el.get("value");
            if mime.starts_with("image/") && out.image_item_id.is_none() {
                out.image_item_id = value.and_then(Value::as_str).and_then(item_id_from_url);
            } else if (mime == "application/text" || mime.starts_with("text/"))
                && out.text.is_none()
            {
                out.text = value
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from);
            }
        }
        Some(out)
    }

    /// Builds the JSON of a prompt item whose user prompt shows `image_item_id`.
    pub fn to_json(image_item_id: &str, text: Option<&str>) -> Value {
        let mut elements = vec![serde_json::json!({
            "mimetype": "image/*",
            "value": format!("https://gate.dataloop.ai/api/v1/items/{image_item_id}/stream"),
        })];
        if let Some(t) = text {
            elements.push(serde_json::json!({"mimetype": "application/text", "value": t}));
        }
        elements.push(serde_json::json!({"mimetype": "metadata", "value": {"role": "user"}}));
        let mut prompts = Map::new();
        prompts.insert("1".into(), Value::Array(elements));
        serde_json::json!({
            "shebang": "dataloop",
            "metadata": {"dltype": "prompt"},
            "prompts": prompts,
        })
    }
}

/// The item id in `https://.../items/<id>/stream` (second-to-last segment), or a bare id.
pub fn item_id_from_url(url: &str) -> Option<Id> {
    if is_id(url) {
        return Some(url.to_string());
    }
    let path = url.split(['?', '#']).next()?;
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let id = segs.get(segs.len().checked_sub(2)?)?;
    is_id(id).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_traits_are_object_safe_and_platform_is_their_sum() {
        fn platform<P: Platform + ?Sized>() {}
        platform::<crate::LocalStore>();
        platform::<crate::DataloopBackend>();
        platform::<dyn Platform>();
        fn object_safe(
            _: Option<&dyn Datasets>,
            _: Option<&dyn Models>,
            _: Option<&dyn Pipelines>,
            _: Option<&dyn Executions>,
            _: Option<&dyn Vectors>,
        ) {
        }
        object_safe(None, None, None, None, None);
    }

    #[test]
    fn prompt_json_round_trip() {
        let id = "0123456789abcdef01234567";
        let json = PromptContent::to_json(id, Some("a cat"));
        let parsed = PromptContent::parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.image_item_id.as_deref(), Some(id));
        assert_eq!(parsed.text.as_deref(), Some("a cat"));
    }

    #[test]
    fn url_ids() {
        assert_eq!(
            item_id_from_url("https://x/api/v1/items/0123456789abcdef01234567/stream?a=1")
                .as_deref(),
            Some("0123456789abcdef01234567")
        );
        assert_eq!(item_id_from_url("https://x/items/nothex/stream"), None);
        assert!(PromptContent::parse(b"{\"metadata\":{\"dltype\":\"other\"}}").is_none());
    }
}
