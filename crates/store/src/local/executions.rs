//! Executions and their status log in the embedded store.

use super::*;

const EXEC_COLS: &str =
    "id, function_name, service_name, pipeline, input, output, status, latest, status_log, created_at, updated_at";

fn execution_row(r: &Row) -> rusqlite::Result<Execution> {
    let status: String = r.get(6)?;
    let status = ExecutionStatus::parse(&status).unwrap_or(ExecutionStatus::SystemFailure);
    let latest: StatusEntry = serde_json::from_value(json_col(r, 7)?).unwrap_or(StatusEntry {
        status,
        percent_complete: 0,
        message: None,
        error: None,
        timestamp: String::new(),
    });
    Ok(Execution {
        id: r.get(0)?,
        function_name: r.get(1)?,
        service_name: r.get(2)?,
        service_id: r.get(2)?,
        pipeline: serde_json::from_value(json_col(r, 3)?).ok(),
        input: json_col(r, 4)?,
        output: json_col(r, 5)?,
        status,
        latest_status: latest,
        status_log: serde_json::from_value(json_col(r, 8)?).unwrap_or_default(),
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

fn execution_by_id(conn: &Connection, id: &str) -> Result<Execution> {
    conn.query_row(
        &format!("SELECT {EXEC_COLS} FROM executions WHERE id = ?1"),
        [id],
        execution_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("execution", id))
}

fn save_execution(conn: &Connection, e: &Execution) -> Result<()> {
    conn.execute(
        "UPDATE executions SET output = ?2, status = ?3, latest = ?4, status_log = ?5, updated_at = ?6 WHERE id = ?1",
        params![
            e.id,
            to_json_text(&e.output),
            e.status.as_str(),
            to_json_text(&e.latest_status),
            to_json_text(&e.status_log),
            e.updated_at
        ],
    )?;
    Ok(())
}

#[async_trait]
impl Executions for LocalStore {
    async fn create_execution(&self, e: NewExecution) -> Result<Execution> {
        rules::check_new_execution(&e)?;
        self.db
            .write(move |t| {
                let id = new_id();
                let now = now_rfc3339();
                let entry = StatusEntry {
                    status: ExecutionStatus::Created,
                    percent_complete: 0,
                    message: None,
                    error: None,
                    timestamp: now.clone(),
                };
                t.execute(
                    "INSERT INTO executions (id, function_name, service_name, pipeline, pipeline_id, pipeline_execution_id, input, output, status, latest, status_log, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'null', 'created', ?8, ?9, ?10, ?10)",
                    params![
                        id,
                        e.function_name,
                        e.service_name,
                        e.pipeline.as_ref().map(to_json_text),
                        e.pipeline.as_ref().map(|p| p.id.clone()),
                        e.pipeline.as_ref().and_then(|p| p.execution_id.clone()),
                        to_json_text(&e.input),
                        to_json_text(&entry),
                        to_json_text(&vec![entry.clone()]),
                        now
                    ],
                )?;
                execution_by_id(t, &id)
            })
            .await
    }

    async fn get_execution(&self, id: &str) -> Result<Execution> {
        let id = id.to_string();
        self.db.read(move |c| execution_by_id(c, &id)).await
    }

    async fn list_executions(&self, q: &ExecutionQuery) -> Result<Vec<Execution>> {
        let q = q.clone();
        self.db
            .read(move |c| {
                let mut sql = format!("SELECT {EXEC_COLS} FROM executions WHERE 1");
                let mut params: Vec<String> = Vec::new();
                if let Some(s) = q.status {
                    sql.push_str(" AND status = ?");
                    params.push(s.as_str().into());
                }
                if let Some(f) = &q.function_name {
                    sql.push_str(" AND function_name = ?");
                    params.push(f.clone());
                }
                if let Some(p) = &q.pipeline_id {
                    sql.push_str(" AND pipeline_id = ?");
                    params.push(p.clone());
                }
                if let Some(p) = &q.pipeline_execution_id {
                    sql.push_str(" AND pipeline_execution_id = ?");
                    params.push(p.clone());
                }
                if let Some(s) = &q.service_id {
                    sql.push_str(" AND service_name = ?");
                    params.push(s.clone());
                }
                sql.push_str(" ORDER BY created_at DESC, rowid DESC");
                if q.limit > 0 {
                    sql.push_str(&format!(" LIMIT {}", q.limit));
                }
                let mut stmt = c.prepare(&sql)?;
                let v = stmt
                    .query_map(rusqlite::params_from_iter(params.iter()), execution_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(v)
            })
            .await
    }

    async fn progress_execution(&self, id: &str, p: ExecutionProgress) -> Result<Execution> {
        rules::check_progress(&p)?;
        let id = id.to_string();
        self.db
            .write(move |t| {
                let mut e = execution_by_id(t, &id)?;
                rules::check_not_finished(&id, e.status)?;
                let now = now_rfc3339();
                let status = p.status.unwrap_or(if e.status == ExecutionStatus::Created {
                    ExecutionStatus::InProgress
                } else {
                    e.status
                });
                let entry = StatusEntry {
                    status,
                    percent_complete: p
                        .percent_complete
                        .unwrap_or(e.latest_status.percent_complete),
                    message: p.message.or(e.latest_status.message.clone()),
                    error: None,
                    timestamp: now.clone(),
                };
                // The log records status changes; percent and message updates only move `latestStatus`.
                if status != e.status {
                    e.status_log.push(entry.clone());
                }
                e.status = status;
                e.latest_status = entry;
                if let Some(o) = p.output {
                    e.output = o;
                }
                e.updated_at = now;
                save_execution(t, &e)?;
                Ok(e)
            })
            .await
    }

    async fn finish_execution(
        &self,
        id: &str,
        status: ExecutionStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<Execution> {
        rules::check_final_status(status)?;
        let id = id.to_string();
        self.db
            .write(move |t| {
                let mut e = execution_by_id(t, &id)?;
                rules::check_not_finished(&id, e.status)?;
                let now = now_rfc3339();
                let entry = StatusEntry {
                    status,
                    percent_complete: if status == ExecutionStatus::Success {
                        100
                    } else {
                        e.latest_status.percent_complete
                    },
                    message: e.latest_status.message.clone(),
                    error,
                    timestamp: now.clone(),
                };
                e.status_log.push(entry.clone());
                e.status = status;
                e.latest_status = entry;
                if let Some(o) = output {
                    e.output = o;
                }
                e.updated_at = now;
                save_execution(t, &e)?;
                Ok(e)
            })
            .await
    }

    async fn rerun_execution(&self, id: &str) -> Result<Execution> {
        let id = id.to_string();
        self.db
            .write(move |t| {
                let mut e = execution_by_id(t, &id)?;
                rules::check_rerun(&id, e.status)?;
                let now = now_rfc3339();
                let entry = StatusEntry {
                    status: ExecutionStatus::Rerun,
                    percent_complete: 0,
                    message: Some("queued again".into()),
                    error: None,
                    timestamp: now.clone(),
                };
                e.status_log.push(entry.clone());
                e.status = ExecutionStatus::Rerun;
                e.latest_status = entry;
                e.updated_at = now;
                save_execution(t, &e)?;
                Ok(e)
            })
            .await
    }
}
