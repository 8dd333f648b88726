//! Attached mode's routes (see [`crate::attached`]): the runner hands over each platform
//! execution, long-polls its progress (each answer is one relay to the agent) and relays
//! terminations.

use super::{JsonBody, Params};
use crate::attached::{AttachRequest, AttachedView};
use crate::error::{ErrorBody, Result};
use crate::executions::Worker;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use std::time::Duration;

/// The longest long poll: a runner relays progress at least this often, which is what
/// keeps a live execution from looking stale to another replica.
const MAX_WAIT_SECONDS: f64 = 10.0;

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct PollParams {
    /// Seconds to wait for a change first (0..=10, default 0).
    #[serde(default)]
    pub wait: Option<f64>,
}

#[utoipa::path(post, path = "/attached", tag = "attached", security(("bearer" = [])),
    request_body = AttachRequest,
    responses(
        (status = 202, description = "Queued for the platform's execution (or already here)", body = AttachedView),
        (status = 404, description = "No such execution, or an unknown entity in the input", body = ErrorBody),
        (status = 409, description = "Not attached mode, ended, or another service's execution", body = ErrorBody),
        (status = 422, description = "Bad input", body = ErrorBody),
    ))]
pub(super) async fn attach(
    State(w): State<Worker>,
    JsonBody(req): JsonBody<AttachRequest>,
) -> Result<(StatusCode, Json<AttachedView>)> {
    Ok((StatusCode::ACCEPTED, Json(w.attach(req).await?)))
}

#[utoipa::path(get, path = "/attached/{id}", tag = "attached", security(("bearer" = [])),
    params(PollParams, ("id" = String, Path, description = "The platform's execution id")),
    responses(
        (status = 200, description = "State, percent, message; output or error once ended", body = AttachedView),
        (status = 404, description = "Not handed over to this worker", body = ErrorBody),
    ))]
pub(super) async fn poll(
    State(w): State<Worker>,
    Path(id): Path<String>,
    Params(p): Params<PollParams>,
) -> Result<Json<AttachedView>> {
    let wait = p.wait.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&wait) {
        return Err(crate::WorkerError::input(
            "wait",
            format!("must be 0..={MAX_WAIT_SECONDS} seconds, got {wait}"),
        ));
    }
    Ok(Json(
        w.wait_attached(&id, Duration::from_secs_f64(wait)).await?,
    ))
}

#[utoipa::path(post, path = "/attached/{id}/terminate", tag = "attached", security(("bearer" = [])),
    params(("id" = String, Path, description = "The platform's execution id")),
    responses(
        (status = 200, description = "Stop requested (at the next step boundary)", body = AttachedView),
        (status = 404, description = "Not handed over to this worker", body = ErrorBody),
    ))]
pub(super) async fn terminate(
    State(w): State<Worker>,
    Path(id): Path<String>,
) -> Result<Json<AttachedView>> {
    Ok(Json(w.terminate_attached(&id)?))
}
