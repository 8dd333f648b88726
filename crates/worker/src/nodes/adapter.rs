//! The model adapter's embedding functions, as dataloop.json's models module declares them
//! (and Dataloop's CLIP adapter serves them): `embed_items(items)` and
//! `embed_dataset(dataset, filters)`, with the model (the adapter's init input) as `model`.
//! Both run the embedding node ([`super::embed`]); only their inputs and outputs differ.

use super::embed::{self, EmbedInput, EmbedTarget};
use super::entity_ref;
use crate::ctx::NodeCtx;
use crate::error::{Result, WorkerError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Reads a typed input; serde's message names the unknown or mistyped field.
fn typed<T: serde::de::DeserializeOwned>(input: &Value) -> Result<T> {
    let input = match input {
        Value::Null => Value::Object(Map::new()),
        v => v.clone(),
    };
    serde_json::from_value(input).map_err(|e| WorkerError::input("input", e.to_string()))
}

fn optional_ref(value: Option<&Value>, field: &str, key: &str) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => entity_ref(v, field, &[key]).map(Some),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItems {
    #[serde(alias = "item_ids")]
    items: Value,
    #[serde(default)]
    model: Option<Value>,
    #[serde(default, alias = "pipeline_id")]
    pipeline: Option<Value>,
}

/// `embed_items`: item refs (`[{"item_id"}, ...]`, or one item), the model (default: the
/// pipeline's "Newest CLIP model").
#[derive(Debug, Clone)]
pub struct EmbedItemsInput {
    pub items: Vec<String>,
    pub model: Option<String>,
    pub pipeline: Option<String>,
}

impl EmbedItemsInput {
    pub fn parse(input: &Value) -> Result<Self> {
        let raw: RawItems = typed(input)?;
        let list = match raw.items {
            Value::Array(list) if !list.is_empty() => list,
            // dtlpy's embed_items takes "a list of items (or single)".
            one @ (Value::Object(_) | Value::String(_)) => vec![one],
            other => {
                return Err(WorkerError::input(
                    "items",
                    format!("must be a non-empty list of {{\"item_id\"}} objects, got {other}"),
                ))
            }
        };
        Ok(Self {
            items: list
                .iter()
                .enumerate()
                .map(|(i, v)| entity_ref(v, &format!("items[{i}]"), &["item_id"]))
                .collect::<Result<_>>()?,
            model: optional_ref(raw.model.as_ref(), "model", "model_id")?,
            pipeline: optional_ref(raw.pipeline.as_ref(), "pipeline", "pipeline_id")?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    // `dataset_id`: what `embed_dataset` took when it was an alias of `embed`.
    #[serde(alias = "dataset_id")]
    dataset: Value,
    #[serde(default, alias = "filter")]
    filters: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
    #[serde(default, alias = "pipeline_id")]
    pipeline: Option<Value>,
}

/// `embed_dataset`: the dataset, `filters` (a bare DQL filter or a whole DQL body as dtlpy
/// sends `Filters.prepare()`; stored as given, the store reads either), the model.
#[derive(Debug, Clone)]
pub struct EmbedDatasetInput {
    pub dataset: String,
    pub filters: Option<Value>,
    pub model: Option<String>,
    pub pipeline: Option<String>,
}

impl EmbedDatasetInput {
    pub fn parse(input: &Value) -> Result<Self> {
        let raw: RawDataset = typed(input)?;
        let filters = match raw.filters {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(f @ Value::Object(_)) => Some(f),
            // A Json port may carry the object as a string.
            Some(Value::String(s)) => Some(
                serde_json::from_str::<Value>(&s)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| WorkerError::input("filters", "must be a DQL object"))?,
            ),
            Some(other) => {
                return Err(WorkerError::input(
                    "filters",
                    format!("must be a DQL filter or body, got {other}"),
                ))
            }
        };
        if let Some(f) = &filters {
            cliptune_store::dql::Filter::parse_given(Some(f))
                .map_err(|e| WorkerError::input("filters", e.to_string()))?;
        }
        Ok(Self {
            dataset: entity_ref(&raw.dataset, "dataset", &["dataset_id"])?,
            filters,
            model: optional_ref(raw.model.as_ref(), "model", "model_id")?,
            pipeline: optional_ref(raw.pipeline.as_ref(), "pipeline", "pipeline_id")?,
        })
    }
}

impl From<EmbedItemsInput> for EmbedInput {
    fn from(i: EmbedItemsInput) -> Self {
        Self {
            target: EmbedTarget::Items(i.items),
            model: i.model,
            pipeline: i.pipeline,
        }
    }
}

impl From<EmbedDatasetInput> for EmbedInput {
    fn from(i: EmbedDatasetInput) -> Self {
        Self {
            target: EmbedTarget::Dataset {
                id: i.dataset,
                filter: i.filters,
            },
            model: i.model,
            pipeline: i.pipeline,
        }
    }
}

/// Output ports `items` (the refs of the items that have a vector, in input order) and
/// `json` (their vectors, in the same order), plus the embedding node's report. An item
/// that cannot be read is listed under `failed` rather than failing the others.
pub async fn embed_items(input: EmbedItemsInput, ctx: &NodeCtx) -> Result<Value> {
    let ids = input.items.clone();
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
        assert_eq!(i.items, ["a", "b"]);
        assert_eq!(i.model.as_deref(), Some("m"));
        let one = EmbedItemsInput::parse(&json!({"items": {"item_id": "a"}})).unwrap();
        assert_eq!(one.items, ["a"]);
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
        assert_eq!(i.filters.as_ref(), Some(&body), "never wrapped again");
        let s = EmbedDatasetInput::parse(&json!({"dataset": "d", "filters": "{\"dir\": \"/a\"}"}))
            .unwrap();
        assert_eq!(s.filters, Some(json!({"dir": "/a"})));
        let none = EmbedDatasetInput::parse(&json!({"dataset_id": "d", "filters": null})).unwrap();
        assert_eq!(none.dataset, "d");
        assert!(none.filters.is_none());
        let err = EmbedDatasetInput::parse(&json!({"dataset": "d", "filters": {"$nope": 1}}))
            .unwrap_err();
        assert!(err.to_string().contains("filters"), "{err}");
        assert!(EmbedDatasetInput::parse(&json!({"filters": {}})).is_err());
    }
}
