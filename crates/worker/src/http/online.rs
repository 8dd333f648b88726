//! Online routes: `POST /embed` (texts, images, item ids), `POST /search`, the search page
//! at `/` with its training view at `/training`, and the small read-only API the page uses
//! (`GET /models`, `GET /datasets`, `GET /models/{id}/metrics`, `GET /items/{id}/stream`).
//!
//! Embedding goes through one [`Batcher`] per server: inputs of concurrent requests share
//! device batches under a token budget, and past `--max-inflight` requests a new one
//! answers 429 at once. Every embedding answer carries its timing in headers
//! (`Server-Timing`, `x-queue-ms`, `x-device-ms`, ...).

use super::api::{OnlineEmbedRequest, OnlineEmbedResponse};
use super::JsonBody;
use crate::batcher::{Batcher, OnlineConfig, Permit, Timing};
use crate::error::{ErrorBody, Result, WorkerError};
use crate::executions::Worker;
use crate::infer::{read_item, Input, Prepared, Raw};
use crate::nodes::embed::resolve_model;
use crate::nodes::local_weights_for;
use crate::search::{self, Hit};
use axum::extract::{Extension, Path};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use cliptune_store::{Model, Platform, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The online path (the batcher behind `POST /embed` and `POST /search`) outside the server:
/// `texts` then `images` (bytes, name) of `model_id` as one request, vectors in that order.
/// For tests that compare it with the vectors the embed node stores.
pub async fn embed_batched(
    worker: &Worker,
    model_id: &str,
    texts: &[&str],
    images: &[(&[u8], &str)],
) -> Result<Vec<Vec<f32>>> {
    let online = Online::new(worker);
    let prepared = online.model(Some(model_id), None).await?;
    let permit = online.batcher.admit()?;
    let mut inputs: Vec<Input> = texts.iter().map(|t| prepared.text(t)).collect();
    for (bytes, name) in images {
        inputs.push(
            prepared
                .image(bytes, name)
                .map_err(|e| WorkerError::input("images", e))?,
        );
    }
    let (vectors, _) = online.batcher.embed(&permit, prepared, inputs).await?;
    Ok(vectors)
}

/// Most inputs one online request may carry.
pub const MAX_INPUTS: usize = 256;

/// The online side of a server: the batcher and the models prepared for it.
pub struct Online {
    worker: Worker,
    pub batcher: Batcher,
    /// Model id -> (its artifacts as JSON, the prepared model): a retrained model (new
    /// artifacts) is prepared again.
    models: tokio::sync::Mutex<HashMap<String, (String, Arc<Prepared>)>>,
}

impl Online {
    /// Limits from the worker's settings (`--embed-token-budget`, `--max-inflight`).
    pub fn new(worker: &Worker) -> Arc<Self> {
        let config = OnlineConfig::of(&worker.config);
        Self::with_config(worker, config)
    }

    pub fn with_config(worker: &Worker, config: OnlineConfig) -> Arc<Self> {
        let config = OnlineConfig {
            precision: worker.embed_precision,
            ..config
        };
        Arc::new(Self {
            worker: worker.clone(),
            batcher: Batcher::new(worker.device.clone(), config),
            models: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    fn platform(&self) -> &dyn Platform {
        &**self.worker.platform()
    }

    /// The model to use (given, else the pipeline's "Newest CLIP model"), ready for inference.
    pub async fn model(
        &self,
        model: Option<&str>,
        pipeline: Option<&str>,
    ) -> Result<Arc<Prepared>> {
        let m = resolve_model(self.platform(), model, pipeline, None).await?;
        self.prepare(&m).await
    }

    async fn prepare(&self, m: &Model) -> Result<Arc<Prepared>> {
        let marker = serde_json::to_string(&m.artifacts).unwrap_or_default();
        if let Some((seen, prepared)) = self.models.lock().await.get(&m.id) {
            if *seen == marker {
                return Ok(prepared.clone());
            }
        }
        let dir = local_weights_for(&self.worker, m).await?;
        let (id, name) = (m.id.clone(), m.name.clone());
        // Queries always decode exactly (no --fast-decode).
        let prepared = Arc::new(
            tokio::task::spawn_blocking(move || Prepared::open(id, name, dir, false))
                .await
                .map_err(|e| WorkerError::Internal(format!("reading the model config: {e}")))??,
        );
        self.models
            .lock()
            .await
            .insert(m.id.clone(), (marker, prepared.clone()));
        Ok(prepared)
    }

    /// Vectors of `inputs` through the batcher.
    async fn run(
        &self,
        permit: &Permit,
        model: &Arc<Prepared>,
        inputs: Vec<Input>,
    ) -> Result<(Vec<Vec<f32>>, Timing)> {
        self.batcher.embed(permit, model.clone(), inputs).await
    }
}

/// Base64 image strings (a `data:` URL prefix is accepted) to bytes, naming the bad one.
fn decode_images(images: &[String], field: &str) -> Result<Vec<Vec<u8>>> {
    images
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let b = b.trim();
            let b = match b.strip_prefix("data:") {
                Some(rest) => rest.split_once(',').map_or(rest, |(_, data)| data),
                None => b,
            };
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| {
                    WorkerError::input(format!("{field}[{i}]"), format!("not base64: {e}"))
                })
        })
        .collect()
}

/// Preprocesses on the blocking pool (decoding and resizing are CPU work), in order.
async fn preprocess(
    model: &Arc<Prepared>,
    texts: Vec<String>,
    images: Vec<(String, Vec<u8>)>,
) -> Result<(Vec<Input>, Vec<Input>)> {
    let m = model.clone();
    tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        let images = images
            .par_iter()
            .map(|(field, bytes)| {
                m.image(bytes, field).map_err(|e| {
                    WorkerError::input(field.clone(), format!("not a usable image: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let texts = texts.iter().map(|t| m.text(t)).collect();
        Ok((texts, images))
    })
    .await
    .map_err(|e| WorkerError::Internal(format!("preprocessing: {e}")))?
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `Server-Timing` and `x-*-ms` headers of an online request.
fn timing_headers(
    headers: &mut HeaderMap,
    prep_ms: f64,
    timing: &Timing,
    extra: &[(&str, f64)],
    total_ms: f64,
) {
    let mut parts = vec![
        format!("prep;dur={prep_ms:.2}"),
        format!("queue;dur={:.2}", ms(timing.queue)),
        format!("device;dur={:.2}", ms(timing.device)),
    ];
    for (name, v) in extra {
        parts.push(format!("{name};dur={v:.2}"));
    }
    parts.push(format!("total;dur={total_ms:.2}"));
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("server-timing", parts.join(", "));
    put("x-preprocess-ms", format!("{prep_ms:.2}"));
    put("x-queue-ms", format!("{:.2}", ms(timing.queue)));
    put("x-device-ms", format!("{:.2}", ms(timing.device)));
    put("x-total-ms", format!("{total_ms:.2}"));
    put("x-batches", timing.batches.to_string());
    put("x-batch-inputs", timing.batch_inputs.to_string());
    put("x-batch-tokens", timing.batch_tokens.to_string());
}

/// `POST /embed` with `texts` / `images` / `item_ids`: vectors in input order.
pub async fn embed(online: &Online, request: OnlineEmbedRequest) -> Result<Response> {
    let permit = online.batcher.admit()?;
    let n = request.texts.len() + request.images.len() + request.item_ids.len();
    if n == 0 {
        return Err(WorkerError::input(
            "texts",
            "give at least one text, image or item id",
        ));
    }
    if n > MAX_INPUTS {
        return Err(WorkerError::input(
            "texts",
            format!("{n} inputs; at most {MAX_INPUTS} per request"),
        ));
    }
    let images = decode_images(&request.images, "images")?;
    let model = online
        .model(request.model_id.as_deref(), request.pipeline.as_deref())
        .await?;
    let t_prep = Instant::now();

    // Items: their stored vector when the model has one, else their content, embedded now.
    let platform = online.platform();
    let set = match request.item_ids.is_empty() {
        true => None,
        false => search::find_feature_set(platform, &model.id).await?,
    };
    let mut item_vectors: Vec<Option<Vec<f32>>> = Vec::with_capacity(request.item_ids.len());
    let mut item_texts = Vec::new();
    let mut item_images = Vec::new();
    let mut item_slots = Vec::new();
    for (i, id) in request.item_ids.iter().enumerate() {
        let field = format!("item_ids[{i}]");
        let item = platform.get_item(id).await.map_err(|e| match e {
            StoreError::NotFound { .. } => {
                WorkerError::NotFound(format!("{field}: no item {id:?}"))
            }
            e => e.into(),
        })?;
        if let Some(fs) = &set {
            if let Ok(v) = platform.get_vector(&fs.id, &item.id).await {
                item_vectors.push(Some(v.value));
                continue;
            }
        }
        item_vectors.push(None);
        match read_item(platform, &item).await {
            Ok(Raw::Text(t)) => {
                item_slots.push((i, true, item_texts.len()));
                item_texts.push(t);
            }
            Ok(Raw::Image(b)) => {
                item_slots.push((i, false, item_images.len()));
                item_images.push((field, b));
            }
            Err(reason) => return Err(WorkerError::input(field, format!("item {id}: {reason}"))),
        }
    }

    let n_texts = request.texts.len();
    let n_images = images.len();
    let all_texts: Vec<String> = request.texts.into_iter().chain(item_texts).collect();
    let all_images: Vec<(String, Vec<u8>)> = images
        .into_iter()
        .enumerate()
        .map(|(i, b)| (format!("images[{i}]"), b))
        .chain(item_images)
        .collect();
    let (texts, imgs) = preprocess(&model, all_texts, all_images).await?;
    let n_item_texts = texts.len() - n_texts;
    let prep_ms = search::ms_since(t_prep);
    let inputs: Vec<Input> = texts.into_iter().chain(imgs).collect();
    let (mut vectors, timing) = online.run(&permit, &model, inputs).await?;

    // Inputs went in as [texts, item texts, images, item images].
    let item_image_vecs = vectors.split_off(n_texts + n_item_texts + n_images);
    let image_vecs = vectors.split_off(n_texts + n_item_texts);
    let item_text_vecs = vectors.split_off(n_texts);
    let text_vecs = vectors;
    for (i, is_text, j) in item_slots {
        let v = if is_text {
            &item_text_vecs[j]
        } else {
            &item_image_vecs[j]
        };
        item_vectors[i] = Some(v.clone());
    }
    let items: Vec<Vec<f32>> = item_vectors
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let total_ms = ms(permit.admitted.elapsed());
    let mut response = Json(OnlineEmbedResponse {
        model_id: model.id.clone(),
        texts: text_vecs,
        images: image_vecs,
        items,
    })
    .into_response();
    timing_headers(response.headers_mut(), prep_ms, &timing, &[], total_ms);
    Ok(response)
}

/// `POST /search`: exactly one of `text`, `image`, `item_id`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// A text query (through the text tower).
    #[serde(default)]
    pub text: Option<String>,
    /// A base64 image file (JPEG, PNG, WebP, GIF, BMP; a `data:` URL works too).
    #[serde(default)]
    pub image: Option<String>,
    /// An item whose stored vector is the query ("more like this").
    #[serde(default)]
    pub item_id: Option<String>,
    /// Model id or name; default: the pipeline's "Newest CLIP model".
    #[serde(default, alias = "model")]
    pub model_id: Option<String>,
    /// Pipeline (id or name) whose "Newest CLIP model" is the default model.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Dataset id or name to search in (default: every vector of the model).
    #[serde(default, alias = "dataset")]
    pub dataset_id: Option<String>,
    /// How many results (1..=1000, default 10).
    #[serde(default = "default_k")]
    pub k: usize,
    /// DQL filter over the dataset's items (needs a dataset).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
}

fn default_k() -> usize {
    10
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelRef {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchTiming {
    pub embed_ms: f64,
    pub search_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub model: ModelRef,
    pub feature_set_id: String,
    pub dataset_id: Option<String>,
    /// `text`, `image` or `item`.
    pub query: String,
    pub k: usize,
    /// Best first.
    pub results: Vec<Hit>,
    pub timing: SearchTiming,
}

#[utoipa::path(post, path = "/search", tag = "search", security(("bearer" = [])),
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Top-k items by cosine, best first", body = SearchResponse),
        (status = 404, description = "Unknown model, dataset or item", body = ErrorBody),
        (status = 422, description = "Bad input, or the model has no vectors yet", body = ErrorBody),
        (status = 429, description = "Too many online requests in flight", body = ErrorBody),
    ))]
pub async fn search(
    Extension(online): Extension<Arc<Online>>,
    JsonBody(request): JsonBody<SearchRequest>,
) -> Result<Response> {
    let permit = online.batcher.admit()?;
    let given = [
        request.text.is_some(),
        request.image.is_some(),
        request.item_id.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(WorkerError::input(
            "text",
            "give exactly one of `text`, `image` and `item_id`",
        ));
    }
    search::check_query(
        request.k,
        request.filter.as_ref(),
        request.dataset_id.as_deref(),
    )?;
    let platform = online.platform();
    let model = resolve_model(
        platform,
        request.model_id.as_deref(),
        request.pipeline.as_deref(),
        None,
    )
    .await?;
    let set = search::feature_set(platform, &model).await?;
    let dataset_id = match &request.dataset_id {
        Some(d) => Some(platform.resolve_dataset(d).await?.id),
        None => None,
    };
    let t_embed = Instant::now();
    let mut prep_ms = 0.0;
    let mut timing = Timing::default();
    let (vector, query) = if let Some(item) = &request.item_id {
        let v = platform
            .get_vector(&set.id, item)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => WorkerError::input(
                    "item_id",
                    format!(
                        "item {item:?} has no vector for model {} (not embedded)",
                        model.name
                    ),
                ),
                e => e.into(),
            })?;
        (v.value, "item")
    } else {
        let prepared = online.prepare(&model).await?;
        let t_prep = Instant::now();
        let (texts, images) = match (&request.text, &request.image) {
            (Some(t), _) => {
                if t.trim().is_empty() {
                    return Err(WorkerError::input("text", "is empty"));
                }
                preprocess(&prepared, vec![t.clone()], vec![]).await?
            }
            (None, Some(img)) => {
                let bytes = decode_images(std::slice::from_ref(img), "image")?.remove(0);
                preprocess(&prepared, vec![], vec![("image".into(), bytes)]).await?
            }
            (None, None) => unreachable!("checked above"),
        };
        prep_ms = search::ms_since(t_prep);
        let query = if texts.is_empty() { "image" } else { "text" };
        let inputs: Vec<Input> = texts.into_iter().chain(images).collect();
        let (mut v, t) = online.run(&permit, &prepared, inputs).await?;
        timing = t;
        (v.remove(0), query)
    };
    let embed_ms = search::ms_since(t_embed);
    let t_search = Instant::now();
    let results = search::nearest(
        platform,
        &set,
        vector,
        dataset_id.as_deref(),
        request.k,
        request.filter,
    )
    .await?;
    let search_ms = search::ms_since(t_search);
    let total_ms = ms(permit.admitted.elapsed());
    let mut response = Json(SearchResponse {
        model: ModelRef {
            id: model.id,
            name: model.name,
        },
        feature_set_id: set.id,
        dataset_id,
        query: query.into(),
        k: request.k,
        results,
        timing: SearchTiming {
            embed_ms,
            search_ms,
            total_ms,
        },
    })
    .into_response();
    timing_headers(
        response.headers_mut(),
        prep_ms,
        &timing,
        &[("embed", embed_ms), ("search", search_ms)],
        total_ms,
    );
    Ok(response)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelSummary {
    pub id: String,
    pub name: String,
    pub status: String,
    pub base_model_id: Option<String>,
    pub dataset_id: Option<String>,
    /// The model's feature set, when it has vectors.
    pub feature_set_id: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    /// Newest first.
    pub models: Vec<ModelSummary>,
    /// The pipeline's "Newest CLIP model", when exactly one pipeline has that variable set.
    pub default_model_id: Option<String>,
}

#[utoipa::path(get, path = "/models", tag = "search", security(("bearer" = [])),
    responses((status = 200, description = "Models, which have vectors, and the default one", body = ModelList)))]
pub async fn list_models(Extension(online): Extension<Arc<Online>>) -> Result<Json<ModelList>> {
    let platform = online.platform();
    let sets = platform.list_feature_sets().await?;
    let mut models: Vec<ModelSummary> = platform
        .list_models()
        .await?
        .into_iter()
        .map(|m| ModelSummary {
            feature_set_id: sets
                .iter()
                .find(|fs| fs.model_id.as_deref() == Some(m.id.as_str()))
                .map(|fs| fs.id.clone()),
            status: m.status.as_str().into(),
            id: m.id,
            name: m.name,
            base_model_id: m.base_model_id,
            dataset_id: m.dataset_id,
            created_at: m.created_at,
        })
        .collect();
    models.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let default_model_id = resolve_model(platform, None, None, None)
        .await
        .ok()
        .map(|m| m.id);
    Ok(Json(ModelList {
        models,
        default_model_id,
    }))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetSummary {
    pub id: String,
    pub name: String,
    pub items_count: u64,
}

#[utoipa::path(get, path = "/datasets", tag = "search", security(("bearer" = [])),
    responses((status = 200, description = "Datasets", body = [DatasetSummary])))]
pub async fn list_datasets(
    Extension(online): Extension<Arc<Online>>,
) -> Result<Json<Vec<DatasetSummary>>> {
    Ok(Json(
        online
            .platform()
            .list_datasets()
            .await?
            .into_iter()
            .map(|d| DatasetSummary {
                id: d.id,
                name: d.name,
                items_count: d.items_count,
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/models/{id}/metrics", tag = "search", security(("bearer" = [])),
    params(("id" = String, Path, description = "Model id or name")),
    responses(
        (status = 200, description = "`{model, samples: [{figure, legend, data: {x, y}}], training}`: the metric samples training published and its run summary", body = Object),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
pub async fn model_metrics(
    Extension(online): Extension<Arc<Online>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let platform = online.platform();
    let m = platform.resolve_model(&id).await?;
    let samples = platform.list_metrics(&m.id).await?;
    let training = m
        .metadata
        .get("cliptune")
        .and_then(|c| c.get("training"))
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Json(json!({
        "model": {"id": m.id, "name": m.name, "status": m.status.as_str(), "base_model_id": m.base_model_id},
        "samples": samples,
        "training": training,
    })))
}

#[utoipa::path(get, path = "/items/{id}/stream", tag = "search", security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id")),
    responses(
        (status = 200, description = "The item's content (images and plain text inline, anything else as a download)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such item", body = ErrorBody),
    ))]
pub async fn item_stream(
    Extension(online): Extension<Arc<Online>>,
    Path(id): Path<String>,
) -> Result<Response> {
    let platform = online.platform();
    let item = platform.get_item(&id).await?;
    let bytes = platform.item_bytes(&item.id).await?;
    let mime = item.mimetype().unwrap_or("application/octet-stream");
    // Only types that cannot run script in our origin are shown inline.
    let inline = (mime.starts_with("image/") && mime != "image/svg+xml") || mime == "text/plain";
    let content_type = if inline {
        mime
    } else {
        "application/octet-stream"
    };
    let mut response = bytes.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    if !inline {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    Ok(response)
}

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The search page (`/`) and the training page (`/training`): one document, the script picks the view.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// Paths served without a bearer token: the page itself holds no data (it asks for the
/// token when the API answers 401).
pub fn is_public_asset(path: &str) -> bool {
    matches!(path, "/" | "/training") || path.starts_with("/ui/")
}
