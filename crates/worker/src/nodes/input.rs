//! The pieces node inputs are made of: entity references in every form Dataloop sends them,
//! JSON objects that may arrive as strings, and [`parse`], which names the field at fault.

use crate::error::{Result, WorkerError};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// Reads a node's typed input (`null` counts as `{}`); the error names the field at fault
/// (`items[2]`, `model`), or the missing one.
pub fn parse<T: DeserializeOwned>(input: &Value) -> Result<T> {
    let input = match input {
        Value::Null => Value::Object(Map::new()),
        v @ Value::Object(_) => v.clone(),
        other => {
            return Err(WorkerError::input(
                "input",
                format!("must be a JSON object of named inputs, got {other}"),
            ))
        }
    };
    serde_path_to_error::deserialize(input).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        match (path.as_str(), missing) {
            (".", Some(field)) => WorkerError::input(field, "missing"),
            (".", None) => WorkerError::input("input", message),
            _ => WorkerError::input(path, message),
        }
    })
}

/// The id (or name) in an entity reference: a bare non-empty string, or an object with one
/// of `keys` (or `id`) naming it.
pub(crate) fn ref_id(value: &Value, keys: &[&str]) -> std::result::Result<String, String> {
    let found = match value {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Object(m) => keys
            .iter()
            .chain(["id"].iter())
            .find_map(|k| m.get(*k).and_then(Value::as_str))
            .map(|s| s.trim().to_string()),
        _ => None,
    };
    match found {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(format!(
            "expected an id string or an object with {} (got {value})",
            keys.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    }
}

/// The schema of a reference to `what` ("a model"): `"<id or name>"` or `{"<key>": "<id>"}`.
fn ref_schema(key: &str, what: &str) -> RefOr<Schema> {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    OneOfBuilder::new()
        .item(string().description(Some("Its id or name")))
        .item(
            ObjectBuilder::new()
                .property(key, string())
                .property("id", string())
                .description(Some(format!("Dataloop's form: `{{\"{key}\": id}}`"))),
        )
        .description(Some(format!("{what}: its id or name, or `{{\"{key}\"}}`")))
        .into()
}

macro_rules! entity_refs {
    ($($(#[$doc:meta])* $name:ident as $schema:literal => $key:literal, $what:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(r: $name) -> String {
                r.0
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let value = Value::deserialize(d)?;
                ref_id(&value, &[$key]).map(Self).map_err(D::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ref_schema($key, $what)
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($schema)
            }
        }
    )*};
}

entity_refs! {
    /// A model: `"<id or name>"` or `{"model_id"}`.
    ModelRef as "ModelReference" => "model_id", "A model";
    /// A dataset: `"<id or name>"` or `{"dataset_id"}`.
    DatasetRef as "DatasetReference" => "dataset_id", "A dataset";
    /// An item: `"<id>"` or `{"item_id"}`.
    ItemRef as "ItemReference" => "item_id", "An item";
    /// A pipeline: `"<id or name>"` or `{"pipeline_id"}`.
    PipelineRef as "PipelineReference" => "pipeline_id", "A pipeline";
}

/// One item or a non-empty list of them (dtlpy's `embed_items` takes "a list of items
/// (or single)").
#[derive(Debug, Clone)]
pub struct ItemList(pub Vec<ItemRef>);

impl<'de> Deserialize<'de> for ItemList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ItemList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a non-empty list of {\"item_id\"} objects, or one")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<ItemList, A::Error> {
                let mut items = Vec::new();
                // Each element through the sequence, so an error names `items[i]`.
                while let Some(item) = seq.next_element::<ItemRef>()? {
                    items.push(item);
                }
                if items.is_empty() {
                    return Err(A::Error::custom(
                        "must be a non-empty list of {\"item_id\"} objects",
                    ));
                }
                Ok(ItemList(items))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<ItemList, E> {
                ItemRef::deserialize(serde::de::value::StrDeserializer::new(s))
                    .map(|one| ItemList(vec![one]))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<ItemList, A::Error> {
                ItemRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|one| ItemList(vec![one]))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl utoipa::PartialSchema for ItemList {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ArrayBuilder::new()
                    .items(ItemRef::schema())
                    .min_items(Some(1)),
            )
            .item(ItemRef::schema())
            .description(Some("Items: a non-empty list of `{\"item_id\"}`, or one"))
            .into()
    }
}

impl utoipa::ToSchema for ItemList {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ItemList")
    }
}

/// A JSON object; `null` is `None`. Dataloop's Json ports sometimes carry the object as a
/// JSON string, which is read too.
pub fn json_object<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Map<String, Value>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Object(o) => Ok(Some(o)),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(o)) => Ok(Some(o)),
            _ => Err(D::Error::custom("must be a JSON object")),
        },
        other => Err(D::Error::custom(format!(
            "must be a JSON object, got {other}"
        ))),
    }
}

/// A string that is not blank, as given; `null` is `None`.
pub fn non_blank<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if !s.trim().is_empty() => Ok(Some(s)),
        other => Err(D::Error::custom(format!(
            "must be a non-empty string, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_in_every_dataloop_form() {
        let id = "0123456789abcdef01234567";
        for v in [json!(id), json!({"model_id": id}), json!({"id": id})] {
            assert_eq!(serde_json::from_value::<ModelRef>(v).unwrap(), id);
        }
        let err = serde_json::from_value::<ModelRef>(json!(3)).unwrap_err();
        assert!(err.to_string().contains("`model_id`"), "{err}");
        assert!(serde_json::from_value::<ModelRef>(json!({"dataset_id": id})).is_err());
        assert!(serde_json::from_value::<ModelRef>(json!("")).is_err());
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct In {
            model: ModelRef,
            #[serde(default)]
            items: Option<ItemList>,
        }
        let field = |v: Value| match parse::<In>(&v).unwrap_err() {
            WorkerError::Input { field, .. } => field,
            e => panic!("{e}"),
        };
        assert_eq!(field(json!({})), "model");
        assert_eq!(field(json!({"model": 3})), "model");
        assert_eq!(field(json!({"model": "m", "items": ["a", 3]})), "items[1]");
        assert_eq!(field(json!({"model": "m", "items": []})), "items");
        assert_eq!(field(json!([])), "input");
        let err = parse::<In>(&json!({"model": "m", "modle": 1})).unwrap_err();
        assert!(err.to_string().contains("modle"), "{err}");
        let one = parse::<In>(&json!({"model": {"model_id": "m"}, "items": {"item_id": "a"}}));
        assert_eq!(one.unwrap().items.unwrap().0, [ItemRef("a".into())]);
        let bare = parse::<In>(&json!({"model": "m", "items": "a"})).unwrap();
        assert_eq!(bare.items.unwrap().0[0], "a");
    }
}
