//! Models on Dataloop: create, clone, update, artifacts (items of the Binaries dataset)
//! and metrics.

use super::*;

/// What cliptune's models produce and take, as dtlpy's `models.create` states them (the
/// model adapter trains without annotations only for `embedding`).
const MODEL_OUTPUT_TYPE: &str = "embedding";
const MODEL_INPUT_TYPE: &str = "image";
/// Where a model's checkpoint files live in the project's Binaries dataset.
const ARTIFACTS_ROOT: &str = "/artifacts/models";

impl DataloopBackend {
    pub(super) async fn model_raw(&self, id: &str) -> Result<Map<String, Value>> {
        let path = format!("/ml/models/{}", id_seg("model", id)?);
        match self
            .gate
            .json(Req::get(path, Target::new("model", id)))
            .await?
        {
            Value::Object(m) => Ok(m),
            _ => Err(wire::bad_answer("model", "expected an object")),
        }
    }

    async fn patch_model(&self, id: &str, raw: Map<String, Value>) -> Result<wire::WireModel> {
        self.patch_model_with(id, raw, false).await
    }

    /// `system`: the body changes `metadata.system`, which the gate takes only with
    /// `?system=true`.
    async fn patch_model_with(
        &self,
        id: &str,
        raw: Map<String, Value>,
        system: bool,
    ) -> Result<wire::WireModel> {
        let path = format!(
            "/ml/models/{}{}",
            id_seg("model", id)?,
            if system { "?system=true" } else { "" }
        );
        let v = self
            .gate
            .json(Req::patch(
                path,
                Value::Object(raw),
                Target::new("model", id),
            ))
            .await?;
        wire::model(v)
    }

    async fn models_where(&self, extra_filter: Option<Value>) -> Result<Vec<wire::WireModel>> {
        let mut and = vec![json!({"projectId": self.project()})];
        and.extend(extra_filter);
        self.query_all(
            "/ml/models/query",
            "models",
            &json!({"$and": and}),
            &Map::new(),
            &Target::new("project", self.project()),
        )
        .await?
        .into_iter()
        .map(wire::model)
        .collect()
    }

    /// A model entity with its artifact items resolved to paths, sizes and hashes.
    async fn finish_model(&self, w: wire::WireModel) -> Result<Model> {
        let (files, missing) = self.artifact_files(&w.model.name, &w.artifacts).await?;
        if !missing.is_empty() {
            tracing::warn!(
                "model {} lists artifact items that no longer exist: {missing:?}",
                w.model.id
            );
        }
        let mut m = w.model;
        m.artifacts = files.into_iter().map(|(a, _)| a).collect();
        Ok(m)
    }

    /// Resolves artifact references: `(artifact, item id)` for each found, and the ids of
    /// referenced items that do not exist.
    pub(super) async fn artifact_files(
        &self,
        model_name: &str,
        refs: &[ArtifactRef],
    ) -> Result<(Vec<(Artifact, Option<Id>)>, Vec<Id>)> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for r in refs {
            match r {
                ArtifactRef::Inline(a) => out.push((a.clone(), None)),
                ArtifactRef::Item(id) => match self.get_item(id).await {
                    Ok(item) => {
                        let art = artifact_of_item(&item, model_name);
                        out.push((art, Some(item.id)));
                    }
                    Err(StoreError::NotFound { .. }) => missing.push(id.clone()),
                    Err(e) => return Err(e),
                },
            }
        }
        Ok((out, missing))
    }

    /// `stem`, or `stem_v1`, `stem_v2`, ... whichever is free.
    async fn free_model_name(&self, stem: &str) -> Result<String> {
        let mut i = 0;
        while let Some(name) = rules::versioned_name(stem, i) {
            match self.model_by_name(&name).await {
                Err(StoreError::NotFound { .. }) => return Ok(name),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            i += 1;
        }
        Err(rules::names_exhausted(stem))
    }
}

#[async_trait]
impl Models for DataloopBackend {
    async fn create_model(&self, model: NewModel) -> Result<Model> {
        rules::check_name("model", &model.name)?;
        match self.model_by_name(&model.name).await {
            Ok(_) => return Err(rules::name_exists("model", &model.name)),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // dtlpy's models.create: the fields it always sends, the app's when one is configured.
        let mut body = json!({
            "name": model.name,
            "projectId": self.project(),
            "status": model.status.as_str(),
            "configuration": model.configuration,
            "metadata": if model.metadata.is_object() { model.metadata } else { json!({"system": {}}) },
            "labels": [],
            "tags": [],
            "scope": "project",
            "version": "1.0.0",
            "artifacts": [],
            "outputType": MODEL_OUTPUT_TYPE,
            "inputType": MODEL_INPUT_TYPE,
        });
        if let Some(app) = &self.cfg.model_app {
            body["packageId"] = json!(app.package_id);
            body["moduleName"] = json!(app.module_name);
            if let Some(a) = &app.app {
                body["app"] = a.clone();
            }
        }
        if let Some(d) = model.dataset_id {
            body["datasetId"] = json!(d);
        }
        if let Some(d) = model.description {
            body["description"] = json!(d);
        }
        let v = self
            .gate
            .json(Req::post(
                "/ml/models",
                body,
                Target::new("project", self.project()),
            ))
            .await?;
        self.finish_model(wire::model(v)?).await
    }

    async fn get_model(&self, id: &str) -> Result<Model> {
        let raw = self.model_raw(id).await?;
        self.finish_model(wire::model(Value::Object(raw))?).await
    }

    async fn model_by_name(&self, name: &str) -> Result<Model> {
        let found = self
            .models_where(Some(json!({"name": name})))
            .await?
            .into_iter()
            .find(|w| w.model.name == name)
            .ok_or_else(|| StoreError::not_found("model", name))?;
        self.finish_model(found).await
    }

    async fn list_models(&self) -> Result<Vec<Model>> {
        let mut out = Vec::new();
        for w in self.models_where(None).await? {
            out.push(self.finish_model(w).await?);
        }
        Ok(out)
    }

    /// `POST /ml/models/{id}/clone`, then polls while the clone is `cloning`. Dataloop's clone
    /// may carry the source's artifact references; they are dropped (the source keeps them),
    /// so the clone starts without artifacts as the trait requires.
    async fn clone_model(&self, id: &str, options: CloneModel) -> Result<Model> {
        let base_raw = self.model_raw(id).await?;
        // dtlpy's model.clone sends these from the source model.
        let inherited: Vec<(&str, Value)> = ["packageId", "outputType", "inputType"]
            .into_iter()
            .filter_map(|k| {
                base_raw
                    .get(k)
                    .filter(|v| !v.is_null())
                    .map(|v| (k, v.clone()))
            })
            .collect();
        let base = wire::model(Value::Object(base_raw))?.model;
        let stem = match options.name {
            Some(n) => n,
            None => format!(
                "{}_{}",
                base.name,
                crate::util::name_timestamp(crate::util::now_secs())
            ),
        };
        rules::check_name("model", &stem)?;
        let name = self.free_model_name(&stem).await?;
        let mut configuration = base.configuration.clone();
        for (k, v) in options.configuration.unwrap_or_default() {
            configuration.insert(k, v);
        }
        let subsets = options.subsets.unwrap_or_else(Subsets::default_filters);
        let status = options.status.unwrap_or(ModelStatus::Created);
        let metadata = wire::model_metadata_out(&json!({"system": {"subsets": subsets}}), Some(id));
        let mut body = json!({
            "name": name,
            "projectId": self.project(),
            "configuration": configuration,
            "status": status.as_str(),
            "metadata": metadata,
        });
        for (k, v) in inherited {
            body[k] = v;
        }
        if let Some(ds) = options.dataset_id.or(base.dataset_id) {
            body["datasetId"] = json!(ds);
        }
        if let Some(d) = options.description {
            body["description"] = json!(d);
        }
        let path = format!("/ml/models/{}/clone", id_seg("model", id)?);
        let mut clone = wire::model(
            self.gate
                .json(Req::post(path, body, Target::new("model", id)))
                .await?,
        )?;
        let started = Instant::now();
        while clone.model.status == ModelStatus::Cloning {
            if started.elapsed() > self.cfg.clone_timeout {
                return Err(StoreError::Unavailable(format!(
                    "model {} ({name}) is still cloning after {} s",
                    clone.model.id,
                    started.elapsed().as_secs()
                )));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
            clone = wire::model(Value::Object(self.model_raw(&clone.model.id).await?))?;
        }
        // Bring what the gate decided on its own back to what was asked.
        let fix_status = clone.model.status != status;
        let fix_artifacts = !clone.artifacts.is_empty();
        let fix_base = clone.model.base_model_id.as_deref() != Some(id);
        if fix_status || fix_artifacts || fix_base {
            let clone_id = clone.model.id.clone();
            let mut raw = self.model_raw(&clone_id).await?;
            raw.insert("status".into(), json!(status.as_str()));
            raw.insert("artifacts".into(), json!([]));
            let meta = raw.get("metadata").cloned().unwrap_or(json!({}));
            raw.insert("metadata".into(), wire::model_metadata_out(&meta, Some(id)));
            clone = self.patch_model(&clone_id, raw).await?;
        }
        self.finish_model(clone).await
    }

    /// GETs the model and PATCHes it back whole (as the SDK does), so fields cliptune does
    /// not know (package, app, ...) are preserved.
    async fn update_model(&self, model: &Model) -> Result<Model> {
        rules::check_name("model", &model.name)?;
        let mut raw = self.model_raw(&model.id).await?;
        let current = wire::model(Value::Object(raw.clone()))?.model;
        if current.name != model.name {
            match self.model_by_name(&model.name).await {
                Ok(other) if other.id != model.id => {
                    return Err(rules::name_exists("model", &model.name))
                }
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // dtlpy: model.update(system_metadata=True) adds ?system=true.
        let system = current.metadata.get("system") != model.metadata.get("system");
        raw.insert("name".into(), json!(model.name));
        raw.insert("status".into(), json!(model.status.as_str()));
        raw.insert(
            "configuration".into(),
            Value::Object(model.configuration.clone()),
        );
        raw.insert("datasetId".into(), json!(model.dataset_id));
        raw.insert(
            "metadata".into(),
            wire::model_metadata_out(&model.metadata, current.base_model_id.as_deref()),
        );
        raw.insert("labels".into(), json!(model.labels));
        raw.insert("description".into(), json!(model.description));
        raw.insert("tags".into(), json!(model.tags));
        let w = self.patch_model_with(&model.id, raw, system).await?;
        self.finish_model(w).await
    }

    /// Uploads every file to `/artifacts/models/<model name>/<path>` in the Binaries dataset
    /// (overwriting), then points the model at the new items, then deletes this model's
    /// stale artifact items. A crash in between leaves the model pointing at complete
    /// files (old or new), never at deleted ones.
    async fn upload_artifacts(&self, id: &str, dir: &Path) -> Result<Model> {
        let raw = self.model_raw(id).await?;
        let current = wire::model(Value::Object(raw.clone()))?;
        let name = current.model.name.clone();
        let dir_owned = dir.to_path_buf();
        let local = tokio::task::spawn_blocking(move || files::walk(&dir_owned))
            .await
            .map_err(|e| StoreError::Remote {
                status: 0,
                message: format!("hashing artifacts: {e}"),
            })??;
        if local.is_empty() {
            return Err(StoreError::invalid(
                format!("artifact directory {}", dir.display()),
                "has no files",
            ));
        }
        let binaries = self.binaries_id().await?;
        let prefix = format!("{ARTIFACTS_ROOT}/{name}");
        let mut new_ids = Vec::new();
        for f in &local {
            let remote = format!("{prefix}/{}", f.rel);
            let meta = json!({"user": {
                "sha256": f.sha256,
                "size": f.size,
                "artifactPath": f.rel,
                "modelId": id,
            }});
            let mut req = Req::new(
                reqwest::Method::POST,
                format!("/datasets/{}/items?mode=overwrite", seg(&binaries)),
                Target::new("dataset", &binaries),
            );
            req.body = Body::Multipart {
                fields: vec![
                    ("type".into(), "file".into()),
                    ("path".into(), remote.clone()),
                    ("metadata".into(), meta.to_string()),
                ],
                file_name: f.rel.rsplit('/').next().unwrap_or(&f.rel).to_string(),
                mime: "application/octet-stream".into(),
                content: Content::File(f.path.clone()),
            };
            req.transfer = true;
            req.idempotent = true;
            let item = wire::item(self.gate.json(req).await?)?;
            new_ids.push(item.id);
        }
        let mut raw = raw;
        raw.insert(
            "artifacts".into(),
            Value::Array(
                new_ids
                    .iter()
                    .map(|i| json!({"type": "item", "itemId": i}))
                    .collect(),
            ),
        );
        let updated = self.patch_model(id, raw).await?;
        // Stale files: this model's items (stamped with its id) under its folder that the new
        // list does not reference. Items of other models are never touched.
        let keep: HashSet<&Id> = new_ids.iter().collect();
        if glob_free(&prefix) {
            let filter = json!({"$and": [{"filename": format!("{prefix}/**")}, {"type": "file"}]});
            let stale = self
                .query_all(
                    &format!("/datasets/{}/query", seg(&binaries)),
                    "items",
                    &filter,
                    &Map::new(),
                    &Target::new("dataset", &binaries),
                )
                .await;
            match stale {
                Ok(items) => {
                    for it in items.into_iter().filter_map(|v| wire::item(v).ok()) {
                        let owner = it
                            .metadata
                            .get("user")
                            .and_then(|u| u.get("modelId"))
                            .and_then(Value::as_str);
                        if owner == Some(id) && !keep.contains(&it.id) {
                            let del = Req::delete(
                                format!("/items/{}", seg(&it.id)),
                                Target::new("item", &it.id),
                            );
                            if let Err(e) = self.gate.json(del).await {
                                tracing::warn!(
                                    "could not delete stale artifact {}: {e}",
                                    it.filename
                                );
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("could not list stale artifacts of model {id}: {e}"),
            }
        }
        self.finish_model(updated).await
    }

    /// Streams each artifact item into `dir/<path>` (via a `.partial` file, renamed when
    /// complete) and checks its SHA-256 when one was recorded.
    async fn download_artifacts(&self, id: &str, dir: &Path) -> Result<()> {
        let w = wire::model(Value::Object(self.model_raw(id).await?))?;
        let (files, missing) = self.artifact_files(&w.model.name, &w.artifacts).await?;
        if let Some(m) = missing.first() {
            return Err(StoreError::Corrupt(format!(
                "model {id} lists artifact item {m}, which does not exist"
            )));
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| StoreError::io(dir, e))?;
        for (art, item_id) in files {
            let Some(item_id) = item_id else {
                return Err(StoreError::Corrupt(format!(
                    "artifact {} of model {id} has no item to download",
                    art.path
                )));
            };
            let dest = files::safe_join(dir, &art.path)?;
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| StoreError::io(parent, e))?;
            }
            let mut partial = dest.clone().into_os_string();
            partial.push(".partial");
            let partial = std::path::PathBuf::from(partial);
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(|e| StoreError::io(&partial, e))?;
            let mut req = Req::get(
                format!("/items/{}/stream", seg(&item_id)),
                Target::new("item", &item_id),
            );
            req.transfer = true;
            let result = self.gate.download(req, &mut file, &partial).await;
            drop(file);
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            if !art.sha256.is_empty() {
                let p = partial.clone();
                let (_, sha) = tokio::task::spawn_blocking(move || files::hash_file(&p))
                    .await
                    .map_err(|e| StoreError::Remote {
                        status: 0,
                        message: format!("hashing {}: {e}", art.path),
                    })??;
                if sha != art.sha256 {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(StoreError::Corrupt(format!(
                        "artifact {} of model {id}: SHA-256 {sha} differs from the recorded {}",
                        art.path, art.sha256
                    )));
                }
            }
            tokio::fs::rename(&partial, &dest)
                .await
                .map_err(|e| StoreError::io(&dest, e))?;
        }
        Ok(())
    }

    async fn publish_metrics(&self, samples: &[MetricSample]) -> Result<usize> {
        if samples.is_empty() {
            return Ok(0);
        }
        rules::check_metric_samples(samples)?;
        let mut models = HashSet::new();
        for s in samples {
            if models.insert(s.model_id.as_str()) {
                // Names the model when it does not exist instead of a vague publish failure.
                self.model_raw(&s.model_id).await?;
            }
        }
        let body: Vec<Value> = samples
            .iter()
            .map(|s| {
                json!({
                    "modelId": s.model_id,
                    "datasetId": s.dataset_id,
                    "figure": s.figure,
                    "legend": s.legend,
                    "data": {"x": s.data.x, "y": s.data.y},
                })
            })
            .collect();
        let v = self
            .gate
            .json(Req::post(
                "/ml/metrics/publish",
                Value::Array(body),
                Target::new("model", samples[0].model_id.clone()),
            ))
            .await?;
        let failed = v.get("failed").map_or(0, |f| {
            f.as_u64()
                .or_else(|| f.as_array().map(|a| a.len() as u64))
                .unwrap_or(0)
        });
        if failed > 0 {
            return Err(StoreError::Remote {
                status: 200,
                message: format!(
                    "Dataloop refused {failed} of {} metric samples",
                    samples.len()
                ),
            });
        }
        let ok = v
            .get("succeeded")
            .and_then(|s| s.as_u64().or_else(|| s.as_array().map(|a| a.len() as u64)));
        Ok(ok.map_or(samples.len(), |n| n as usize))
    }

    async fn list_metrics(&self, model_id: &str) -> Result<Vec<MetricSample>> {
        self.model_raw(model_id).await?;
        let mut extra = Map::new();
        extra.insert("sort".into(), json!({"createdAt": "ascending"}));
        self.query_all(
            "/ml/metrics/query",
            "metrics",
            &json!({"modelId": model_id}),
            &extra,
            &Target::new("model", model_id),
        )
        .await?
        .into_iter()
        .map(wire::metric)
        .collect()
    }
}

/// An artifact entry from its item: the path cliptune stamped on upload, else the item's
/// path below `/artifacts/models/<model name>/`.
fn artifact_of_item(item: &Item, model_name: &str) -> Artifact {
    let user = item.metadata.get("user");
    let stamped = user
        .and_then(|u| u.get("artifactPath"))
        .and_then(Value::as_str)
        .map(String::from);
    let prefix = format!("{ARTIFACTS_ROOT}/{model_name}/");
    let path = stamped.unwrap_or_else(|| match item.filename.strip_prefix(&prefix) {
        Some(rel) => rel.to_string(),
        None => item.name.clone(),
    });
    let size = item
        .metadata
        .get("system")
        .and_then(|s| s.get("size"))
        .and_then(Value::as_u64)
        .or_else(|| user.and_then(|u| u.get("size")).and_then(Value::as_u64))
        .unwrap_or(0);
    let sha256 = user
        .and_then(|u| u.get("sha256"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Artifact { path, size, sha256 }
}
