//! Items and their annotations in the embedded store, the upsert imports share, and the
//! [`Datasets`] impl (datasets with their items; dataset rows are in datasets.rs).

use super::datasets::{dataset_row, DATASET_COLS};
use super::*;

pub(crate) const ITEM_COLS: &str = "id, dataset_id, dir, filename, name, type, hidden, description,
    metadata, annotations_count, created_at, updated_at";

pub(crate) fn item_row(r: &Row) -> rusqlite::Result<Item> {
    let t: String = r.get(5)?;
    Ok(Item {
        id: r.get(0)?,
        dataset_id: r.get(1)?,
        dir: r.get(2)?,
        filename: r.get(3)?,
        name: r.get(4)?,
        item_type: if t == "dir" {
            ItemType::Dir
        } else {
            ItemType::File
        },
        hidden: r.get(6)?,
        description: r.get(7)?,
        metadata: json_col(r, 8)?,
        annotations_count: r.get::<_, i64>(9)? as u64,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

pub(crate) fn get_item_tx(conn: &Connection, id: &str) -> Result<Item> {
    conn.query_row(
        &format!("SELECT {ITEM_COLS} FROM items WHERE id = ?1"),
        [id],
        item_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("item", id))
}

/// An item ready to store: content already in the blob store.
#[derive(Debug, Clone)]
pub(crate) struct StagedItem {
    pub filename: String,
    pub blob: BlobRef,
    pub mimetype: String,
    pub description: Option<String>,
    pub metadata: Value,
    pub hidden: bool,
    /// Keep this id for a new item when it is free (imports from Dataloop exports).
    pub preferred_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Created,
    Updated,
    Unchanged,
}

/// Inserts or updates the item with this filename in the dataset. Updating keeps the id
/// and `createdAt`; identical content and fields leave the row untouched.
pub(crate) fn upsert_item_tx(
    conn: &Connection,
    dataset_id: &str,
    staged: &StagedItem,
) -> Result<(Item, Change)> {
    let (filename, dir, name) = normalize_filename(&staged.filename)?;
    let mut metadata = Value::Object(Map::new());
    merge_metadata(&mut metadata, &staged.metadata);
    set_path(
        &mut metadata,
        &["system", "mimetype"],
        Value::String(staged.mimetype.clone()),
    );
    set_path(
        &mut metadata,
        &["system", "size"],
        Value::from(staged.blob.size),
    );
    let metadata_text = to_json_text(&metadata);
    // (id, blob, description, metadata, hidden) of the item already at this filename.
    type Existing = (String, Option<String>, Option<String>, String, bool);
    let existing: Option<Existing> = conn
        .query_row(
            "SELECT id, blob, description, metadata, hidden FROM items WHERE dataset_id = ?1 AND filename = ?2",
            params![dataset_id, filename],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let now = now_rfc3339();
    let (id, change) = match existing {
        Some((id, blob, desc, meta, hidden)) => {
            let same = blob.as_deref() == Some(staged.blob.sha256.as_str())
                && desc == staged.description
                && serde_json::from_str::<Value>(&meta).ok().as_ref() == Some(&metadata)
                && hidden == staged.hidden;
            if !same {
                conn.execute(
                    "UPDATE items SET blob = ?2, description = ?3, metadata = ?4, hidden = ?5, updated_at = ?6 WHERE id = ?1",
                    params![id, staged.blob.sha256, staged.description, metadata_text, staged.hidden, now],
                )?;
            }
            (
                id,
                if same {
                    Change::Unchanged
                } else {
                    Change::Updated
                },
            )
        }
        None => {
            let id = match &staged.preferred_id {
                Some(p) if crate::is_id(p) && !id_taken(conn, p)? => p.clone(),
                _ => new_id(),
            };
            conn.execute(
                "INSERT INTO items (id, dataset_id, dir, filename, name, type, hidden, description, metadata, blob, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'file', ?6, ?7, ?8, ?9, ?10, ?10)",
                params![id, dataset_id, dir, filename, name, staged.hidden, staged.description, metadata_text, staged.blob.sha256, now],
            )?;
            (id, Change::Created)
        }
    };
    Ok((get_item_tx(conn, &id)?, change))
}

fn id_taken(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM items WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(crate) fn annotation_row(r: &Row) -> rusqlite::Result<Annotation> {
    Ok(Annotation {
        id: r.get(0)?,
        item_id: r.get(1)?,
        dataset_id: r.get(2)?,
        annotation_type: r.get(3)?,
        label: r.get(4)?,
        coordinates: json_col(r, 5)?,
        metadata: json_col(r, 6)?,
        created_at: r.get(7)?,
    })
}

pub(crate) fn add_annotation_tx(
    conn: &Connection,
    item: &Item,
    a: &NewAnnotation,
) -> Result<Annotation> {
    let id = new_id();
    let now = now_rfc3339();
    conn.execute(
        "INSERT INTO annotations (id, item_id, dataset_id, type, label, coordinates, metadata, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id,
            item.id,
            item.dataset_id,
            a.annotation_type,
            a.label,
            to_json_text(&a.coordinates),
            to_json_text(&a.metadata),
            now
        ],
    )?;
    conn.execute(
        "UPDATE items SET annotations_count = (SELECT COUNT(*) FROM annotations WHERE item_id = ?1) WHERE id = ?1",
        [&item.id],
    )?;
    Ok(Annotation {
        id,
        item_id: item.id.clone(),
        dataset_id: item.dataset_id.clone(),
        annotation_type: a.annotation_type.clone(),
        label: a.label.clone(),
        coordinates: a.coordinates.clone(),
        metadata: a.metadata.clone(),
        created_at: now,
    })
}

/// Replaces an item's free-text annotations by `texts` (used by idempotent imports).
pub(crate) fn set_free_text_tx(conn: &Connection, item: &Item, texts: &[String]) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT coordinates FROM annotations WHERE item_id = ?1 AND type = 'text' AND label = 'free-text' ORDER BY created_at, id",
    )?;
    let current: Vec<Value> = stmt
        .query_map([&item.id], |r| json_col(r, 0))?
        .collect::<rusqlite::Result<_>>()?;
    let wanted: Vec<Value> = texts.iter().map(|t| Value::String(t.clone())).collect();
    if current == wanted {
        return Ok(false);
    }
    conn.execute(
        "DELETE FROM annotations WHERE item_id = ?1 AND type = 'text' AND label = 'free-text'",
        [&item.id],
    )?;
    for t in texts {
        add_annotation_tx(conn, item, &NewAnnotation::free_text(t.clone()))?;
    }
    conn.execute(
        "UPDATE items SET annotations_count = (SELECT COUNT(*) FROM annotations WHERE item_id = ?1) WHERE id = ?1",
        [&item.id],
    )?;
    Ok(true)
}

#[async_trait]
impl Datasets for LocalStore {
    fn backend_name(&self) -> &'static str {
        "local"
    }

    async fn create_dataset(&self, name: &str) -> Result<Dataset> {
        rules::check_name("dataset", name)?;
        let name = name.trim().to_string();
        self.db
            .write(move |t| {
                if name_taken(t, "datasets", &name)? {
                    return Err(rules::name_exists("dataset", &name));
                }
                insert_dataset(t, &name)
            })
            .await
    }

    async fn get_dataset(&self, id: &str) -> Result<Dataset> {
        let id = id.to_string();
        self.db.read(move |c| dataset_by(c, "id", &id)).await
    }

    async fn dataset_by_name(&self, name: &str) -> Result<Dataset> {
        let name = name.to_string();
        self.db.read(move |c| dataset_by(c, "name", &name)).await
    }

    async fn list_datasets(&self) -> Result<Vec<Dataset>> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {DATASET_COLS} FROM datasets ORDER BY name"
                ))?;
                let v = stmt
                    .query_map([], dataset_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn upload_item(&self, dataset_id: &str, item: NewItem) -> Result<Item> {
        let (filename, _, _) = normalize_filename(&item.filename)?;
        rules::check_metadata(format_args!("item {filename}"), &item.metadata)?;
        let blob = self.blobs.put_bytes(&item.bytes, true)?;
        self.blobs.sync_dirs([&blob.sha256])?;
        let staged = StagedItem {
            mimetype: item
                .mimetype
                .clone()
                .unwrap_or_else(|| guess_mimetype(&item.filename).to_string()),
            filename: item.filename,
            blob,
            description: item.description,
            metadata: item.metadata,
            hidden: item.hidden,
            preferred_id: None,
        };
        let dataset_id = dataset_id.to_string();
        self.db
            .write(move |t| {
                dataset_by(t, "id", &dataset_id)?;
                Ok(upsert_item_tx(t, &dataset_id, &staged)?.0)
            })
            .await
    }

    async fn get_item(&self, id: &str) -> Result<Item> {
        let id = id.to_string();
        self.db.read(move |c| get_item_tx(c, &id)).await
    }

    async fn update_item(&self, item: &Item) -> Result<Item> {
        let mut item = item.clone();
        rules::check_update_metadata(&item)?;
        self.db
            .write(move |t| {
                let stored: Option<String> = t
                    .query_row(
                        "SELECT metadata FROM items WHERE id = ?1",
                        params![item.id],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(stored) = stored else {
                    return Err(StoreError::not_found("item", &item.id));
                };
                let mut metadata: Value = serde_json::from_str(&stored).unwrap_or(Value::Null);
                merge_metadata(&mut metadata, &item.metadata);
                item.metadata = metadata;
                let n = t.execute(
                    "UPDATE items SET description = ?2, metadata = ?3, hidden = ?4, updated_at = ?5 WHERE id = ?1",
                    params![
                        item.id,
                        item.description,
                        to_json_text(&item.metadata),
                        item.hidden,
                        now_rfc3339()
                    ],
                )?;
                if n == 0 {
                    return Err(StoreError::not_found("item", &item.id));
                }
                get_item_tx(t, &item.id)
            })
            .await
    }

    async fn query_items(&self, dataset_id: &str, query: &ItemQuery) -> Result<ItemPage> {
        rules::check_page_size(query.page_size)?;
        // A bare filter or a whole body (a model's subsets are stored as Dataloop bodies).
        let filter = Filter::parse_given(query.filter.as_ref())?;
        let (where_sql, mut params) = filter.to_sql();
        let dataset_id = dataset_id.to_string();
        let (page, page_size) = (query.page, query.page_size);
        self.db
            .read(move |c| {
                dataset_by(c, "id", &dataset_id)?;
                params.insert(0, rusqlite::types::Value::Text(dataset_id.clone()));
                let total: i64 = c.query_row(
                    &format!("SELECT COUNT(*) FROM items WHERE dataset_id = ? AND {where_sql}"),
                    rusqlite::params_from_iter(params.iter()),
                    |r| r.get(0),
                )?;
                let offset = u64::from(page) * u64::from(page_size);
                let mut stmt = c.prepare(&format!(
                    "SELECT {ITEM_COLS} FROM items WHERE dataset_id = ? AND {where_sql}
                     ORDER BY filename LIMIT {page_size} OFFSET {offset}"
                ))?;
                let items: Vec<Item> = stmt
                    .query_map(rusqlite::params_from_iter(params.iter()), item_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(ItemPage {
                    has_next_page: offset + (items.len() as u64) < total as u64,
                    items,
                    total_items_count: total as u64,
                    page,
                })
            })
            .await
    }

    async fn item_bytes(&self, id: &str) -> Result<Vec<u8>> {
        let path = self.item_path(id).await?;
        tokio_read(path).await
    }

    async fn annotations(&self, item_id: &str) -> Result<Vec<Annotation>> {
        let item_id = item_id.to_string();
        self.db
            .read(move |c| {
                get_item_tx(c, &item_id)?;
                let mut stmt = c.prepare_cached(
                    "SELECT id, item_id, dataset_id, type, label, coordinates, metadata, created_at
                     FROM annotations WHERE item_id = ?1 ORDER BY created_at, id",
                )?;
                let v = stmt
                    .query_map([&item_id], annotation_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn add_annotation(&self, item_id: &str, annotation: NewAnnotation) -> Result<Annotation> {
        let item_id = item_id.to_string();
        self.db
            .write(move |t| {
                let item = get_item_tx(t, &item_id)?;
                add_annotation_tx(t, &item, &annotation)
            })
            .await
    }
}
