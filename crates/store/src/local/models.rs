//! Models, their artifacts (blobs) and metrics in the embedded store.

use super::*;

const MODEL_COLS: &str = "id, name, status, configuration, dataset_id, base_model_id, metadata,
    labels, description, tags, created_at, updated_at";

fn model_row(r: &Row) -> rusqlite::Result<Model> {
    let status: String = r.get(2)?;
    let configuration = match json_col(r, 3)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let strings = |v: Value| -> Vec<String> { serde_json::from_value(v).unwrap_or_default() };
    Ok(Model {
        id: r.get(0)?,
        name: r.get(1)?,
        status: ModelStatus::parse(&status).unwrap_or(ModelStatus::Failed),
        configuration,
        dataset_id: r.get(4)?,
        base_model_id: r.get(5)?,
        artifacts: Vec::new(),
        metadata: json_col(r, 6)?,
        labels: strings(json_col(r, 7)?),
        description: r.get(8)?,
        tags: strings(json_col(r, 9)?),
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

fn with_artifacts(conn: &Connection, mut m: Model) -> Result<Model> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, size, blob FROM artifacts WHERE model_id = ?1 ORDER BY path",
    )?;
    m.artifacts = stmt
        .query_map([&m.id], |r| {
            Ok(Artifact {
                path: r.get(0)?,
                size: r.get::<_, i64>(1)? as u64,
                sha256: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(m)
}

pub(super) fn model_by(conn: &Connection, col: &str, key: &str) -> Result<Model> {
    let m = conn
        .query_row(
            &format!("SELECT {MODEL_COLS} FROM models WHERE {col} = ?1"),
            [key],
            model_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::not_found("model", key))?;
    with_artifacts(conn, m)
}

/// Files under `dir`, relative `/`-separated paths, sorted.
fn walk_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| StoreError::io(&d, e))?;
        for e in entries {
            let e = e.map_err(|e| StoreError::io(&d, e))?;
            let p = e.path();
            let meta = std::fs::metadata(&p).map_err(|e| StoreError::io(&p, e))?;
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let rel = p.strip_prefix(dir).map_err(|_| {
                    StoreError::Corrupt(format!("{} outside {}", p.display(), dir.display()))
                })?;
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((rel.join("/"), p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `a/b.bin` under `dir`, refusing paths that would leave it.
fn artifact_dest(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(StoreError::Corrupt(format!(
            "artifact path {rel:?} leaves its folder"
        )));
    }
    Ok(dir.join(p))
}

#[async_trait]
impl Models for LocalStore {
    async fn create_model(&self, model: NewModel) -> Result<Model> {
        rules::check_name("model", &model.name)?;
        self.db
            .write(move |t| {
                if name_taken(t, "models", &model.name)? {
                    return Err(rules::name_exists("model", &model.name));
                }
                let id = new_id();
                let now = now_rfc3339();
                t.execute(
                    "INSERT INTO models (id, name, status, configuration, dataset_id, metadata, description, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                    params![
                        id,
                        model.name,
                        model.status.as_str(),
                        to_json_text(&model.configuration),
                        model.dataset_id,
                        to_json_text(&if model.metadata.is_null() { Value::Object(Map::new()) } else { model.metadata.clone() }),
                        model.description,
                        now
                    ],
                )?;
                model_by(t, "id", &id)
            })
            .await
    }

    async fn get_model(&self, id: &str) -> Result<Model> {
        let id = id.to_string();
        self.db.read(move |c| model_by(c, "id", &id)).await
    }

    async fn model_by_name(&self, name: &str) -> Result<Model> {
        let name = name.to_string();
        self.db.read(move |c| model_by(c, "name", &name)).await
    }

    async fn list_models(&self) -> Result<Vec<Model>> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {MODEL_COLS} FROM models ORDER BY created_at, id"
                ))?;
                let models: Vec<Model> = stmt
                    .query_map([], model_row)?
                    .collect::<rusqlite::Result<_>>()?;
                models.into_iter().map(|m| with_artifacts(c, m)).collect()
            })
            .await
    }

    async fn clone_model(&self, id: &str, options: CloneModel) -> Result<Model> {
        let id = id.to_string();
        let stamp = name_timestamp(now_secs());
        self.db
            .write(move |t| {
                let base = model_by(t, "id", &id)?;
                let wanted = options
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}_{stamp}", base.name));
                rules::check_name("model", &wanted)?;
                let mut n = 0;
                let name = loop {
                    let name = rules::versioned_name(&wanted, n)
                        .ok_or_else(|| rules::names_exhausted(&wanted))?;
                    if !name_taken(t, "models", &name)? {
                        break name;
                    }
                    n += 1;
                };
                let mut configuration = base.configuration.clone();
                if let Some(over) = &options.configuration {
                    for (k, v) in over {
                        configuration.insert(k.clone(), v.clone());
                    }
                }
                let mut clone = base.clone();
                clone.metadata = if base.metadata.is_object() {
                    base.metadata.clone()
                } else {
                    Value::Object(Map::new())
                };
                clone.set_subsets(&options.subsets.clone().unwrap_or_else(Subsets::default_filters));
                let new = new_id();
                let now = now_rfc3339();
                t.execute(
                    "INSERT INTO models (id, name, status, configuration, dataset_id, base_model_id, metadata, labels, description, tags, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                    params![
                        new,
                        name,
                        options.status.unwrap_or(ModelStatus::Created).as_str(),
                        to_json_text(&configuration),
                        options.dataset_id.clone().or(base.dataset_id.clone()),
                        base.id,
                        to_json_text(&clone.metadata),
                        to_json_text(&base.labels),
                        options.description.clone().or(base.description.clone()),
                        to_json_text(&base.tags),
                        now
                    ],
                )?;
                model_by(t, "id", &new)
            })
            .await
    }

    async fn update_model(&self, model: &Model) -> Result<Model> {
        let m = model.clone();
        rules::check_name("model", &m.name)?;
        self.db
            .write(move |t| {
                let other: Option<String> = t
                    .query_row("SELECT id FROM models WHERE name = ?1", [&m.name], |r| r.get(0))
                    .optional()?;
                if other.as_ref().is_some_and(|o| *o != m.id) {
                    return Err(rules::name_exists("model", &m.name));
                }
                let n = t.execute(
                    "UPDATE models SET name = ?2, status = ?3, configuration = ?4, dataset_id = ?5, metadata = ?6,
                     labels = ?7, description = ?8, tags = ?9, updated_at = ?10 WHERE id = ?1",
                    params![
                        m.id,
                        m.name,
                        m.status.as_str(),
                        to_json_text(&m.configuration),
                        m.dataset_id,
                        to_json_text(&m.metadata),
                        to_json_text(&m.labels),
                        m.description,
                        to_json_text(&m.tags),
                        now_rfc3339()
                    ],
                )?;
                if n == 0 {
                    return Err(StoreError::not_found("model", &m.id));
                }
                model_by(t, "id", &m.id)
            })
            .await
    }

    async fn upload_artifacts(&self, id: &str, dir: &Path) -> Result<Model> {
        self.get_model(id).await?;
        let files = walk_files(dir)?;
        if files.is_empty() {
            return Err(StoreError::invalid(
                format!("artifacts folder {}", dir.display()),
                "holds no files",
            ));
        }
        let blobs = self.blobs.clone();
        let staged = tokio_blocking(move || {
            let staged = files
                .iter()
                .map(|(rel, p)| Ok((rel.clone(), blobs.put_file(p, true)?)))
                .collect::<Result<Vec<_>>>()?;
            blobs.sync_dirs(staged.iter().map(|(_, b)| b.sha256.clone()))?;
            Ok(staged)
        })
        .await?;
        let id = id.to_string();
        self.db
            .write(move |t| {
                model_by(t, "id", &id)?;
                t.execute("DELETE FROM artifacts WHERE model_id = ?1", [&id])?;
                for (rel, b) in &staged {
                    t.execute(
                        "INSERT INTO artifacts (model_id, path, blob, size) VALUES (?1, ?2, ?3, ?4)",
                        params![id, rel, b.sha256, b.size as i64],
                    )?;
                }
                t.execute(
                    "UPDATE models SET updated_at = ?2 WHERE id = ?1",
                    params![id, now_rfc3339()],
                )?;
                model_by(t, "id", &id)
            })
            .await
    }

    async fn download_artifacts(&self, id: &str, dir: &Path) -> Result<()> {
        let model = self.get_model(id).await?;
        if model.artifacts.is_empty() {
            return Err(StoreError::Conflict(format!(
                "model {} ({}) has no artifacts",
                model.name, model.id
            )));
        }
        let blobs = self.blobs.clone();
        let dir = dir.to_path_buf();
        tokio_blocking(move || {
            for a in &model.artifacts {
                let dest = artifact_dest(&dir, &a.path)?;
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
                }
                let tmp = dest.with_extension("cliptune-part");
                std::fs::copy(blobs.path(&a.sha256), &tmp)
                    .map_err(|e| StoreError::io(blobs.path(&a.sha256), e))?;
                std::fs::rename(&tmp, &dest).map_err(|e| StoreError::io(&dest, e))?;
            }
            Ok(())
        })
        .await
    }

    async fn publish_metrics(&self, samples: &[MetricSample]) -> Result<usize> {
        rules::check_metric_samples(samples)?;
        let samples = samples.to_vec();
        self.db
            .write(move |t| {
                let now = now_rfc3339();
                for s in &samples {
                    model_by(t, "id", &s.model_id)?;
                    t.execute(
                        "INSERT INTO metrics (model_id, dataset_id, figure, legend, x, y, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![s.model_id, s.dataset_id, s.figure, s.legend, s.data.x, s.data.y, now],
                    )?;
                }
                Ok(samples.len())
            })
            .await
    }

    async fn list_metrics(&self, model_id: &str) -> Result<Vec<MetricSample>> {
        let model_id = model_id.to_string();
        self.db
            .read(move |c| {
                model_by(c, "id", &model_id)?;
                let mut stmt = c.prepare_cached(
                    "SELECT model_id, dataset_id, figure, legend, x, y, created_at FROM metrics WHERE model_id = ?1 ORDER BY seq",
                )?;
                let v = stmt
                    .query_map([&model_id], |r| {
                        Ok(MetricSample {
                            model_id: r.get(0)?,
                            dataset_id: r.get(1)?,
                            figure: r.get(2)?,
                            legend: r.get(3)?,
                            data: MetricPoint {
                                x: r.get(4)?,
                                y: r.get(5)?,
                            },
                            created_at: r.get(6)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }
}
