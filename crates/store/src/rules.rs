//! The checks both backends make before they touch storage, written once so the embedded
//! store and Dataloop accept and refuse the same requests, with the same messages.
//!
//! Where the backends used to differ, the stricter documented rule won (a page of at most
//! 1,000 items as on Dataloop, `k` of at most 1,000 as docs/search.md states, promotion
//! only of `trained` or `deployed` models as the [`crate::Platform`] docs state). The
//! functions are `pub` so a caller that checks early (the worker's search) uses the same
//! limits instead of a copy.

use crate::entities::*;
use crate::error::{Result, StoreError};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Display;

/// Largest `k` of a nearest-neighbour query.
pub const MAX_NEAREST_K: usize = 1_000;
/// Largest page of an item query: Dataloop's largest page (and [`ItemQuery`]'s default).
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// A taken clone name gets `_v1` ... `_v{MAX_NAME_VERSION}` before the clone is refused.
pub const MAX_NAME_VERSION: u32 = 100;

/// Names of datasets, models, pipelines and feature sets.
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(StoreError::invalid(
            format!("{kind} name"),
            "must not be empty",
        ));
    }
    Ok(())
}

/// `Conflict` for a name another entity of this kind holds.
pub fn name_exists(kind: &str, name: &str) -> StoreError {
    StoreError::Conflict(format!("a {kind} named {name:?} exists"))
}

/// The `n`-th name tried for a clone of `stem`: `stem`, then `stem_v1`, `stem_v2`, ...
/// `None` once past [`MAX_NAME_VERSION`].
pub fn versioned_name(stem: &str, n: u32) -> Option<String> {
    match n {
        0 => Some(stem.to_string()),
        n if n <= MAX_NAME_VERSION => Some(format!("{stem}_v{n}")),
        _ => None,
    }
}

/// `Conflict` when every [`versioned_name`] of `stem` is taken.
pub fn names_exhausted(stem: &str) -> StoreError {
    StoreError::Conflict(format!(
        "model names {stem:?} to {stem}_v{MAX_NAME_VERSION} are all taken"
    ))
}

/// An item's metadata: `update_item` merges it and Dataloop takes only objects, so an
/// object or nothing (`null`).
pub fn check_metadata(what: impl Display, metadata: &Value) -> Result<()> {
    if metadata.is_object() || metadata.is_null() {
        Ok(())
    } else {
        Err(StoreError::invalid(
            format!("metadata of {what}"),
            "must be a JSON object",
        ))
    }
}

/// The metadata `update_item` merges.
pub fn check_update_metadata(item: &Item) -> Result<()> {
    check_metadata(format_args!("item {}", item.id), &item.metadata)
}

/// `pageSize` of an item query: 1..=[`MAX_PAGE_SIZE`].
pub fn check_page_size(page_size: u32) -> Result<()> {
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(StoreError::invalid(
            "pageSize",
            format!("{page_size} is not in 1..={MAX_PAGE_SIZE}"),
        ));
    }
    Ok(())
}

/// The shape of a nearest-neighbour query before any lookup: `k` in 1..=[`MAX_NEAREST_K`],
/// a filter is a DQL object and restricts the items of one dataset.
pub fn check_nearest(k: usize, filter: Option<&Value>, dataset_id: Option<&str>) -> Result<()> {
    if k == 0 || k > MAX_NEAREST_K {
        return Err(StoreError::invalid(
            "k",
            format!("{k} is not in 1..={MAX_NEAREST_K}"),
        ));
    }
    if let Some(f) = filter {
        if !f.is_object() {
            return Err(StoreError::invalid(
                "filter",
                format!("must be a DQL filter object, got {f}"),
            ));
        }
        if dataset_id.is_none() {
            return Err(StoreError::invalid(
                "nearest query",
                "a filter needs a datasetId",
            ));
        }
    }
    Ok(())
}

/// [`check_nearest`] of a whole query.
pub fn check_nearest_query(query: &NearestQuery) -> Result<()> {
    check_nearest(query.k, query.filter.as_ref(), query.dataset_id.as_deref())
}

/// A query vector against its feature set: its size, finite and not all zeros (a zero
/// vector has no direction, so every cosine would be meaningless).
pub fn check_query_vector(vector: &[f32], set: &FeatureSet) -> Result<()> {
    if vector.len() != set.size as usize {
        return Err(StoreError::invalid(
            "query vector",
            format!(
                "has {} values, feature set {} has size {}",
                vector.len(),
                set.id,
                set.size
            ),
        ));
    }
    let norm = vector
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
    Ok(())
}

/// Vectors to upsert, before the feature set is looked up: an entity id and finite values.
pub fn check_new_vectors(vectors: &[NewVector]) -> Result<()> {
    for v in vectors {
        if v.entity_id.is_empty() {
            return Err(StoreError::invalid("vector", "entity id is empty"));
        }
        if v.value.iter().any(|x| !x.is_finite()) {
            return Err(StoreError::invalid(
                format!("vector of {}", v.entity_id),
                "holds NaN or infinite values",
            ));
        }
    }
    Ok(())
}

/// A vector of `entity_id` with `len` values has its feature set's size.
pub fn check_vector_size(entity_id: &str, len: usize, set: &FeatureSet) -> Result<()> {
    if len != set.size as usize {
        return Err(StoreError::invalid(
            format!("vector of {entity_id}"),
            format!(
                "has {len} values, feature set {} has size {}",
                set.id, set.size
            ),
        ));
    }
    Ok(())
}

/// A feature set to create: a name and a positive size.
pub fn check_feature_set(name: &str, size: u32) -> Result<()> {
    check_name("feature set", name)?;
    if size == 0 {
        return Err(StoreError::invalid("feature set size", "must be positive"));
    }
    Ok(())
}

/// A pipeline to create: a name and no variable declared twice.
pub fn check_new_pipeline(pipeline: &NewPipeline) -> Result<()> {
    check_name("pipeline", &pipeline.name)?;
    let mut seen = HashSet::new();
    for v in &pipeline.variables {
        if !seen.insert(v.name.as_str()) {
            return Err(StoreError::invalid(
                format!("pipeline {}", pipeline.name),
                format!("variable {:?} is declared twice", v.name),
            ));
        }
    }
    Ok(())
}

/// Only a variable of type `Model` (as Dataloop spells it) can be promoted.
pub fn check_model_variable(variable: &Variable) -> Result<()> {
    if variable.var_type != "Model" {
        return Err(StoreError::invalid(
            format!("variable {:?}", variable.name),
            format!("has type {}, not Model", variable.var_type),
        ));
    }
    Ok(())
}

/// A model a variable may point at: `trained` (or `deployed`) with stored artifacts;
/// else `Conflict` naming the variable that keeps its value.
pub fn check_promotable(variable: &str, model: &Model, has_artifacts: bool) -> Result<()> {
    if !matches!(model.status, ModelStatus::Trained | ModelStatus::Deployed) {
        return Err(StoreError::Conflict(format!(
            "model {} ({}) is {}, not trained: variable {variable:?} left unchanged",
            model.name,
            model.id,
            model.status.as_str()
        )));
    }
    if !has_artifacts {
        return Err(StoreError::Conflict(format!(
            "model {} ({}) has no stored artifacts: variable {variable:?} left unchanged",
            model.name, model.id
        )));
    }
    Ok(())
}

/// Metric samples: finite coordinates.
pub fn check_metric_samples(samples: &[MetricSample]) -> Result<()> {
    for s in samples {
        if !(s.data.x.is_finite() && s.data.y.is_finite()) {
            return Err(StoreError::invalid(
                format!("metric sample {}/{}", s.figure, s.legend),
                format!("x = {}, y = {} must be finite", s.data.x, s.data.y),
            ));
        }
    }
    Ok(())
}

/// An execution to create names its function.
pub fn check_new_execution(execution: &NewExecution) -> Result<()> {
    if execution.function_name.trim().is_empty() {
        return Err(StoreError::invalid("functionName", "must not be empty"));
    }
    Ok(())
}

/// A progress report: not a terminal status (those go through `finish_execution`) and a
/// percent of at most 100.
pub fn check_progress(progress: &ExecutionProgress) -> Result<()> {
    if progress.status.is_some_and(ExecutionStatus::is_terminal) {
        return Err(StoreError::invalid(
            "execution progress",
            "terminal statuses are set with finish_execution",
        ));
    }
    if let Some(p) = progress.percent_complete.filter(|p| *p > 100) {
        return Err(StoreError::invalid(
            "percentComplete",
            format!("{p} is over 100"),
        ));
    }
    Ok(())
}

/// `finish_execution` takes only a terminal status.
pub fn check_final_status(status: ExecutionStatus) -> Result<()> {
    if !status.is_terminal() {
        return Err(StoreError::invalid(
            "execution status",
            format!("{} is not a final status", status.as_str()),
        ));
    }
    Ok(())
}

/// A finished execution takes no more progress: `Conflict`.
pub fn check_not_finished(id: &str, current: ExecutionStatus) -> Result<()> {
    if current.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "execution {id} already finished ({})",
            current.as_str()
        )));
    }
    Ok(())
}

/// Rerunning is for executions that started (or ended): one still waiting to start
/// would then be queued twice.
pub fn check_rerun(id: &str, current: ExecutionStatus) -> Result<()> {
    if matches!(current, ExecutionStatus::Created | ExecutionStatus::Rerun) {
        return Err(StoreError::Conflict(format!(
            "execution {id} is {} (waiting to start): nothing to rerun",
            current.as_str()
        )));
    }
    Ok(())
}

/// `cats\1.jpg`, `/cats/1.jpg`, `cats/1.jpg` -> (`/cats/1.jpg`, `/cats`, `1.jpg`).
/// Rejects empty names and `.`/`..` segments.
pub fn normalize_filename(filename: &str) -> Result<(String, String, String)> {
    let unified = filename.replace('\\', "/");
    let segs: Vec<&str> = unified.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() || segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(StoreError::invalid(
            format!("item filename {filename:?}"),
            "must be a relative path without . or .. segments",
        ));
    }
    let full = format!("/{}", segs.join("/"));
    let dir = format!("/{}", segs[..segs.len() - 1].join("/"));
    Ok((full, dir, segs[segs.len() - 1].to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_names_stop_at_the_last_version() {
        assert_eq!(versioned_name("m", 0).as_deref(), Some("m"));
        assert_eq!(versioned_name("m", 2).as_deref(), Some("m_v2"));
        assert_eq!(
            versioned_name("m", MAX_NAME_VERSION).as_deref(),
            Some("m_v100")
        );
        assert_eq!(versioned_name("m", MAX_NAME_VERSION + 1), None);
    }

    #[test]
    fn nearest_limits() {
        assert!(check_nearest(1, None, None).is_ok());
        assert!(check_nearest(MAX_NEAREST_K, None, None).is_ok());
        assert!(check_nearest(0, None, None).is_err());
        assert!(check_nearest(MAX_NEAREST_K + 1, None, None).is_err());
        let f = serde_json::json!({"dir": "/a"});
        assert!(check_nearest(1, Some(&f), None).is_err());
        assert!(check_nearest(1, Some(&f), Some("d")).is_ok());
        assert!(check_nearest(1, Some(&serde_json::json!([1])), Some("d")).is_err());
    }

    #[test]
    fn query_vectors() {
        let set = FeatureSet {
            id: "f".into(),
            name: "f".into(),
            set_type: "embeddings".into(),
            entity_type: "item".into(),
            size: 2,
            model_id: None,
            created_at: String::new(),
        };
        assert!(check_query_vector(&[1.0, 0.0], &set).is_ok());
        assert!(check_query_vector(&[1.0], &set).is_err());
        assert!(check_query_vector(&[0.0, 0.0], &set).is_err());
        assert!(check_query_vector(&[f32::NAN, 1.0], &set).is_err());
    }
}
