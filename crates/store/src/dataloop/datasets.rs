//! Datasets on Dataloop, and the project's Binaries dataset that holds artifacts.

use super::*;

impl DataloopBackend {
    async fn datasets_named(&self, name: Option<&str>, system: bool) -> Result<Vec<Dataset>> {
        let filter = match name {
            Some(n) => json!({"name": n}),
            None => json!({}),
        };
        let mut extra = self.project_scope();
        if system {
            extra.insert("systemSpace".into(), json!(true));
        }
        self.query_all(
            "/datasets/query",
            "datasets",
            &filter,
            &extra,
            &Target::new("dataset", name.unwrap_or("*")),
        )
        .await?
        .into_iter()
        .map(wire::dataset)
        // A glob-like name must match exactly, whatever the gate made of it.
        .filter(|d| !matches!((d, name), (Ok(d), Some(n)) if d.name != n))
        .collect()
    }

    /// The project's "Binaries" system dataset, looked up once.
    pub(super) async fn binaries_id(&self) -> Result<Id> {
        self.binaries
            .get_or_try_init(|| async {
                let name = self.cfg.binaries_dataset.clone();
                self.datasets_named(Some(&name), true)
                    .await?
                    .into_iter()
                    .next()
                    .map(|d| d.id)
                    .ok_or_else(|| StoreError::not_found("dataset", name))
            })
            .await
            .cloned()
    }

    pub(super) async fn create_dataset(&self, name: &str) -> Result<Dataset> {
        rules::check_name("dataset", name)?;
        if !self.datasets_named(Some(name), false).await?.is_empty() {
            return Err(rules::name_exists("dataset", name));
        }
        let v = self
            .gate
            .json(Req::post(
                "/datasets",
                json!({"name": name, "projects": [self.project()]}),
                Target::new("project", self.project()),
            ))
            .await?;
        wire::dataset(v)
    }

    pub(super) async fn get_dataset(&self, id: &str) -> Result<Dataset> {
        let path = format!("/datasets/{}", id_seg("dataset", id)?);
        wire::dataset(
            self.gate
                .json(Req::get(path, Target::new("dataset", id)))
                .await?,
        )
    }

    pub(super) async fn dataset_by_name(&self, name: &str) -> Result<Dataset> {
        self.datasets_named(Some(name), false)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::not_found("dataset", name))
    }

    pub(super) async fn list_datasets(&self) -> Result<Vec<Dataset>> {
        self.datasets_named(None, false).await
    }
}
