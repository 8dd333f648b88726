//! Pipelines and their variables in the embedded store.

use super::*;

fn variables_of(conn: &Connection, pipeline_id: &str) -> Result<Vec<Variable>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, type, value, description FROM variables WHERE pipeline_id = ?1 ORDER BY position",
    )?;
    let vars = stmt
        .query_map([pipeline_id], |r| {
            Ok(Variable {
                id: r.get(0)?,
                name: r.get(1)?,
                reference: pipeline_id.to_string(),
                var_type: r.get(2)?,
                value: json_col(r, 3)?,
                description: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(vars)
}

fn pipeline_by(conn: &Connection, col: &str, key: &str) -> Result<Pipeline> {
    let mut p = conn
        .query_row(
            &format!(
                "SELECT id, name, nodes, connections, start_nodes, created_at, updated_at FROM pipelines WHERE {col} = ?1"
            ),
            [key],
            |r| {
                let arr = |v: Value| -> Vec<Value> { serde_json::from_value(v).unwrap_or_default() };
                Ok(Pipeline {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    nodes: arr(json_col(r, 2)?),
                    connections: arr(json_col(r, 3)?),
                    start_nodes: arr(json_col(r, 4)?),
                    variables: Vec::new(),
                    created_at: r.get(5)?,
                    updated_at: r.get(6)?,
                })
            },
        )
        .optional()?
        .ok_or_else(|| StoreError::not_found("pipeline", key))?;
    p.variables = variables_of(conn, &p.id)?;
    Ok(p)
}

#[async_trait]
impl Pipelines for LocalStore {
    async fn create_pipeline(&self, p: NewPipeline) -> Result<Pipeline> {
        rules::check_new_pipeline(&p)?;
        self.db
            .write(move |t| {
                if name_taken(t, "pipelines", &p.name)? {
                    return Err(rules::name_exists("pipeline", &p.name));
                }
                let id = new_id();
                let now = now_rfc3339();
                t.execute(
                    "INSERT INTO pipelines (id, name, nodes, connections, start_nodes, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![id, p.name, to_json_text(&p.nodes), to_json_text(&p.connections), to_json_text(&p.start_nodes), now],
                )?;
                for (i, v) in p.variables.iter().enumerate() {
                    t.execute(
                        "INSERT INTO variables (id, pipeline_id, position, name, type, value, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![new_id(), id, i as i64, v.name, v.var_type, to_json_text(&v.value), v.description],
                    )?;
                }
                pipeline_by(t, "id", &id)
            })
            .await
    }

    async fn get_pipeline(&self, id: &str) -> Result<Pipeline> {
        let id = id.to_string();
        self.db.read(move |c| pipeline_by(c, "id", &id)).await
    }

    async fn pipeline_by_name(&self, name: &str) -> Result<Pipeline> {
        let name = name.to_string();
        self.db.read(move |c| pipeline_by(c, "name", &name)).await
    }

    async fn list_pipelines(&self) -> Result<Vec<Pipeline>> {
        self.db
            .read(|c| {
                let ids: Vec<String> = c
                    .prepare("SELECT id FROM pipelines ORDER BY name")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                ids.iter().map(|id| pipeline_by(c, "id", id)).collect()
            })
            .await
    }

    async fn get_variables(&self, pipeline_id: &str) -> Result<Vec<Variable>> {
        Ok(self.get_pipeline(pipeline_id).await?.variables)
    }

    async fn update_variables(
        &self,
        pipeline_id: &str,
        updates: &[VariableUpdate],
    ) -> Result<Vec<Variable>> {
        let pipeline_id = pipeline_id.to_string();
        let updates = updates.to_vec();
        self.db
            .write(move |t| {
                pipeline_by(t, "id", &pipeline_id)?;
                for u in &updates {
                    let n = t.execute(
                        "UPDATE variables SET value = ?3 WHERE pipeline_id = ?1 AND name = ?2",
                        params![pipeline_id, u.name, to_json_text(&u.value)],
                    )?;
                    if n == 0 {
                        return Err(StoreError::not_found(
                            "pipeline variable",
                            format!("{} (pipeline {pipeline_id})", u.name),
                        ));
                    }
                }
                t.execute(
                    "UPDATE pipelines SET updated_at = ?2 WHERE id = ?1",
                    params![pipeline_id, now_rfc3339()],
                )?;
                variables_of(t, &pipeline_id)
            })
            .await
    }

    async fn promote_model_variable(
        &self,
        pipeline_id: &str,
        variable: &str,
        model_id: &str,
    ) -> Result<Variable> {
        let (pipeline_id, variable, model_id) = (
            pipeline_id.to_string(),
            variable.to_string(),
            model_id.to_string(),
        );
        self.db
            .write(move |t| {
                let vars = variables_of(t, &pipeline_id)?;
                pipeline_by(t, "id", &pipeline_id)?;
                let var = vars.iter().find(|v| v.name == variable).ok_or_else(|| {
                    StoreError::not_found(
                        "pipeline variable",
                        format!("{variable} (pipeline {pipeline_id})"),
                    )
                })?;
                rules::check_model_variable(var)?;
                // Checked in the same transaction as the update: no window in which the
                // variable could point at a model whose artifacts are not stored.
                let model = model_by(t, "id", &model_id)?;
                rules::check_promotable(&variable, &model, !model.artifacts.is_empty())?;
                t.execute(
                    "UPDATE variables SET value = ?3 WHERE pipeline_id = ?1 AND name = ?2",
                    params![
                        pipeline_id,
                        variable,
                        to_json_text(&Value::String(model_id.clone()))
                    ],
                )?;
                t.execute(
                    "UPDATE pipelines SET updated_at = ?2 WHERE id = ?1",
                    params![pipeline_id, now_rfc3339()],
                )?;
                variables_of(t, &pipeline_id)?
                    .into_iter()
                    .find(|v| v.name == variable)
                    .ok_or_else(|| {
                        StoreError::Corrupt("variable vanished in its own transaction".into())
                    })
            })
            .await
    }
}
