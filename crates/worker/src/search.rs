//! Semantic search: top-k items of a model's feature set by cosine with a query vector,
//! with what a person needs to see them (name, caption, image). Shared by `POST /search`
//! (query embedded by the online batcher) and `cliptune search` (query embedded in-process
//! with [`crate::infer::LocalEncoder`]); both encode through [`crate::infer`].

use crate::ctx::Env;
use crate::error::{Result, WorkerError};
use crate::nodes::embed::{embed_online, resolve_model};
use cliptune_store::{FeatureSet, ItemKind, Model, NearestQuery, Platform, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Instant;

/// Largest `k` a search accepts (the store's rule, one for every backend).
pub const MAX_K: usize = cliptune_store::rules::MAX_NEAREST_K;

/// One result.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hit {
    /// 1 for the best match.
    pub rank: usize,
    pub item_id: String,
    pub dataset_id: String,
    /// Cosine similarity in [-1, 1].
    pub score: f32,
    /// File name (absent when the item was deleted after it was embedded).
    pub name: Option<String>,
    pub filename: Option<String>,
    /// `image`, `text`, `prompt` or `other`.
    pub kind: Option<String>,
    pub caption: Option<String>,
    /// The item whose image shows this result (the item itself, or a prompt item's image).
    pub image_item_id: Option<String>,
}

/// The feature set holding `model_id`'s vectors, if it has one.
pub async fn find_feature_set(
    platform: &dyn Platform,
    model_id: &str,
) -> Result<Option<FeatureSet>> {
    Ok(platform
        .list_feature_sets()
        .await?
        .into_iter()
        .find(|fs| fs.model_id.as_deref() == Some(model_id)))
}

/// The feature set holding `model`'s vectors, or an error saying how to make one.
pub async fn feature_set(platform: &dyn Platform, model: &Model) -> Result<FeatureSet> {
    find_feature_set(platform, &model.id)
        .await?
        .ok_or_else(|| {
            WorkerError::input(
                "model",
                format!(
                    "model {} ({}) has no vectors yet: embed a dataset with it first (cliptune embed-dataset --model {} --dataset D, or POST /embed {{\"dataset_id\"}})",
                    model.name, model.id, model.name
                ),
            )
        })
}

/// Checks `k` and the filter's shape before any work: the store's rule, so the worker and
/// every backend refuse the same queries with the same words.
pub fn check_query(k: usize, filter: Option<&Value>, dataset: Option<&str>) -> Result<()> {
    Ok(cliptune_store::rules::check_nearest(k, filter, dataset)?)
}

/// Top-k items of `set` for `vector` (restricted to `dataset_id` and the DQL `filter`),
/// best first, with their names and captions.
pub async fn nearest(
    platform: &dyn Platform,
    set: &FeatureSet,
    vector: Vec<f32>,
    dataset_id: Option<&str>,
    k: usize,
    filter: Option<Value>,
) -> Result<Vec<Hit>> {
    check_query(k, filter.as_ref(), dataset_id)?;
    let neighbors = platform
        .nearest(
            &set.id,
            &NearestQuery {
                vector,
                k,
                dataset_id: dataset_id.map(String::from),
                filter,
            },
        )
        .await
        .map_err(|e| match e {
            // The DQL filter is the user's; say which input was wrong.
            StoreError::Invalid { .. } => WorkerError::input("filter", e.to_string()),
            e => e.into(),
        })?;
    let mut hits = Vec::with_capacity(neighbors.len());
    for (i, n) in neighbors.into_iter().enumerate() {
        let mut hit = Hit {
            rank: i + 1,
            item_id: n.entity_id.clone(),
            dataset_id: n.dataset_id,
            score: n.score,
            name: None,
            filename: None,
            kind: None,
            caption: None,
            image_item_id: None,
        };
        if let Ok(item) = platform.get_item(&n.entity_id).await {
            hit.name = Some(item.name.clone());
            hit.filename = Some(item.filename.clone());
            hit.kind = Some(
                match item.kind() {
                    ItemKind::Image => "image",
                    ItemKind::Text => "text",
                    ItemKind::Prompt => "prompt",
                    ItemKind::Other => "other",
                }
                .into(),
            );
            // A caption that cannot be resolved (a broken prompt item) still shows the hit.
            match platform.caption(&item).await {
                Ok(c) => {
                    hit.caption = c.caption;
                    hit.image_item_id = c.image_item.map(|i| i.id);
                }
                Err(_) => hit.caption = item.own_caption().map(String::from),
            }
        }
        hits.push(hit);
    }
    Ok(hits)
}

/// A text query on a worker outside the HTTP server (`cliptune demo query`): `model` (default:
/// the "Newest CLIP model" of the only pipeline that has one), its [`feature_set`], the text
/// embedded on the worker's device, then [`nearest`] in `dataset`. Returns the model too.
pub async fn search_text(
    env: &Env,
    model: Option<&str>,
    text: &str,
    dataset: Option<&str>,
    k: usize,
) -> Result<(Model, Vec<Hit>)> {
    let platform = &**env.platform();
    let model = resolve_model(platform, model, None, None).await?;
    let dataset_id = match dataset {
        Some(d) => Some(platform.resolve_dataset(d).await?.id),
        None => None,
    };
    let set = feature_set(platform, &model).await?;
    let (mut texts, _) = embed_online(env, &model, vec![text.to_string()], Vec::new()).await?;
    let hits = nearest(
        platform,
        &set,
        texts.remove(0),
        dataset_id.as_deref(),
        k,
        None,
    )
    .await?;
    Ok((model, hits))
}

/// Milliseconds since `t`, for timing fields.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
