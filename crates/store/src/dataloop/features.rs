//! Feature sets and vectors on Dataloop; `nearest` re-ranks a candidate pool by cosine.

use super::*;

/// Ids per `$in` when looking vectors up by entity.
const IN_CHUNK: usize = 200;
/// Vectors per `POST /features/vectors`.
const VECTOR_CHUNK: usize = 500;
/// Fewest candidates fetched for a nearest-neighbour query before re-ranking by cosine.
const CANDIDATE_POOL_MIN: usize = 64;

impl DataloopBackend {
    /// Vectors of `feature_set_id` matching `extra` (ANDed), all pages.
    async fn vectors_where(
        &self,
        feature_set_id: &str,
        extra: Vec<Value>,
    ) -> Result<Vec<FeatureVector>> {
        let mut and = vec![json!({"featureSetId": feature_set_id})];
        and.extend(extra);
        self.query_all(
            "/features/vectors/query",
            "feature_vectors",
            &json!({"$and": and}),
            &self.project_scope(),
            &Target::new("feature set", feature_set_id),
        )
        .await?
        .into_iter()
        .map(wire::feature_vector)
        .collect()
    }

    async fn vectors_of_entities(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<FeatureVector>> {
        let mut out = Vec::new();
        for chunk in entity_ids.chunks(IN_CHUNK) {
            out.extend(
                self.vectors_where(feature_set_id, vec![json!({"entityId": {"$in": chunk}})])
                    .await?,
            );
        }
        Ok(out)
    }
}

#[async_trait]
impl Vectors for DataloopBackend {
    /// Looks the set up by model, creates it when missing (`POST /features/sets` answers an
    /// array). Two workers racing here can create two sets; the first found wins afterwards.
    async fn feature_set_for_model(
        &self,
        model_id: &str,
        name: &str,
        size: u32,
    ) -> Result<FeatureSet> {
        rules::check_feature_set(name, size)?;
        self.model_raw(model_id).await?;
        let existing = self
            .query_all(
                "/features/sets/query",
                "feature_sets",
                &json!({"modelId": model_id}),
                &self.project_scope(),
                &Target::new("model", model_id),
            )
            .await?;
        let mut sets: Vec<FeatureSet> = existing
            .into_iter()
            .map(wire::feature_set)
            .collect::<Result<_>>()?;
        sets.retain(|s| s.model_id.as_deref() == Some(model_id));
        if let Some(fs) = sets.into_iter().next() {
            if fs.size != size {
                return Err(StoreError::Conflict(format!(
                    "feature set {} of model {model_id} has size {}, not {size}",
                    fs.id, fs.size
                )));
            }
            return Ok(fs);
        }
        let body = json!({
            "name": name,
            "size": size,
            "type": "embeddings",
            "project": self.project(),
            "modelId": model_id,
            "entityType": "item",
        });
        let v = self
            .gate
            .json(Req::post(
                "/features/sets",
                body,
                Target::new("model", model_id),
            ))
            .await?;
        wire::feature_set(wire::first(v, "feature set")?)
    }

    async fn get_feature_set(&self, id: &str) -> Result<FeatureSet> {
        let path = format!("/features/sets/{}", id_seg("feature set", id)?);
        wire::feature_set(
            self.gate
                .json(Req::get(path, Target::new("feature set", id)))
                .await?,
        )
    }

    async fn list_feature_sets(&self) -> Result<Vec<FeatureSet>> {
        self.query_all(
            "/features/sets/query",
            "feature_sets",
            &json!({}),
            &self.project_scope(),
            &Target::new("project", self.project()),
        )
        .await?
        .into_iter()
        .map(wire::feature_set)
        .collect()
    }

    /// Dataloop stores vectors by POST only. New vectors are written first, then the
    /// entities' previous vectors deleted: a failure in between leaves an extra (old)
    /// vector, never a missing one, and repeating the call converges.
    async fn upsert_vectors(
        &self,
        feature_set_id: &str,
        vectors: &[NewVector],
    ) -> Result<UpsertSummary> {
        rules::check_new_vectors(vectors)?;
        let fs = self.get_feature_set(feature_set_id).await?;
        // Last one wins for an entity listed twice.
        let mut order: Vec<&str> = Vec::new();
        let mut latest: HashMap<&str, &NewVector> = HashMap::new();
        for v in vectors {
            rules::check_vector_size(&v.entity_id, v.value.len(), &fs)?;
            if latest.insert(v.entity_id.as_str(), v).is_none() {
                order.push(v.entity_id.as_str());
            }
        }
        if order.is_empty() {
            return Ok(UpsertSummary::default());
        }
        let off_unit = latest
            .values()
            .filter(|v| {
                let n: f32 = v.value.iter().map(|x| x * x).sum::<f32>().sqrt();
                (n - 1.0).abs() > 1e-3
            })
            .count();
        if off_unit > 0 {
            tracing::warn!(
                "{off_unit} vectors for feature set {} are not unit length: Dataloop ranks by \
                 euclidean distance, so nearest() is exact only within its candidate pool",
                fs.id
            );
        }
        let ids: Vec<Id> = order.iter().map(|s| s.to_string()).collect();
        let old = self.vectors_of_entities(&fs.id, &ids).await?;
        let had: HashSet<&str> = old.iter().map(|v| v.entity_id.as_str()).collect();
        let updated = order.iter().filter(|e| had.contains(**e)).count() as u64;
        let inserted = order.len() as u64 - updated;
        let keep_new: HashSet<Id>;
        {
            let mut created = HashSet::new();
            for chunk in order.chunks(VECTOR_CHUNK) {
                let body: Vec<Value> = chunk
                    .iter()
                    .map(|e| {
                        let v = latest[e];
                        json!({
                            "entityId": v.entity_id,
                            "value": v.value,
                            "featureSetId": fs.id,
                            "datasetId": v.dataset_id,
                            "project": self.project(),
                        })
                    })
                    .collect();
                let answer = self
                    .gate
                    .json(Req::post(
                        "/features/vectors",
                        Value::Array(body),
                        Target::new("feature set", &fs.id),
                    ))
                    .await?;
                for v in wire::list(answer, "feature vectors")? {
                    if let Some(id) = v.get("id").and_then(Value::as_str) {
                        created.insert(id.to_string());
                    }
                }
            }
            keep_new = created;
        }
        let mut first_err = None;
        for v in old.iter().filter(|v| !keep_new.contains(&v.id)) {
            let req = Req::delete(
                format!("/features/vectors/{}", seg(&v.id)),
                Target::new("feature vector", &v.id),
            );
            match self.gate.json(req).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(UpsertSummary { inserted, updated })
    }

    async fn vector_entities(
        &self,
        feature_set_id: &str,
        dataset_id: Option<&str>,
    ) -> Result<Vec<Id>> {
        self.get_feature_set(feature_set_id).await?;
        let extra = dataset_id
            .map(|d| vec![json!({"datasetId": d})])
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for v in self.vectors_where(feature_set_id, extra).await? {
            if seen.insert(v.entity_id.clone()) {
                out.push(v.entity_id);
            }
        }
        Ok(out)
    }

    async fn entities_with_vectors(
        &self,
        feature_set_id: &str,
        entity_ids: &[Id],
    ) -> Result<Vec<Id>> {
        self.get_feature_set(feature_set_id).await?;
        let mut seen = HashSet::new();
        Ok(self
            .vectors_of_entities(feature_set_id, entity_ids)
            .await?
            .into_iter()
            .filter(|v| seen.insert(v.entity_id.clone()))
            .map(|v| v.entity_id)
            .collect())
    }

    async fn get_vector(&self, feature_set_id: &str, entity_id: &str) -> Result<FeatureVector> {
        self.get_feature_set(feature_set_id).await?;
        self.vectors_where(feature_set_id, vec![json!({"entityId": entity_id})])
            .await?
            .into_iter()
            .last()
            .ok_or_else(|| StoreError::not_found("vector", entity_id))
    }

    /// Dataloop ranks by euclidean distance (`$euclid`); for L2-normalised vectors (what the
    /// embed node writes) that is the cosine order. A pool of at least 4k candidates is
    /// re-ranked by cosine similarity computed from the returned vectors, which are the scores.
    async fn nearest(&self, feature_set_id: &str, query: &NearestQuery) -> Result<Vec<Neighbor>> {
        rules::check_nearest_query(query)?;
        let fs = self.get_feature_set(feature_set_id).await?;
        rules::check_query_vector(&query.vector, &fs)?;
        let norm = query
            .vector
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        let unit: Vec<f32> = query
            .vector
            .iter()
            .map(|x| (f64::from(*x) / norm) as f32)
            .collect();
        let euclid = json!({"$euclid": {"input": unit, "$euclidSort": {"eu_dist": "ascending"}}});
        // Euclidean order equals cosine order only for unit-length stored vectors; a wider
        // pool re-ranked by cosine here keeps small or nearly-normalised sets exact.
        let pool = (query.k * 4).clamp(CANDIDATE_POOL_MIN, 10_000);
        let page_size = (pool as u32).clamp(1, PAGE_SIZE);
        let mut candidates: Vec<FeatureVector> = Vec::new();
        if let Some(ds) = &query.dataset_id {
            let ds_seg = id_seg("dataset", ds)?;
            // No filter means every item of the dataset (hidden ones too), as in the embedded store.
            let filter = match &query.filter {
                Some(f) => crate::dql::body_filter(f)?,
                None => json!({}),
            };
            let mut extra = Map::new();
            extra.insert(
                "join".into(),
                json!({
                    "on": {"resource": "feature_vectors", "local": "entityId", "forigen": "id"},
                    "filter": {"value": euclid, "featureSetId": fs.id, "datasetId": ds},
                }),
            );
            let mut entity_ids: Vec<Id> = Vec::new();
            let mut page = 0;
            while entity_ids.len() < pool {
                let p = self
                    .query_page(
                        &format!("/datasets/{ds_seg}/query"),
                        "items",
                        &filter,
                        page,
                        page_size,
                        &extra,
                        &Target::new("dataset", ds),
                    )
                    .await?;
                let more = p.has_next && !p.items.is_empty();
                for it in p.items {
                    if let Some(id) = it.get("id").and_then(Value::as_str) {
                        entity_ids.push(id.to_string());
                    }
                }
                if !more {
                    break;
                }
                page += 1;
            }
            entity_ids.truncate(pool);
            candidates = self.vectors_of_entities(&fs.id, &entity_ids).await?;
        } else {
            let filter = json!({"featureSetId": fs.id, "value": euclid});
            let mut page = 0;
            while candidates.len() < pool {
                let p = self
                    .query_page(
                        "/features/vectors/query",
                        "feature_vectors",
                        &filter,
                        page,
                        page_size,
                        &self.project_scope(),
                        &Target::new("feature set", &fs.id),
                    )
                    .await?;
                let more = p.has_next && !p.items.is_empty();
                for v in p.items {
                    candidates.push(wire::feature_vector(v)?);
                }
                if !more {
                    break;
                }
                page += 1;
            }
        }
        let mut seen = HashSet::new();
        let mut out: Vec<Neighbor> = candidates
            .into_iter()
            .rev() // with duplicates left by an interrupted upsert, the newest wins
            .filter(|v| seen.insert(v.entity_id.clone()))
            .filter_map(|v| {
                cosine(&unit, &v.value).map(|score| Neighbor {
                    entity_id: v.entity_id,
                    dataset_id: v.dataset_id,
                    score,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.entity_id.cmp(&b.entity_id))
        });
        out.truncate(query.k);
        Ok(out)
    }
}

fn cosine(q_unit: &[f32], v: &[f32]) -> Option<f32> {
    if v.len() != q_unit.len() {
        return None;
    }
    let dot: f64 = q_unit
        .iter()
        .zip(v)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    let norm: f64 = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    (norm > 0.0).then(|| (dot / norm) as f32)
}
