//! DQL: the part of Dataloop's query language used to pick items.
//!
//! A filter is parsed once into a [`Filter`], which can both test an [`Item`] in memory
//! ([`Filter::matches`], used by fakes and remote-result checks) and compile to an SQLite
//! `WHERE` clause over the embedded store's `items` table ([`Filter::to_sql`]). Both follow
//! the same MongoDB-like semantics, and a test checks they agree:
//!
//! - `{"field": value}` is equality; several keys in one object are ANDed.
//! - operators `$and`, `$or`, `$not` (top level or per field), `$eq`, `$ne`, `$in`, `$nin`,
//!   `$gt`, `$gte`, `$lt`, `$lte`, `$exists`, `$glob`. Anything else is a validation error
//!   naming the operator.
//! - fields: `id`, `datasetId`, `dir`, `filename`, `name`, `type`, `hidden`, `description`,
//!   `createdAt`, `updatedAt`, `annotationsCount` and nested `metadata.*` paths.
//! - `filename`, `name` and `dir` compared to a string with `*`, `?` or `[` match it as a
//!   glob (`*` also crosses `/`, as SQLite's GLOB), as Dataloop's SDK does.
//! - `$ne` / `$nin` also match items without the field; comparisons only match values of
//!   the same JSON type (numbers with numbers, strings with strings, by byte order).
//! - `{"field": null}` matches a field that is `null` or absent, as in MongoDB (dtlpy's
//!   `Dataset.get_items_missing_ml_subset` relies on it: `metadata.system.tags.train = None`
//!   selects items with no subset).
//!
//! ## Nested objects under `metadata`
//!
//! `{"metadata": {"system": {"tags": {"train": true}}}}` means the same as
//! `{"metadata.system.tags.train": true}`: an object without operator keys below `metadata`
//! is a path into the item, and every leaf of it is one condition (ANDed). In MongoDB proper
//! such an object would be an exact equality on the whole sub-document, which is not what
//! Dataloop does, and the reason is in its own defaults:
//!
//! - The "CLIP Fine-tuning" template (dataloop-ai-apps/pipeline-templates
//!   `mlops/smart_search/clip_train_and_embed/dataloop.json`, v1.0.98) and the Active
//!   Learning app (`pipeline_configs/train_subset_filter.json`) ship their train/validation
//!   subsets as `{"filter": {"$and": [{"hidden": false}, {"$or": [{"metadata": {"system":
//!   {"tags": {"train": true}}}}]}, {"type": "file"}]}}`; the model adapter downloads each
//!   subset with `Filters(custom_filter=...)` and raises "No items downloaded for subset"
//!   when it is empty (dtlpy `ml/base_model_adapter.py`, `prepare_data`).
//! - Every item's `metadata.system` also holds `mimetype`, `size`, ... (set by the gate on
//!   upload), and dtlpy's `Item.assign_subset` writes `tags = {train: true, validation: null,
//!   test: null}`. An exact sub-document equality would therefore select no item at all and
//!   the template could never train; Dataloop's own scripts use this form to pick their test
//!   subsets. So the gate compares leaves, and so does this module: an item tagged `train`
//!   is selected whatever else its metadata and its tags hold.
//!
//! This is inferred from those sources, not observed on a live gate (docs/dataloop.md lists
//! it among the unconfirmed points). Operator objects may appear at any depth
//! (`{"metadata": {"user": {"score": {"$gt": 3}}}}`); an object mixing operator and field
//! keys, an empty object, and a condition on `metadata` as a whole are validation errors.
//!
//! ## Bodies
//!
//! Dataloop stores and passes around whole query bodies (`{"filter": ..., "resource":
//! "items", "page": 0, "pageSize": 1000}`, or only `{"filter": ...}` as the template's
//! defaults): dtlpy's `Filters(custom_filter=x)` treats `x` as a body exactly when it has a
//! `filter` key. [`body_filter`] applies the same rule; the stores accept either form
//! wherever they take a filter, and subsets are stored as given. [`Filter::parse`] itself
//! takes only the bare filter, so a body nested inside a body (`{"filter": {"filter": ...}}`)
//! is refused rather than read as a field named `filter`.

use crate::entities::Item;
use crate::error::{Result, StoreError};
use rusqlite::types::Value as SqlValue;
use serde_json::{Map, Value};

/// Dataloop's default item filter: not hidden, type file.
pub fn default_filter() -> Value {
    serde_json::json!({"$and": [{"hidden": false}, {"type": "file"}]})
}

/// True when `v` is a whole DQL body rather than a bare filter: an object with a `filter`
/// key (dtlpy's rule in `Filters.__generate_custom_query`). No item field is named `filter`,
/// so the two never overlap.
pub fn is_body(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.contains_key("filter"))
}

/// The bare filter of a bare filter or a whole DQL body, unchecked (see [`body_filter`]).
pub fn filter_from_body(body: &Value) -> Value {
    if is_body(body) {
        body["filter"].clone()
    } else {
        body.clone()
    }
}

/// Keys of a body that only steer paging and scoping, which the caller of a store decides;
/// they are ignored here.
const BODY_IGNORED: &[&str] = &["page", "pageSize", "sort", "context", "systemSpace"];

/// The bare item filter of a bare filter or a whole DQL body (`{"filter": ..., "resource":
/// "items", ...}`). A body must query `items` (when it says), its `filter` must be an object,
/// and a `join` (items by their annotations) is refused: neither store evaluates it, and
/// ignoring it would select other items than Dataloop does.
pub fn body_filter(given: &Value) -> Result<Value> {
    let Some(m) = given.as_object().filter(|_| is_body(given)) else {
        return Ok(given.clone());
    };
    for (k, v) in m {
        match k.as_str() {
            "filter" => {
                if !v.is_object() {
                    return Err(bad(format!("the body's filter must be an object, got {v}")));
                }
            }
            "resource" => {
                if v != "items" {
                    return Err(bad(format!(
                        "the body queries resource {v}; an item filter needs \"items\""
                    )));
                }
            }
            "join" => {
                return Err(bad(
                    "a join (items by their annotations) is not supported in an item filter",
                ))
            }
            k if BODY_IGNORED.contains(&k) => {}
            other => {
                return Err(bad(format!(
                    "unknown key {other:?} in a DQL body (known: filter, resource, join, {})",
                    BODY_IGNORED.join(", ")
                )))
            }
        }
    }
    Ok(m["filter"].clone())
}

#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// A top-level item property stored in its own column.
    Column(Column),
    /// `metadata.a.b` -> `["a", "b"]`.
    Metadata(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    DatasetId,
    Dir,
    Filename,
    Name,
    Type,
    Hidden,
    Description,
    CreatedAt,
    UpdatedAt,
    AnnotationsCount,
}

impl Column {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "id" => Self::Id,
            "datasetId" => Self::DatasetId,
            "dir" => Self::Dir,
            "filename" => Self::Filename,
            "name" => Self::Name,
            "type" => Self::Type,
            "hidden" => Self::Hidden,
            "description" => Self::Description,
            "createdAt" => Self::CreatedAt,
            "updatedAt" => Self::UpdatedAt,
            "annotationsCount" => Self::AnnotationsCount,
            _ => return None,
        })
    }

    fn json_name(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::DatasetId => "datasetId",
            Self::Dir => "dir",
            Self::Filename => "filename",
            Self::Name => "name",
            Self::Type => "type",
            Self::Hidden => "hidden",
            Self::Description => "description",
            Self::CreatedAt => "createdAt",
            Self::UpdatedAt => "updatedAt",
            Self::AnnotationsCount => "annotationsCount",
        }
    }

    /// The SQL column of the embedded store's `items` table.
    fn sql(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::DatasetId => "dataset_id",
            Self::Dir => "dir",
            Self::Filename => "filename",
            Self::Name => "name",
            Self::Type => "type",
            Self::Hidden => "hidden",
            Self::Description => "description",
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
            Self::AnnotationsCount => "annotations_count",
        }
    }

    fn globbable(self) -> bool {
        matches!(self, Self::Dir | Self::Filename | Self::Name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    True,
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Eq(Field, Value),
    Cmp(Field, CmpOp, Value),
    Exists(Field, bool),
    Glob(Field, String),
}

const OPERATORS: &str = "$and $or $not $eq $ne $in $nin $gt $gte $lt $lte $exists $glob";

fn bad(message: impl Into<String>) -> StoreError {
    StoreError::invalid("DQL filter", message)
}

impl Filter {
    /// Parses a DQL filter; `null` or `{}` matches everything.
    pub fn parse(json: &Value) -> Result<Self> {
        match json {
            Value::Null => Ok(Self::True),
            Value::Object(map) => parse_object(map),
            other => Err(bad(format!("a filter must be a JSON object, got {other}"))),
        }
    }

    /// `Some(filter)` parsed, or Dataloop's default filter for `None`.
    pub fn parse_or_default(json: Option<&Value>) -> Result<Self> {
        match json {
            Some(v) => Self::parse(v),
            None => Self::parse(&default_filter()),
        }
    }

    /// What a store does with a filter it is given: a bare filter or a whole body
    /// ([`body_filter`]), Dataloop's default for `None`.
    pub fn parse_given(given: Option<&Value>) -> Result<Self> {
        match given {
            Some(v) => Self::parse(&body_filter(v)?),
            None => Self::parse(&default_filter()),
        }
    }

    /// Evaluates the filter on an item.
    pub fn matches(&self, item: &Item) -> bool {
        let json = serde_json::to_value(item).unwrap_or(Value::Null);
        self.matches_json(&json)
    }

    /// Evaluates the filter on an item's JSON (camelCase, as Dataloop sends it).
    pub fn matches_json(&self, item: &Value) -> bool {
        match self {
            Self::True => true,
            Self::And(fs) => fs.iter().all(|f| f.matches_json(item)),
            Self::Or(fs) => fs.iter().any(|f| f.matches_json(item)),
            Self::Not(f) => !f.matches_json(item),
            Self::Eq(field, Value::Null) => lookup(item, field).is_none_or(Value::is_null),
            Self::Eq(field, v) => lookup(item, field).is_some_and(|x| json_eq(x, v)),
            Self::Cmp(field, op, v) => lookup(item, field).is_some_and(|x| {
                let ord = match (x, v) {
                    (Value::Number(a), Value::Number(b)) => {
                        a.as_f64().partial_cmp(&b.as_f64()).filter(|_| true)
                    }
                    (Value::String(a), Value::String(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
                    _ => None,
                };
                ord.is_some_and(|o| match op {
                    CmpOp::Gt => o.is_gt(),
                    CmpOp::Gte => o.is_ge(),
                    CmpOp::Lt => o.is_lt(),
                    CmpOp::Lte => o.is_le(),
                })
            }),
            Self::Exists(field, want) => lookup(item, field).is_some() == *want,
            Self::Glob(field, pattern) => lookup(item, field)
                .and_then(Value::as_str)
                .is_some_and(|s| glob_match(pattern, s)),
        }
    }

    /// A `WHERE` expression over the `items` table (never NULL: always 0 or 1) and its
    /// parameters, bound positionally as `?`.
    pub fn to_sql(&self) -> (String, Vec<SqlValue>) {
        let mut params = Vec::new();
        let sql = self.sql(&mut params);
        (sql, params)
    }

    fn sql(&self, p: &mut Vec<SqlValue>) -> String {
        match self {
            Self::True => "1".into(),
            Self::And(fs) if fs.is_empty() => "1".into(),
            Self::Or(fs) if fs.is_empty() => "0".into(),
            Self::And(fs) => join(fs, " AND ", p),
            Self::Or(fs) => join(fs, " OR ", p),
            Self::Not(f) => format!("(NOT {})", f.sql(p)),
            Self::Eq(field, v) => eq_sql(field, v, p),
            Self::Cmp(field, op, v) => {
                let o = match op {
                    CmpOp::Gt => ">",
                    CmpOp::Gte => ">=",
                    CmpOp::Lt => "<",
                    CmpOp::Lte => "<=",
                };
                typed_sql(field, v, o, p)
            }
            Self::Exists(field, want) => {
                let present = match field {
                    Field::Column(Column::Description) => "(description IS NOT NULL)".to_string(),
                    Field::Column(_) => "1".to_string(),
                    Field::Metadata(path) => format!(
                        "(json_type(metadata, {}) IS NOT NULL)",
                        sql_literal(&json_path(path))
                    ),
                };
                if *want {
                    present
                } else {
                    format!("(NOT {present})")
                }
            }
            Self::Glob(field, pattern) => {
                let (expr, kind) = field_sql(field);
                p.push(SqlValue::Text(pattern.clone()));
                format!("IFNULL(({kind} = 'text' AND {expr} GLOB ?), 0)")
            }
        }
    }
}

fn join(fs: &[Filter], sep: &str, p: &mut Vec<SqlValue>) -> String {
    let parts: Vec<String> = fs.iter().map(|f| f.sql(p)).collect();
    format!("({})", parts.join(sep))
}

/// The SQL value expression of a field and an SQL expression giving its JSON type
/// (`'text'`, `'integer'`, `'real'`, `'true'`, `'false'`, `'null'`, ... or NULL when absent).
fn field_sql(field: &Field) -> (String, String) {
    match field {
        Field::Metadata(path) => {
            let jp = sql_literal(&json_path(path));
            (
                format!("json_extract(metadata, {jp})"),
                format!("json_type(metadata, {jp})"),
            )
        }
        Field::Column(Column::Hidden) => (
            "hidden".into(),
            "(CASE hidden WHEN 1 THEN 'true' ELSE 'false' END)".into(),
        ),
        Field::Column(Column::AnnotationsCount) => ("annotations_count".into(), "'integer'".into()),
        Field::Column(Column::Description) => (
            "description".into(),
            "(CASE WHEN description IS NULL THEN NULL ELSE 'text' END)".into(),
        ),
        Field::Column(c) => (c.sql().into(), "'text'".into()),
    }
}

/// Parameters are pushed in the order the `?` appear in the returned text.
fn eq_sql(field: &Field, v: &Value, p: &mut Vec<SqlValue>) -> String {
    match v {
        Value::Bool(b) => {
            let (_, kind) = field_sql(field);
            format!("IFNULL(({kind} = '{b}'), 0)")
        }
        // Absent (kind NULL) counts as null, as in MongoDB.
        Value::Null => {
            let (_, kind) = field_sql(field);
            format!("IFNULL(({kind} = 'null'), 1)")
        }
        Value::Number(_) | Value::String(_) => typed_sql(field, v, "=", p),
        // Rejected at parse time.
        Value::Array(_) | Value::Object(_) => "0".into(),
    }
}

fn typed_sql(field: &Field, v: &Value, op: &str, p: &mut Vec<SqlValue>) -> String {
    let (expr, kind) = field_sql(field);
    let (kinds, param) = match v {
        Value::Number(n) => (
            "('integer','real')",
            match n.as_i64() {
                Some(i) => SqlValue::Integer(i),
                None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
        ),
        Value::String(s) => ("('text')", SqlValue::Text(s.clone())),
        _ => return "0".into(),
    };
    p.push(param);
    format!("IFNULL(({kind} IN {kinds} AND {expr} {op} ?), 0)")
}

/// Paths are inlined as literals (not bound) so each expression is self-contained.
fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `["system", "tags"]` -> `$."system"."tags"` (quoted so keys may hold dots or spaces).
fn json_path(path: &[String]) -> String {
    let mut s = String::from("$");
    for key in path {
        s.push_str(".\"");
        s.push_str(&key.replace('"', "\\\""));
        s.push('"');
    }
    s
}

fn lookup<'a>(item: &'a Value, field: &Field) -> Option<&'a Value> {
    match field {
        Field::Column(c) => item.get(c.json_name()).filter(|v| {
            // A missing description serializes as absent; an explicit null counts as absent too,
            // as the column is NULL then.
            !(matches!(c, Column::Description) && v.is_null())
        }),
        Field::Metadata(path) => {
            let mut cur = item.get("metadata")?;
            for key in path {
                cur = cur.as_object()?.get(key)?;
            }
            Some(cur)
        }
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn parse_field(name: &str) -> Result<Field> {
    if let Some(rest) = name.strip_prefix("metadata.") {
        let path: Vec<String> = rest.split('.').map(String::from).collect();
        if path.iter().any(String::is_empty) {
            return Err(bad(format!("field {name:?} has an empty path segment")));
        }
        return Ok(Field::Metadata(path));
    }
    Column::parse(name).map(Field::Column).ok_or_else(|| {
        bad(format!(
            "unknown field {name:?} (item fields: id, datasetId, dir, filename, name, type, \
             hidden, description, createdAt, updatedAt, annotationsCount, metadata.*)"
        ))
    })
}

fn parse_object(map: &Map<String, Value>) -> Result<Filter> {
    let mut parts = Vec::new();
    for (key, value) in map {
        parts.push(match key.as_str() {
            "$and" | "$or" => {
                let list = value
                    .as_array()
                    .ok_or_else(|| bad(format!("{key} takes an array of filters")))?;
                let fs = list.iter().map(Filter::parse).collect::<Result<Vec<_>>>()?;
                if key == "$and" {
                    Filter::And(fs)
                } else {
                    Filter::Or(fs)
                }
            }
            "$not" => Filter::Not(Box::new(Filter::parse(value)?)),
            k if k.starts_with('$') => {
                return Err(bad(format!(
                    "unsupported operator {k:?} at the top level (supported: {OPERATORS})"
                )))
            }
            "filter" => {
                return Err(bad(
                    "a key named \"filter\": this is a whole DQL body where a bare filter \
                     belongs (a body nested in another body?)",
                ))
            }
            field => parse_field_condition(field, value)?,
        });
    }
    Ok(match parts.len() {
        0 => Filter::True,
        1 => parts.pop().expect("one part"),
        _ => Filter::And(parts),
    })
}

/// A condition on `name`; below `metadata`, an object without operator keys is a path
/// into the item (see the module docs) and each of its leaves one ANDed condition.
fn parse_field_condition(name: &str, value: &Value) -> Result<Filter> {
    if name == "metadata" || name.starts_with("metadata.") {
        if let Some(map) = value.as_object() {
            if map.is_empty() {
                return Err(bad(format!(
                    "{name}: an empty object names no field (use $exists to test presence)"
                )));
            }
            let operators = map.keys().filter(|k| k.starts_with('$')).count();
            if operators == 0 {
                let mut parts = map
                    .iter()
                    .map(|(k, v)| parse_field_condition(&format!("{name}.{k}"), v))
                    .collect::<Result<Vec<_>>>()?;
                return Ok(if parts.len() == 1 {
                    parts.pop().expect("one part")
                } else {
                    Filter::And(parts)
                });
            }
            if operators != map.len() {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err(bad(format!(
                    "{name}: an object mixes operators and fields ({})",
                    keys.join(", ")
                )));
            }
        }
        if name == "metadata" {
            return Err(bad(
                "metadata itself cannot be compared; name a path below it \
                 (e.g. metadata.system.tags.train)",
            ));
        }
    }
    parse_condition(parse_field(name)?, value)
}

fn is_operator_object(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.keys().all(|k| k.starts_with('$')))
}

fn parse_condition(field: Field, value: &Value) -> Result<Filter> {
    if !is_operator_object(value) {
        return literal_eq(field, value);
    }
    let map = value.as_object().expect("operator object");
    let mut parts = Vec::new();
    for (op, arg) in map {
        parts.push(match op.as_str() {
            "$eq" => literal_eq(field.clone(), arg)?,
            "$ne" => Filter::Not(Box::new(literal_eq(field.clone(), arg)?)),
            "$in" | "$nin" => {
                let list = arg
                    .as_array()
                    .ok_or_else(|| bad(format!("{op} takes an array of values")))?;
                let any = Filter::Or(
                    list.iter()
                        .map(|v| literal_eq(field.clone(), v))
                        .collect::<Result<Vec<_>>>()?,
                );
                if op == "$in" {
                    any
                } else {
                    Filter::Not(Box::new(any))
                }
            }
            "$gt" | "$gte" | "$lt" | "$lte" => {
                if !(arg.is_number() || arg.is_string()) {
                    return Err(bad(format!("{op} takes a number or a string, got {arg}")));
                }
                let cmp = match op.as_str() {
                    "$gt" => CmpOp::Gt,
                    "$gte" => CmpOp::Gte,
                    "$lt" => CmpOp::Lt,
                    _ => CmpOp::Lte,
                };
                Filter::Cmp(field.clone(), cmp, arg.clone())
            }
            "$exists" => {
                let want = arg
                    .as_bool()
                    .ok_or_else(|| bad(format!("$exists takes true or false, got {arg}")))?;
                Filter::Exists(field.clone(), want)
            }
            "$glob" => {
                let pattern = arg
                    .as_str()
                    .ok_or_else(|| bad(format!("$glob takes a string pattern, got {arg}")))?;
                Filter::Glob(field.clone(), pattern.to_string())
            }
            "$not" => Filter::Not(Box::new(parse_condition(field.clone(), arg)?)),
            other => {
                return Err(bad(format!(
                    "unsupported operator {other:?} (supported: {OPERATORS})"
                )))
            }
        });
    }
    Ok(if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Filter::And(parts)
    })
}

fn literal_eq(field: Field, value: &Value) -> Result<Filter> {
    match value {
        Value::Array(_) | Value::Object(_) => Err(bad(format!(
            "cannot compare a field with an array or object ({value}); use $in or a nested path"
        ))),
        Value::String(s)
            if matches!(&field, Field::Column(c) if c.globbable())
                && s.contains(['*', '?', '[']) =>
        {
            Ok(Filter::Glob(field, s.clone()))
        }
        v => Ok(Filter::Eq(field, v.clone())),
    }
}

/// SQLite GLOB semantics: `*` any run (also `/`), `?` one character, `[abc]`, `[a-z]`,
/// `[^abc]`; case-sensitive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last `*`.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        // An unclosed `[` never matches in SQLite.
                        return false;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns (matched, index after `]`),
/// or `None` when the class is not closed.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        let ch = p[i];
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("/cats/*.jpg", "/cats/a/b.jpg"));
        assert!(glob_match("*.jp?", "x.jpg"));
        assert!(!glob_match("*.jpg", "x.png"));
        assert!(glob_match("img[0-9].png", "img7.png"));
        assert!(!glob_match("img[^0-9].png", "img7.png"));
        assert!(glob_match("", ""));
        assert!(!glob_match("a", ""));
    }

    #[test]
    fn unsupported_operators_are_named() {
        let err = Filter::parse(&json!({"name": {"$regex": "a.*"}})).unwrap_err();
        assert!(err.to_string().contains("$regex"), "{err}");
        let err = Filter::parse(&json!({"$nor": []})).unwrap_err();
        assert!(err.to_string().contains("$nor"), "{err}");
        let err = Filter::parse(&json!({"bogus": 1})).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    /// The template's default train subset (pipeline-templates, clip_train_and_embed v1.0.98).
    fn template_subset(tag: &str) -> Value {
        json!({"filter": {"$and": [
            {"hidden": false},
            {"$or": [{"metadata": {"system": {"tags": {tag: true}}}}]},
            {"type": "file"}
        ]}})
    }

    #[test]
    fn nested_metadata_objects_are_paths() {
        assert_eq!(
            Filter::parse(&json!({"metadata": {"system": {"tags": {"train": true}}}})).unwrap(),
            Filter::parse(&json!({"metadata.system.tags.train": true})).unwrap()
        );
        assert_eq!(
            Filter::parse(&json!({"metadata.user": {"score": {"$gt": 3}, "label": "cat"}}))
                .unwrap(),
            // serde_json keeps object keys sorted, so "label" comes first.
            Filter::parse(&json!({"$and": [
                {"metadata.user.label": "cat"},
                {"metadata.user.score": {"$gt": 3}}
            ]}))
            .unwrap()
        );
        // Other keys beside the tag, in tags and in system, do not stop the match.
        let f = Filter::parse(&body_filter(&template_subset("train")).unwrap()).unwrap();
        let item = |tags: Value, hidden: bool| {
            json!({"type": "file", "hidden": hidden, "metadata": {"system": {
                "mimetype": "image/png", "size": 3, "tags": tags}}})
        };
        assert!(f.matches_json(&item(
            json!({"train": true, "validation": null, "test": null}),
            false
        )));
        assert!(f.matches_json(&item(json!({"train": true}), false)));
        assert!(!f.matches_json(&item(json!({"train": true}), true)));
        assert!(!f.matches_json(&item(json!({"validation": true}), false)));
        assert!(!f.matches_json(&item(json!({"train": false}), false)));
        assert!(!f.matches_json(&item(json!({"train": "true"}), false)));
        assert!(!f.matches_json(&json!({"type": "file", "hidden": false, "metadata": {}})));
    }

    #[test]
    fn nested_forms_that_are_refused() {
        for (filter, mentions) in [
            (json!({"metadata": {"user": {}}}), "empty object"),
            (
                json!({"metadata": {"user": {"$exists": true, "label": "x"}}}),
                "mixes operators",
            ),
            (json!({"metadata": {"$exists": true}}), "metadata itself"),
            (json!({"metadata": 3}), "metadata itself"),
            (json!({"metadata": {"user": {"": 1}}}), "empty path segment"),
            (json!({"hidden": {"a": 1}}), "array or object"),
        ] {
            let err = Filter::parse(&filter).unwrap_err().to_string();
            assert!(err.contains(mentions), "{filter}: {err}");
        }
    }

    #[test]
    fn bodies_are_unwrapped_once() {
        let body = template_subset("validation");
        assert!(is_body(&body));
        assert_eq!(body_filter(&body).unwrap(), body["filter"]);
        assert_eq!(filter_from_body(&body), body["filter"]);
        // dtlpy's Filters.prepare() adds paging and the resource; they do not change the items.
        let mut prepared = body.clone();
        for (k, v) in [
            ("resource", json!("items")),
            ("page", json!(0)),
            ("pageSize", json!(1000)),
            ("sort", json!({"filename": "ascending"})),
        ] {
            prepared[k] = v;
        }
        assert_eq!(body_filter(&prepared).unwrap(), body["filter"]);
        // A bare filter is its own filter.
        let bare = json!({"metadata.system.tags.train": true});
        assert!(!is_body(&bare));
        assert_eq!(body_filter(&bare).unwrap(), bare);
        // Wrapped twice is an error, not a filter on a field named "filter".
        let twice = json!({"filter": body});
        let err = Filter::parse_given(Some(&twice)).unwrap_err().to_string();
        assert!(err.contains("body nested"), "{err}");
        for (b, mentions) in [
            (json!({"filter": {}, "resource": "annotations"}), "resource"),
            (json!({"filter": {}, "join": {"filter": {}}}), "join"),
            (json!({"filter": [1]}), "must be an object"),
            (json!({"filter": {}, "bogus": 1}), "bogus"),
        ] {
            let err = body_filter(&b).unwrap_err().to_string();
            assert!(err.contains(mentions), "{b}: {err}");
        }
        assert_eq!(
            Filter::parse_given(None).unwrap(),
            Filter::parse(&default_filter()).unwrap()
        );
    }

    #[test]
    fn null_matches_null_or_absent() {
        let f = Filter::parse(&json!({"metadata.system.tags.train": null})).unwrap();
        assert!(f.matches_json(&json!({"metadata": {"system": {"tags": {"train": null}}}})));
        assert!(f.matches_json(&json!({"metadata": {"system": {}}})));
        assert!(f.matches_json(&json!({})));
        assert!(!f.matches_json(&json!({"metadata": {"system": {"tags": {"train": true}}}})));
        let ne = Filter::parse(&json!({"metadata.system.tags.train": {"$ne": null}})).unwrap();
        assert!(ne.matches_json(&json!({"metadata": {"system": {"tags": {"train": true}}}})));
        assert!(!ne.matches_json(&json!({"metadata": {}})));
    }

    #[test]
    fn implicit_glob_on_paths() {
        assert_eq!(
            Filter::parse(&json!({"filename": "/a/*.jpg"})).unwrap(),
            Filter::Glob(Field::Column(Column::Filename), "/a/*.jpg".into())
        );
        assert!(matches!(
            Filter::parse(&json!({"metadata.x": "*"})).unwrap(),
            Filter::Eq(..)
        ));
    }
}
