//! Items and annotations on Dataloop, and the [`Datasets`] impl (datasets with their
//! items; the dataset queries it builds on are in datasets.rs).

use super::*;

impl DataloopBackend {
    /// `PATCH /items/{id}` with the difference between `current` (as the gate has it) and
    /// `wanted`, whose metadata is merged into the current one as `update_item` promises.
    /// Nothing to change: no request.
    async fn patch_item(&self, current: &Item, wanted: &Item) -> Result<Item> {
        let mut metadata = current.metadata.clone();
        crate::util::merge_metadata(&mut metadata, &wanted.metadata);
        let fields = |description: &Option<String>, metadata: &Value, hidden: bool| {
            json!({
                "description": description,
                "metadata": metadata,
                "hidden": hidden,
            })
        };
        let Some(patch) = wire::diff(
            &fields(&current.description, &current.metadata, current.hidden),
            &fields(&wanted.description, &metadata, wanted.hidden),
        ) else {
            return Ok(current.clone());
        };
        let system = patch
            .get("metadata")
            .is_some_and(|m| m.get("system").is_some());
        let path = format!(
            "/items/{}{}",
            id_seg("item", &current.id)?,
            if system { "?system=true" } else { "" }
        );
        wire::item(
            self.gate
                .json(Req::patch(path, patch, Target::new("item", &current.id)))
                .await?,
        )
    }
}

#[async_trait]
impl Datasets for DataloopBackend {
    fn backend_name(&self) -> &'static str {
        "dataloop"
    }

    async fn create_dataset(&self, name: &str) -> Result<Dataset> {
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

    async fn get_dataset(&self, id: &str) -> Result<Dataset> {
        let path = format!("/datasets/{}", id_seg("dataset", id)?);
        wire::dataset(
            self.gate
                .json(Req::get(path, Target::new("dataset", id)))
                .await?,
        )
    }

    async fn dataset_by_name(&self, name: &str) -> Result<Dataset> {
        self.datasets_named(Some(name), false)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::not_found("dataset", name))
    }

    async fn list_datasets(&self) -> Result<Vec<Dataset>> {
        self.datasets_named(None, false).await
    }

    /// Multipart upload with `mode=overwrite` (an existing filename is replaced in place);
    /// a hidden item is then PATCHed hidden, as the upload form has no such field.
    async fn upload_item(&self, dataset_id: &str, item: NewItem) -> Result<Item> {
        let ds = id_seg("dataset", dataset_id)?;
        // Same rules as the embedded store, so both backends accept the same names.
        let (filename, _, name) = rules::normalize_filename(&item.filename)?;
        let mime = item
            .mimetype
            .clone()
            .unwrap_or_else(|| crate::util::guess_mimetype(&filename).to_string());
        let mut fields = vec![
            ("type".to_string(), "file".to_string()),
            ("path".to_string(), filename.clone()),
        ];
        rules::check_metadata(format_args!("item {filename}"), &item.metadata)?;
        if item.metadata.is_object() {
            fields.push(("metadata".into(), item.metadata.to_string()));
        }
        if let Some(d) = &item.description {
            fields.push(("description".into(), d.clone()));
        }
        let mut req = Req::new(
            reqwest::Method::POST,
            format!("/datasets/{ds}/items?mode=overwrite"),
            Target::new("dataset", dataset_id),
        );
        req.body = Body::Multipart {
            fields,
            file_name: name,
            mime,
            content: Content::Bytes(item.bytes),
        };
        req.transfer = true;
        // Overwrite mode makes a resend harmless.
        req.idempotent = true;
        let out = wire::item(self.gate.json(req).await?)?;
        if item.hidden && !out.hidden {
            let hidden = Item {
                hidden: true,
                ..out.clone()
            };
            return self.patch_item(&out, &hidden).await;
        }
        Ok(out)
    }

    async fn get_item(&self, id: &str) -> Result<Item> {
        let path = format!("/items/{}", id_seg("item", id)?);
        wire::item(
            self.gate
                .json(Req::get(path, Target::new("item", id)))
                .await?,
        )
    }

    /// Reads the item, then PATCHes only what differs (dtlpy's `items.update` sends its
    /// `DictDiffer` diff), adding `?system=true` only when that touches `metadata.system`.
    async fn update_item(&self, item: &Item) -> Result<Item> {
        rules::check_update_metadata(item)?;
        let current = self.get_item(&item.id).await?;
        self.patch_item(&current, item).await
    }

    async fn query_items(&self, dataset_id: &str, query: &ItemQuery) -> Result<ItemPage> {
        let ds = id_seg("dataset", dataset_id)?;
        rules::check_page_size(query.page_size)?;
        // A whole body (a model's stored subsets) contributes its filter, never itself.
        let filter = match &query.filter {
            Some(f) => crate::dql::body_filter(f)?,
            None => crate::dql::default_filter(),
        };
        let mut extra = Map::new();
        // A stable order, so paging neither skips nor repeats items.
        extra.insert("sort".into(), json!({"filename": "ascending"}));
        let p = self
            .query_page(
                &format!("/datasets/{ds}/query"),
                "items",
                &filter,
                query.page,
                query.page_size,
                &extra,
                &Target::new("dataset", dataset_id),
            )
            .await?;
        Ok(ItemPage {
            items: p.items.into_iter().map(wire::item).collect::<Result<_>>()?,
            total_items_count: p.total,
            has_next_page: p.has_next,
            page: query.page,
        })
    }

    async fn item_bytes(&self, id: &str) -> Result<Vec<u8>> {
        let mut req = Req::get(
            format!("/items/{}/stream", id_seg("item", id)?),
            Target::new("item", id),
        );
        req.transfer = true;
        self.gate.bytes(req).await
    }

    async fn annotations(&self, item_id: &str) -> Result<Vec<Annotation>> {
        let path = format!("/items/{}/annotations", id_seg("item", item_id)?);
        let v = self
            .gate
            .json(Req::get(path, Target::new("item", item_id)))
            .await?;
        wire::list(v, "annotations")?
            .into_iter()
            .map(|a| wire::annotation(a, item_id))
            .collect()
    }

    async fn add_annotation(&self, item_id: &str, annotation: NewAnnotation) -> Result<Annotation> {
        let path = format!("/items/{}/annotations", id_seg("item", item_id)?);
        let mut a = json!({
            "type": annotation.annotation_type,
            "label": annotation.label,
            "coordinates": annotation.coordinates,
        });
        if !annotation.metadata.is_null() {
            a["metadata"] = annotation.metadata;
        }
        let v = self
            .gate
            .json(Req::post(path, json!([a]), Target::new("item", item_id)))
            .await?;
        wire::annotation(wire::first(v, "annotation")?, item_id)
    }
}
