//! Dataset queries on Dataloop, and the project's Binaries dataset that holds artifacts.
//! The [`Datasets`] impl, datasets with their items, is in items.rs.

use super::*;

impl DataloopBackend {
    pub(super) async fn datasets_named(
        &self,
        name: Option<&str>,
        system: bool,
    ) -> Result<Vec<Dataset>> {
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
}
