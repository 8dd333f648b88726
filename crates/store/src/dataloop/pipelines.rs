//! Pipelines and their variables on Dataloop.

use super::*;

impl DataloopBackend {
    async fn pipeline_raw(&self, id: &str) -> Result<Pipeline> {
        let path = format!("/pipelines/{}", id_seg("pipeline", id)?);
        wire::pipeline(
            self.gate
                .json(Req::get(path, Target::new("pipeline", id)))
                .await?,
        )
    }

    /// PATCHes the whole variable list in the SDK's `{"variables": [...]}` form.
    async fn patch_variables(
        &self,
        pipeline: &Pipeline,
        vars: &[Variable],
    ) -> Result<Vec<Variable>> {
        let body: Vec<Value> = vars
            .iter()
            .map(|v| {
                let mut o = json!({
                    "name": v.name,
                    "type": v.var_type,
                    "value": v.value,
                    "reference": if v.reference.is_empty() { &pipeline.id } else { &v.reference },
                });
                if !v.id.is_empty() {
                    o["id"] = json!(v.id);
                }
                if let Some(d) = &v.description {
                    o["description"] = json!(d);
                }
                o
            })
            .collect();
        let path = format!("/pipelines/{}/variables", id_seg("pipeline", &pipeline.id)?);
        let answer = self
            .gate
            .json(Req::patch(
                path,
                json!({"variables": body}),
                Target::new("pipeline", &pipeline.id),
            ))
            .await?;
        // The answer is the pipeline; some gates may answer with the variables alone.
        let vars = match answer {
            Value::Object(ref m) if m.contains_key("variables") => {
                wire::pipeline(answer)?.variables
            }
            Value::Array(a) => a
                .into_iter()
                .map(|v| wire::variable(v, &pipeline.id))
                .collect::<Result<_>>()?,
            _ => self.pipeline_raw(&pipeline.id).await?.variables,
        };
        Ok(vars)
    }
}

#[async_trait]
impl Pipelines for DataloopBackend {
    async fn create_pipeline(&self, pipeline: NewPipeline) -> Result<Pipeline> {
        rules::check_new_pipeline(&pipeline)?;
        match self.pipeline_by_name(&pipeline.name).await {
            Ok(_) => return Err(rules::name_exists("pipeline", &pipeline.name)),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let vars: Vec<Value> = pipeline
            .variables
            .iter()
            .map(|v| {
                let mut o = json!({"name": v.name, "type": v.var_type, "value": v.value});
                if let Some(d) = &v.description {
                    o["description"] = json!(d);
                }
                o
            })
            .collect();
        let body = json!({
            "name": pipeline.name,
            "projectId": self.project(),
            "nodes": pipeline.nodes,
            "connections": pipeline.connections,
            "startNodes": pipeline.start_nodes,
            "variables": vars,
        });
        wire::pipeline(
            self.gate
                .json(Req::post(
                    "/pipelines",
                    body,
                    Target::new("project", self.project()),
                ))
                .await?,
        )
    }

    async fn get_pipeline(&self, id: &str) -> Result<Pipeline> {
        self.pipeline_raw(id).await
    }

    async fn pipeline_by_name(&self, name: &str) -> Result<Pipeline> {
        let filter = json!({"$and": [{"projectId": self.project()}, {"name": name}]});
        self.query_all(
            "/pipelines/query",
            "pipeline",
            &filter,
            &Map::new(),
            &Target::new("pipeline", name),
        )
        .await?
        .into_iter()
        .map(wire::pipeline)
        .find(|p| !matches!(p, Ok(p) if p.name != name))
        .unwrap_or_else(|| Err(StoreError::not_found("pipeline", name)))
    }

    async fn list_pipelines(&self) -> Result<Vec<Pipeline>> {
        self.query_all(
            "/pipelines/query",
            "pipeline",
            &json!({"projectId": self.project()}),
            &Map::new(),
            &Target::new("project", self.project()),
        )
        .await?
        .into_iter()
        .map(wire::pipeline)
        .collect()
    }

    async fn get_variables(&self, pipeline_id: &str) -> Result<Vec<Variable>> {
        Ok(self.pipeline_raw(pipeline_id).await?.variables)
    }

    /// All names are checked before the single PATCH, so either every value changes or none.
    async fn update_variables(
        &self,
        pipeline_id: &str,
        updates: &[VariableUpdate],
    ) -> Result<Vec<Variable>> {
        let pipeline = self.pipeline_raw(pipeline_id).await?;
        let mut vars = pipeline.variables.clone();
        for u in updates {
            let v = vars
                .iter_mut()
                .find(|v| v.name == u.name)
                .ok_or_else(|| StoreError::not_found("variable", &u.name))?;
            v.value = u.value.clone();
        }
        if updates.is_empty() {
            return Ok(vars);
        }
        self.patch_variables(&pipeline, &vars).await
    }

    /// Dataloop has no conditional update, so this checks first and writes last: the model
    /// must be usable (trained, pre-trained or deployed) with every artifact item present,
    /// and only then is the variable PATCHed. A model changed by someone else between the
    /// check and the PATCH is not detected (documented in docs/dataloop.md).
    async fn promote_model_variable(
        &self,
        pipeline_id: &str,
        variable: &str,
        model_id: &str,
    ) -> Result<Variable> {
        let pipeline = self.pipeline_raw(pipeline_id).await?;
        let var = pipeline
            .variable(variable)
            .ok_or_else(|| StoreError::not_found("variable", variable))?;
        rules::check_model_variable(var)?;
        let w = wire::model(Value::Object(self.model_raw(model_id).await?))?;
        rules::check_promotable(variable, &w.model, !w.artifacts.is_empty())?;
        let (_, missing) = self.artifact_files(&w.model.name, &w.artifacts).await?;
        if let Some(m) = missing.first() {
            return Err(StoreError::Conflict(format!(
                "artifact item {m} of model {model_id} is missing: {variable:?} keeps its value"
            )));
        }
        let vars: Vec<Variable> = pipeline
            .variables
            .iter()
            .map(|v| {
                let mut v = v.clone();
                if v.name == variable {
                    v.value = json!(model_id);
                }
                v
            })
            .collect();
        let after = self.patch_variables(&pipeline, &vars).await?;
        after
            .into_iter()
            .find(|v| v.name == variable)
            .ok_or_else(|| wire::bad_answer("pipeline", format!("variable {variable:?} vanished")))
    }
}
