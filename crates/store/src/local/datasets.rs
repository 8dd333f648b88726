//! Dataset rows of the embedded store. The [`Datasets`] impl, datasets with their items,
//! is in items.rs.

use super::*;

pub(super) const DATASET_COLS: &str = "id, name, metadata, created_at, updated_at,
    (SELECT COUNT(*) FROM items i WHERE i.dataset_id = datasets.id AND i.type = 'file')";

pub(super) fn dataset_row(r: &Row) -> rusqlite::Result<Dataset> {
    Ok(Dataset {
        id: r.get(0)?,
        name: r.get(1)?,
        metadata: json_col(r, 2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        items_count: r.get::<_, i64>(5)? as u64,
    })
}

pub(crate) fn dataset_by(conn: &Connection, col: &str, key: &str) -> Result<Dataset> {
    conn.query_row(
        &format!("SELECT {DATASET_COLS} FROM datasets WHERE {col} = ?1"),
        [key],
        dataset_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("dataset", key))
}

/// Inserts a dataset named `name` (checked and free: the caller's part) and returns it.
pub(crate) fn insert_dataset(conn: &Connection, name: &str) -> Result<Dataset> {
    let id = new_id();
    let now = now_rfc3339();
    conn.execute(
        "INSERT INTO datasets (id, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
        params![id, name, now],
    )?;
    dataset_by(conn, "id", &id)
}
