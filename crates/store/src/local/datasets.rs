//! Datasets of the embedded store.

use super::*;

const DATASET_COLS: &str = "id, name, metadata, created_at, updated_at,
    (SELECT COUNT(*) FROM items i WHERE i.dataset_id = datasets.id AND i.type = 'file')";

fn dataset_row(r: &Row) -> rusqlite::Result<Dataset> {
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

impl LocalStore {
    pub(super) async fn create_dataset(&self, name: &str) -> Result<Dataset> {
        rules::check_name("dataset", name)?;
        let name = name.trim().to_string();
        self.db
            .write(move |t| {
                if name_taken(t, "datasets", &name)? {
                    return Err(rules::name_exists("dataset", &name));
                }
                let id = new_id();
                let now = now_rfc3339();
                t.execute(
                    "INSERT INTO datasets (id, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                    params![id, name, now],
                )?;
                dataset_by(t, "id", &id)
            })
            .await
    }

    pub(super) async fn get_dataset(&self, id: &str) -> Result<Dataset> {
        let id = id.to_string();
        self.db.read(move |c| dataset_by(c, "id", &id)).await
    }

    pub(super) async fn dataset_by_name(&self, name: &str) -> Result<Dataset> {
        let name = name.to_string();
        self.db.read(move |c| dataset_by(c, "name", &name)).await
    }

    pub(super) async fn list_datasets(&self) -> Result<Vec<Dataset>> {
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
}
