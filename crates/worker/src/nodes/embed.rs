//! *Embeddings*: one L2-normalised vector per item in the feature set of the model.
//!
//! Images go through the image tower; text items and prompt items go through the text tower
//! (a prompt item's text is its caption as [`cliptune_store::Datasets::caption`] resolves
//! it). The model is the input's, else the pipeline's "Newest CLIP model" at run time. Items
//! that already have a vector in the set are skipped, so a rerun (or a re-queued execution)
//! only embeds what is missing and never duplicates; unreadable items are reported, not fatal.
//!
//! The online form of `POST /embed` (texts and images in the request) is served by the
//! batcher (crate::http::online), outside the execution queue. Both read and encode through
//! [`crate::infer`], so an item's stored vector and the same content sent as a query match.

use super::feed::{Decoded, Feed, Note};
use super::input::{parse, DatasetRef, ItemRef, ModelRef, PipelineRef};
use super::{entity_ref, local_weights, local_weights_for, NEWEST_MODEL_VARIABLE};
use crate::ctx::{Env, NodeCtx};
use crate::error::{Result, WorkerError};
use crate::infer::{self, Input, Prepared};
use cliptune_store::{ExecutionPipeline, Item, ItemQuery, Model, NewVector, Platform};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum EmbedTarget {
    /// Every item of the dataset matching `filter` (Dataloop's default filter when `None`).
    Dataset {
        id: String,
        filter: Option<Value>,
    },
    Items(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct EmbedInput {
    pub target: EmbedTarget,
    pub model: Option<String>,
    pub pipeline: Option<String>,
}

/// *Embeddings*' inputs as an execution takes them: a dataset (with an optional `filter`)
/// or a list of items.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    #[serde(default, alias = "dataset_id")]
    pub dataset: Option<DatasetRef>,
    #[serde(default, alias = "item_ids")]
    pub items: Option<Vec<ItemRef>>,
    /// A DQL filter over the dataset's items (only with `dataset`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Map<String, Value>>,
    /// Default: the pipeline's "Newest CLIP model".
    #[serde(default)]
    pub model: Option<ModelRef>,
    #[serde(default, alias = "pipeline_id")]
    pub pipeline: Option<PipelineRef>,
}

impl EmbedInput {
    pub fn parse(input: &Value) -> Result<Self> {
        if input.get("texts").is_some() || input.get("images").is_some() {
            return Err(WorkerError::input(
                "texts",
                "texts and images are embedded online by POST /embed, not by an execution",
            ));
        }
        let r: EmbedRequest = parse(input)?;
        let target = match (r.dataset, r.items) {
            (Some(_), Some(_)) => {
                return Err(WorkerError::input(
                    "items",
                    "give either a dataset or a list of items, not both",
                ))
            }
            (Some(d), None) => EmbedTarget::Dataset {
                id: d.into(),
                filter: r.filter.map(Value::Object),
            },
            (None, Some(items)) if !items.is_empty() => {
                if input.get("filter").is_some() {
                    return Err(WorkerError::input("filter", "only applies to a dataset"));
                }
                EmbedTarget::Items(items.into_iter().map(String::from).collect())
            }
            (None, Some(_)) => {
                return Err(WorkerError::input(
                    "items",
                    "must be a non-empty list of {\"item_id\"} objects",
                ))
            }
            (None, None) => {
                let message = "missing: give `dataset` ({\"dataset_id\"}) \
                               or `items` ([{\"item_id\"}, ...])";
                return Err(WorkerError::input("dataset", message));
            }
        };
        Ok(Self {
            target,
            model: r.model.map(String::from),
            pipeline: r.pipeline.map(String::from),
        })
    }
}

/// The model to embed with: the given one, else "Newest CLIP model" of the given pipeline,
/// of the execution's pipeline, or of the only pipeline that has that variable.
pub async fn resolve_model(
    platform: &dyn Platform,
    model: Option<&str>,
    pipeline: Option<&str>,
    running_in: Option<&ExecutionPipeline>,
) -> Result<Model> {
    if let Some(m) = model {
        return Ok(platform.resolve_model(m).await?);
    }
    let pipeline = match (pipeline, running_in) {
        (Some(p), _) => platform.resolve_pipeline(p).await?,
        (None, Some(p)) => platform.get_pipeline(&p.id).await?,
        (None, None) => {
            let mut with_var: Vec<_> = platform
                .list_pipelines()
                .await?
                .into_iter()
                .filter(|p| p.variable(NEWEST_MODEL_VARIABLE).is_some())
                .collect();
            if with_var.len() != 1 {
                return Err(WorkerError::input(
                    "model",
                    format!(
                        "missing, and {} pipelines have a {NEWEST_MODEL_VARIABLE:?} variable to default to; give `model` or `pipeline`",
                        with_var.len()
                    ),
                ));
            }
            with_var.remove(0)
        }
    };
    let value = pipeline
        .variable(NEWEST_MODEL_VARIABLE)
        .map(|v| v.value.clone())
        .unwrap_or(Value::Null);
    let id = entity_ref(&value, "model", &["model_id"]).map_err(|_| {
        WorkerError::input(
            "model",
            format!(
                "pipeline {} has no model in {NEWEST_MODEL_VARIABLE:?} (value {value})",
                pipeline.name
            ),
        )
    })?;
    Ok(platform.resolve_model(&id).await?)
}

/// Where a dataset embedding's time goes, stage by stage: reading (item pages and item
/// bytes, downloads on a remote platform), decoding (decode + resize + tokenize, on the
/// decode threads), the device, writing vectors. The stages run at once (nodes::feed), so
/// the busiest one bounds the rate. Each stage's seconds are its busy time: for reading
/// and writing the wall time not spent waiting for a queue, for decoding the threads' busy
/// time divided by their number (comparable with the others).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Stages {
    pub read: Stage,
    pub decode: Stage,
    pub device: Stage,
    pub write: Stage,
    pub decode_threads: usize,
}

/// One stage: busy seconds and the items it handled.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Stage {
    pub seconds: f64,
    pub items: usize,
}

impl Stage {
    fn add(&mut self, started: std::time::Instant, items: usize) {
        self.seconds += started.elapsed().as_secs_f64();
        self.items += items;
    }

    fn rate(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-9)
    }
}

impl Stages {
    const NAMES: [&'static str; 4] = ["read", "decode", "device", "write"];

    /// The feed's stages so far, with the device's.
    fn of(feed: &Feed, device: Stage) -> Self {
        let threads = feed.threads();
        let (read_seconds, read_items) = feed.read();
        let (thread_seconds, decoded) = feed.decode();
        Self {
            read: Stage {
                seconds: read_seconds,
                items: read_items,
            },
            decode: Stage {
                seconds: thread_seconds / threads.max(1) as f64,
                items: decoded,
            },
            device,
            decode_threads: threads,
            ..Self::default()
        }
    }

    fn all(&self) -> [&Stage; 4] {
        [&self.read, &self.decode, &self.device, &self.write]
    }

    /// The stage with the most busy time: the one that bounds the rate.
    pub fn bottleneck(&self) -> &'static str {
        let all = self.all();
        let (i, _) = all.iter().enumerate().fold((0, -1.0), |best, (i, s)| {
            if s.seconds > best.1 {
                (i, s.seconds)
            } else {
                best
            }
        });
        Self::NAMES[i]
    }

    /// `read 0.4 s (950/s), decode 3.1 s (120/s), ...` for progress lines.
    pub fn summary(&self) -> String {
        Self::NAMES
            .iter()
            .zip(self.all())
            .map(|(name, s)| format!("{name} {:.1} s ({:.0}/s)", s.seconds, s.rate()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The JSON of the node's output: each stage's seconds and items per second, and the
    /// bottleneck.
    fn report(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (name, s) in Self::NAMES.iter().zip(self.all()) {
            m.insert(
                (*name).into(),
                json!({
                    "seconds": (s.seconds * 1000.0).round() / 1000.0,
                    "items": s.items,
                    "items_per_s": (s.rate() * 10.0).round() / 10.0,
                }),
            );
        }
        m.insert("decode_threads".into(), json!(self.decode_threads));
        m.insert("bottleneck".into(), json!(self.bottleneck()));
        Value::Object(m)
    }
}

/// Vectors computed and waiting to be written, in batches: writing batch n overlaps the
/// forward pass of batch n+1.
const WRITE_AHEAD: usize = 2;

pub async fn run(input: EmbedInput, ctx: &NodeCtx) -> Result<Value> {
    let worker = &ctx.env;
    let platform = worker.platform().clone();
    let model = resolve_model(
        &*platform,
        input.model.as_deref(),
        input.pipeline.as_deref(),
        ctx.pipeline.as_ref(),
    )
    .await?;
    ctx.progress(
        1,
        format!("embedding with model {} ({})", model.name, model.id),
    );
    let dir = local_weights(ctx, &model).await?;
    let (id, name, fast) = (
        model.id.clone(),
        model.name.clone(),
        worker.config.fast_decode,
    );
    let prepared = Arc::new(
        tokio::task::spawn_blocking(move || Prepared::open(id, name, dir, fast))
            .await
            .map_err(|e| WorkerError::Internal(format!("reading the model config: {e}")))??,
    );
    let set = platform
        .feature_set_for_model(&model.id, &model.name, prepared.config.embed_dim as u32)
        .await?;
    let batch_size = worker.config.embed_batch_size.max(1);
    let pages = Pages::open(&platform, input.target.clone(), batch_size).await?;
    let mut feed = Feed::start(
        platform.clone(),
        prepared.clone(),
        pages,
        set.id.clone(),
        batch_size,
        worker.config.decode_threads(),
    )?;
    let (write_tx, write_rx) = tokio::sync::mpsc::channel::<Vec<NewVector>>(WRITE_AHEAD);
    let writer = tokio::spawn(write_all(platform.clone(), set.id.clone(), write_rx));
    let precision = worker.embed_precision;
    let (mut embedded, mut existing, mut total) = (0usize, 0usize, 0usize);
    let mut failed: Vec<Value> = Vec::new();
    let mut device = Stage::default();
    let outcome: Result<()> = async {
        let mut batch: Vec<(Item, Input)> = Vec::with_capacity(batch_size);
        loop {
            let next = feed.decoded.recv().await;
            let end = next.is_none();
            match next {
                Some(Decoded::Ready(item, input)) => batch.push((*item, input)),
                Some(Decoded::Failed(f)) => failed.push(f),
                None => {}
            }
            while let Ok(note) = feed.notes.try_recv() {
                match note {
                    Note::Page {
                        existing: e,
                        total: t,
                    } => (existing, total) = (e, t),
                    Note::Failed(f) => failed.push(f),
                    Note::Error(e) => return Err(e),
                }
            }
            let full = batch.len() >= batch_size || (end && !batch.is_empty());
            if !full {
                if end {
                    return Ok(());
                }
                continue;
            }
            ctx.check()?;
            // The inputs move to the device thread; the items stay here to label the vectors.
            let mut pixels = Vec::new();
            let mut ids = Vec::new();
            let (mut image_items, mut text_items) = (Vec::new(), Vec::new());
            for (item, input) in batch.drain(..) {
                match input {
                    Input::Image(px) => {
                        image_items.push(item);
                        pixels.push(px);
                    }
                    Input::Text(t) => {
                        text_items.push(item);
                        ids.push(t);
                    }
                }
            }
            let p = prepared.clone();
            let inputs = pixels.len() + ids.len();
            let on_device = std::time::Instant::now();
            let (img, txt) = worker
                .device
                .run(move |dev| {
                    let clip = dev.model(&p.dir)?;
                    infer::encode(&clip, precision, pixels, ids, true)
                })
                .await??;
            device.add(on_device, inputs);
            let vectors: Vec<NewVector> = image_items
                .iter()
                .zip(img)
                .chain(text_items.iter().zip(txt))
                .map(|(item, value)| NewVector {
                    entity_id: item.id.clone(),
                    dataset_id: item.dataset_id.clone(),
                    value,
                })
                .collect();
            embedded += vectors.len();
            if write_tx.send(vectors).await.is_err() {
                // The writer stopped on an error, which awaiting it reports.
                return Ok(());
            }
            ctx.progress(
                (2 + 97 * (embedded + existing + failed.len()) / total.max(1)).min(99) as u32,
                format!(
                    "{embedded} embedded, {existing} already embedded, {} failed of {total}; {}",
                    failed.len(),
                    Stages::of(&feed, device).summary()
                ),
            );
            if end {
                return Ok(());
            }
        }
    }
    .await;
    drop(write_tx);
    let written = writer
        .await
        .map_err(|e| WorkerError::Internal(format!("writing vectors: {e}")));
    let mut stages = Stages::of(&feed, device);
    feed.close().await;
    outcome?;
    stages.write = written??;
    worker.metrics.add_embedded_items(embedded as u64);
    for (name, stage) in Stages::NAMES.iter().zip(stages.all()) {
        worker.metrics.add_embed_stage(name, stage.seconds);
    }
    ctx.progress(
        100,
        format!(
            "{embedded} embedded, {existing} already embedded, {} failed; {} on {} decode threads (bottleneck: {})",
            failed.len(),
            stages.summary(),
            stages.decode_threads,
            stages.bottleneck()
        ),
    );
    Ok(json!({
        "model": {"model_id": model.id},
        "feature_set_id": set.id,
        "precision": precision,
        "items": embedded + existing + failed.len(),
        "embedded": embedded,
        "already_embedded": existing,
        "failed": failed,
        "stages": stages.report(),
    }))
}

/// Writes batches of vectors as they come; the write stage's busy time.
async fn write_all(
    platform: Arc<dyn Platform>,
    set_id: String,
    mut batches: tokio::sync::mpsc::Receiver<Vec<NewVector>>,
) -> Result<Stage> {
    let mut stage = Stage::default();
    while let Some(vectors) = batches.recv().await {
        let writing = std::time::Instant::now();
        platform.upsert_vectors(&set_id, &vectors).await?;
        stage.add(writing, vectors.len());
    }
    Ok(stage)
}

/// One page of the target: the items to embed, and what the rest of it came to.
pub(crate) struct Page {
    pub(crate) todo: Vec<Item>,
    pub(crate) existing: usize,
    pub(crate) failed: Vec<Value>,
    pub(crate) total: usize,
    pub(crate) more: bool,
}

/// The target's items, a page at a time.
pub(crate) enum Pages {
    Dataset { id: String, query: ItemQuery },
    Items(Option<Vec<String>>),
}

impl Pages {
    pub(crate) async fn open(
        platform: &Arc<dyn Platform>,
        target: EmbedTarget,
        batch_size: usize,
    ) -> Result<Self> {
        Ok(match target {
            EmbedTarget::Dataset { id, filter } => {
                let dataset = platform.resolve_dataset(&id).await?;
                let query = ItemQuery {
                    filter,
                    page: 0,
                    // Eight batches a page, within the page size every backend accepts.
                    page_size: ((batch_size * 8).max(100) as u32)
                        .min(cliptune_store::rules::MAX_PAGE_SIZE),
                };
                Self::Dataset {
                    id: dataset.id,
                    query,
                }
            }
            EmbedTarget::Items(ids) => Self::Items(Some(ids)),
        })
    }

    pub(crate) async fn next(
        &mut self,
        platform: &Arc<dyn Platform>,
        set_id: &str,
    ) -> Result<Page> {
        let mut page = Page {
            todo: Vec::new(),
            existing: 0,
            failed: Vec::new(),
            total: 0,
            more: false,
        };
        match self {
            Self::Dataset { id, query } => {
                let items = platform.query_items(id, query).await?;
                page.total = items.total_items_count as usize;
                page.more = items.has_next_page && !items.items.is_empty();
                query.page += 1;
                page.todo = items.items;
            }
            Self::Items(ids) => {
                let ids = ids.take().unwrap_or_default();
                page.total = ids.len();
                for id in &ids {
                    match platform.get_item(id).await {
                        Ok(item) => page.todo.push(item),
                        Err(e) => page
                            .failed
                            .push(json!({"item_id": id, "reason": e.to_string()})),
                    }
                }
            }
        }
        // What already has a vector, asked for this page only: memory stays bounded by the
        // page whatever the size of the set.
        let ids: Vec<String> = page.todo.iter().map(|i| i.id.clone()).collect();
        let done: HashSet<String> = if ids.is_empty() {
            HashSet::new()
        } else {
            platform
                .entities_with_vectors(set_id, &ids)
                .await?
                .into_iter()
                .collect()
        };
        let before = page.todo.len();
        page.todo.retain(|item| !done.contains(&item.id));
        page.existing = before - page.todo.len();
        Ok(page)
    }
}

/// Online embedding of texts and images outside the HTTP server (`cliptune demo query`):
/// L2-normalised vectors in input order, `(texts, images)`, one device batch, through the
/// same reader and encoder as every other path.
pub async fn embed_online(
    worker: &Env,
    model: &Model,
    texts: Vec<String>,
    images: Vec<Vec<u8>>,
) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
    let dir = local_weights_for(worker, model).await?;
    let (id, name) = (model.id.clone(), model.name.clone());
    let (pixels, ids, prepared) = tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        let prepared = Prepared::open(id, name, dir, false)?;
        let mut inputs = images
            .par_iter()
            .enumerate()
            .map(|(i, b)| {
                prepared
                    .image(b, &format!("images[{i}]"))
                    .map_err(|e| WorkerError::input(format!("images[{i}]"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        inputs.extend(texts.iter().map(|t| prepared.text(t)));
        // Each tower keeps its inputs' order, which is all the answer needs.
        let split = infer::Split::of(inputs);
        Ok::<_, WorkerError>((split.images, split.texts, prepared))
    })
    .await
    .map_err(|e| WorkerError::Internal(format!("preprocessing: {e}")))??;
    let precision = worker.embed_precision;
    let (img, txt) = worker
        .device
        .run(move |dev| {
            let clip = dev.model(&prepared.dir)?;
            infer::encode(&clip, precision, pixels, ids, true)
        })
        .await??;
    Ok((txt, img))
}
