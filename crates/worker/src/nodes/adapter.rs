//! The model adapter's embedding functions, as dataloop.json's models module declares them
//! (and Dataloop's CLIP adapter serves them): `embed_items(items)` and
//! `embed_dataset(dataset, filters)`, with the model (the adapter's init input) as `model`.
//! Both run the embedding node ([`super::embed`]); only their inputs and outputs differ.

use super::embed::{self, EmbedInput, EmbedTarget};
use super::input::{json_object, parse, DatasetRef, ItemList, ModelRef, PipelineRef};
use crate::ctx::NodeCtx;
use crate::error::{Result, WorkerError};
use serde::Deserialize;
use serde_json::{json, Value};

/// `embed_items`: item refs (`[{"item_id"}, ...]`, or one item), the model (default: the
/// pipeline's "Newest CLIP model").
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedItemsInput {
    #[serde(alias = "item_ids")]
    pub items: ItemList,
    #[serde(default)]
    pub model: Option<ModelRef>,
    /// Whose "Newest CLIP model" is the default model.
    #[serde(default, alias = "pipeline_id")]
    pub pipeline: Option<PipelineRef>,
}

impl EmbedItemsInput {
    pub fn parse(input: &Value) -> Result<Self> {
        parse(input)
    }
}

/// `embed_dataset`: the dataset, `filters` (a bare DQL filter or a whole DQL body as dtlpy
/// sends `Filters.prepare()`; stored as given, the store reads either), the model.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedDatasetInput {
    // `dataset_id`: what `embed_dataset` took when it was an alias of `embed`.
    #[serde(alias = "dataset_id")]
    pub dataset: DatasetRef,
    /// A DQL filter or body; `{}` or absent: every item.
    #[serde(default, alias = "filter", deserialize_with = "json_object")]
    #[schema(value_type = Option<Object>)]
    pub filters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub model: Option<ModelRef>,
    #[serde(default, alias = "pipeline_id")]
    pub pipeline: Option<PipelineRef>,
}

impl EmbedDatasetInput {
    pub fn parse(input: &Value) -> Result<Self> {
        let mut input: Self = parse(input)?;
        input.filters = input.filters.filter(|f| !f.is_empty());
        if let Some(f) = &input.filters {
            cliptune_store::dql::Filter::parse_given(Some(&Value::Object(f.clone())))
                .map_err(|e| WorkerError::input("filters", e.to_string()))?;
        }
        Ok(input)
    }
}

impl From<EmbedItemsInput> for EmbedInput {
    fn from(i: EmbedItemsInput) -> Self {
        Self {
            target: EmbedTarget::Items(i.items.0.into_iter().map(String::from).collect()),
            model: i.model.map(String::from),
            pipeline: i.pipeline.map(String::from),
        }
    }
}

impl From<EmbedDatasetInput> for EmbedInput {
    fn from(i: EmbedDatasetInput) -> Self {
        Self {
            target: EmbedTarget::Dataset {
                id: i.dataset.into(),
                filter: i.filters.map(Value::Object),
            },
            model: i.model.map(String::from),
            pipeline: i.pipeline.map(String::from),
        }
    }
}

/// Output ports `items` (the refs of the items that have a vector, in input order) and
/// `json` (their vectors, in the same order), plus the embedding node's report. An item
/// that cannot be read is listed under `failed` rather than failing the others.
pub async fn embed_items(input: EmbedItemsInput, ctx: &NodeCtx) -> Result<Value> {
    let ids: Vec<String> = input.items.0.iter().map(|i| i.0.clone()).collect();
    let mut report = embed::run(input.into(), ctx).await?;
    let set = report["feature_set_id"]
        .as_str()
        .ok_or_else(|| WorkerError::Internal("the embed node named no feature set".into()))?
        .to_string();
    let failed: std::collections::HashSet<String> = report["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["item_id"].as_str().map(String::from))
        .collect();
    let platform = ctx.env.platform();
    let (mut items, mut vectors) = (Vec::new(), Vec::new());
    for id in ids.iter().filter(|id| !failed.contains(*id)) {
        let v = platform.get_vector(&set, id).await?;
        items.push(json!({"item_id": id}));
        vectors.push(v.value);
    }
    report["items"] = Value::Array(items);
    report["json"] = json!(vectors);
    Ok(report)
}

/// No output ports (as the adapter's); the embedding node's report.
pub async fn embed_dataset(input: EmbedDatasetInput, ctx: &NodeCtx) -> Result<Value> {
    embed::run(input.into(), ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_in_every_form_dtlpy_sends() {
        let i = EmbedItemsInput::parse(
            &json!({"items": [{"item_id": "a"}, "b"], "model": {"model_id": "m"}}),
        )
        .unwrap();
        assert_eq!(i.items.0, ["a", "b"]);
        assert_eq!(i.model.as_deref(), Some("m"));
        let one = EmbedItemsInput::parse(&json!({"items": {"item_id": "a"}})).unwrap();
        assert_eq!(one.items.0, ["a"]);
        for bad in [json!({"items": []}), json!({}), json!({"items": [3]})] {
            assert!(EmbedItemsInput::parse(&bad).is_err(), "{bad}");
        }
        let err = EmbedItemsInput::parse(&json!({"items": ["a"], "modle": "m"})).unwrap_err();
        assert!(err.to_string().contains("modle"), "{err}");
    }

    #[test]
    fn dataset_filters_bare_or_whole_body_stored_as_given() {
        let body = json!({"filter": {"$and": [{"hidden": false}, {"$or": [{"metadata": {"system": {"tags": {"train": true}}}}]}, {"type": "file"}]},
                          "page": 0, "pageSize": 1000, "resource": "items"});
        let i = EmbedDatasetInput::parse(&json!({"dataset": {"dataset_id": "d"}, "filters": body}))
            .unwrap();
        assert_eq!(
            i.filters.map(Value::Object),
            Some(body),
            "never wrapped again"
        );
        let s = EmbedDatasetInput::parse(&json!({"dataset": "d", "filters": "{\"dir\": \"/a\"}"}))
            .unwrap();
        assert_eq!(s.filters.map(Value::Object), Some(json!({"dir": "/a"})));
        let none = EmbedDatasetInput::parse(&json!({"dataset_id": "d", "filters": null})).unwrap();
        assert_eq!(none.dataset, "d");
        assert!(none.filters.is_none());
        let err = EmbedDatasetInput::parse(&json!({"dataset": "d", "filters": {"$nope": 1}}))
            .unwrap_err();
        assert!(err.to_string().contains("filters"), "{err}");
        assert!(EmbedDatasetInput::parse(&json!({"filters": {}})).is_err());
    }
}
