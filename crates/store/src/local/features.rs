//! Feature sets and vectors in the embedded store; `nearest` scans the in-memory
//! matrix of [`crate::vectors::VectorCache`].

use super::*;

fn feature_set_row(r: &Row) -> rusqlite::Result<FeatureSet> {
    Ok(FeatureSet {
        id: r.get(0)?,
        name: r.get(1)?,
        set_type: r.get(2)?,
        entity_type: r.get(3)?,
        size: r.get::<_, i64>(4)? as u32,
        model_id: r.get(5)?,
        created_at: r.get(6)?,
    })
}

const FS_COLS: &str = "id, name, type, entity_type, size, model_id, created_at";

fn feature_set_by_id(conn: &Connection, id: &str) -> Result<FeatureSet> {
    conn.query_row(
        &format!("SELECT {FS_COLS} FROM feature_sets WHERE id = ?1"),
        [id],
        feature_set_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("feature set", id))
}

#[async_trait]
impl Vectors for LocalStore {
    async fn feature_set_for_model(
        &self,
        model_id: &str,
        name: &str,
        size: u32,
    ) -> Result<FeatureSet> {
        rules::check_feature_set(name, size)?;
        let (model_id, name) = (model_id.to_string(), name.to_string());
        self.db
            .write(move |t| {
                model_by(t, "id", &model_id)?;
                let existing = t
                    .query_row(
                        &format!("SELECT {FS_COLS} FROM feature_sets WHERE model_id = ?1"),
                        [&model_id],
                        feature_set_row,
                    )
                    .optional()?;
                if let Some(fs) = existing {
                    if fs.size != size {
                        return Err(StoreError::Conflict(format!(
                            "feature set {} of model {model_id} has size {}, not {size}",
                            fs.id, fs.size
                        )));
                    }
                    return Ok(fs);
                }
                let id = new_id();
                t.execute(
                    "INSERT INTO feature_sets (id, name, type, entity_type, size, model_id, created_at) VALUES (?1, ?2, 'embeddings', 'item', ?3, ?4, ?5)",
                    params![id, name, size, model_id, now_rfc3339()],
                )?;
                feature_set_by_id(t, &id)
            })
            .await
    }

    async fn get_feature_set(&self, id: &str) -> Result<FeatureSet> {
        let id = id.to_string();
        self.db.read(move |c| feature_set_by_id(c, &id)).await
    }

    async fn list_feature_sets(&self) -> Result<Vec<FeatureSet>> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {FS_COLS} FROM feature_sets ORDER BY created_at, id"
                ))?;
                let v = stmt
                    .query_map([], feature_set_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn upsert_vectors(
        &self,
        feature_set_id: &str,
        vectors: &[NewVector],
    ) -> Result<UpsertSummary> {
        rules::check_new_vectors(vectors)?;
        let rows: Vec<(String, String, Vec<u8>, usize)> = vectors
            .iter()
            .map(|v| {
                (
                    v.entity_id.clone(),
                    v.dataset_id.clone(),
                    to_blob(&v.value),
                    v.value.len(),
                )
            })
            .collect();
        let fs_id = feature_set_id.to_string();
        self.db
            .write(move |t| {
                let fs = feature_set_by_id(t, &fs_id)?;
                for (e, _, _, n) in &rows {
                    rules::check_vector_size(e, *n, &fs)?;
                }
                let mut seq: i64 =
                    t.query_row("SELECT IFNULL(MAX(seq), 0) FROM vectors", [], |r| r.get(0))?;
                let mut summary = UpsertSummary::default();
                let mut exists = t.prepare_cached(
                    "SELECT 1 FROM vectors WHERE feature_set_id = ?1 AND entity_id = ?2",
                )?;
                let mut upsert = t.prepare_cached(
                    "INSERT INTO vectors (id, feature_set_id, entity_id, dataset_id, value, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (feature_set_id, entity_id) DO UPDATE SET dataset_id = excluded.dataset_id, value = excluded.value, seq = excluded.seq",
                )?;
                for (entity, dataset, blob, _) in &rows {
                    seq += 1;
                    if exists.exists(params![fs_id, entity])? {
                        summary.updated += 1;
                    } else {
                        summary.inserted += 1;
                    }
                    upsert.execute(params![new_id(), fs_id, entity, dataset, blob, seq])?;
                }
                Ok(summary)
            })
            .await
    }

    async fn vector_entities(
        &self,
        feature_set_id: &str,
        dataset_id: Option<&str>,
    ) -> Result<Vec<Id>> {
        let fs_id = feature_set_id.to_string();
        let ds = dataset_id.map(String::from);
        self.db
            .read(move |c| {
                feature_set_by_id(c, &fs_id)?;
                let mut stmt = c.prepare_cached(
                    "SELECT entity_id FROM vectors WHERE feature_set_id = ?1 AND (?2 IS NULL OR dataset_id = ?2) ORDER BY entity_id",
                )?;
                let v = stmt
                    .query_map(params![fs_id, ds], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn entities_with_vectors(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<Id>> {
        let fs_id = feature_set_id.to_string();
        let ids = entity_ids.to_vec();
        self.db
            .read(move |c| {
                feature_set_by_id(c, &fs_id)?;
                let mut out = Vec::new();
                // Well below SQLite's bound on host parameters.
                for chunk in ids.chunks(500) {
                    let marks = vec!["?"; chunk.len()].join(", ");
                    let mut stmt = c.prepare(&format!(
                        "SELECT entity_id FROM vectors WHERE feature_set_id = ? AND entity_id IN ({marks})"
                    ))?;
                    let args = std::iter::once(&fs_id).chain(chunk);
                    let found = stmt
                        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    out.extend(found);
                }
                Ok(out)
            })
            .await
    }

    async fn get_vector(&self, feature_set_id: &str, entity_id: &str) -> Result<FeatureVector> {
        let (fs_id, entity) = (feature_set_id.to_string(), entity_id.to_string());
        self.db
            .read(move |c| {
                let row: Option<(String, String, Vec<u8>)> = c
                    .query_row(
                        "SELECT id, dataset_id, value FROM vectors WHERE feature_set_id = ?1 AND entity_id = ?2",
                        params![fs_id, entity],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let (id, dataset_id, blob) = row.ok_or_else(|| {
                    StoreError::not_found("feature vector", format!("{entity} in {fs_id}"))
                })?;
                Ok(FeatureVector {
                    id,
                    feature_set_id: fs_id,
                    entity_id: entity,
                    dataset_id,
                    value: from_blob(&blob)?,
                })
            })
            .await
    }

    async fn nearest(&self, feature_set_id: &str, q: &NearestQuery) -> Result<Vec<Neighbor>> {
        rules::check_nearest_query(q)?;
        let filter = match &q.filter {
            Some(f) => Some(Filter::parse_given(Some(f))?),
            None => None,
        };
        let (fs_id, q) = (feature_set_id.to_string(), q.clone());
        let cache = self.vectors.clone();
        self.db
            .read(move |c| {
                let fs = feature_set_by_id(c, &fs_id)?;
                rules::check_query_vector(&q.vector, &fs)?;
                let allowed: Option<HashSet<String>> = match (&filter, &q.dataset_id) {
                    (Some(f), Some(ds)) => {
                        let (where_sql, mut params) = f.to_sql();
                        params.insert(0, rusqlite::types::Value::Text(ds.clone()));
                        let mut stmt = c.prepare(&format!(
                            "SELECT id FROM items WHERE dataset_id = ? AND {where_sql}"
                        ))?;
                        let ids = stmt
                            .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?
                            .collect::<rusqlite::Result<_>>()?;
                        Some(ids)
                    }
                    _ => None,
                };
                let m = cache.fresh(c, &fs_id, fs.size as usize)?;
                let m = m
                    .read()
                    .map_err(|_| StoreError::Unavailable("vector cache lock poisoned".into()))?;
                let hits = match (&allowed, &q.dataset_id) {
                    (Some(ids), _) => {
                        let mut mask = vec![false; m.len()];
                        for id in ids {
                            if let Some(r) = m.row_of(id) {
                                mask[r] = true;
                            }
                        }
                        m.top_k(&q.vector, q.k, &|r| mask[r])
                    }
                    (None, Some(ds)) => match m.dataset_index(ds) {
                        Some(di) => m.top_k(&q.vector, q.k, &|r| m.row_dataset_index(r) == di),
                        None => Vec::new(),
                    },
                    (None, None) => m.top_k(&q.vector, q.k, &|_| true),
                };
                Ok(hits
                    .into_iter()
                    .map(|(r, score)| Neighbor {
                        entity_id: m.entity_id(r).to_string(),
                        dataset_id: m.dataset_id(r).to_string(),
                        score,
                    })
                    .collect())
            })
            .await
    }
}
