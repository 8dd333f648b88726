//! The HTTP API (`cliptune serve`): thin handlers that translate requests into calls on
//! [`Worker`] and errors into `{error, error_type}` bodies (see [`crate::error`]).
//!
//! Every route but `/health` needs `Authorization: Bearer <CLIPTUNE_API_TOKEN>` when a
//! token is configured. Bodies larger than `max_body_bytes` answer 413. Long work (train,
//! embed a dataset, pipeline runs) answers 202 with the execution; `?wait=true` answers when
//! it has ended (200), or after `timeout` seconds with 202 and the execution as it is then.

pub mod api;
mod attached;
pub mod online;

use crate::error::{ErrorBody, ErrorKind, Result, WorkerError};
use crate::executions::{Function, Worker};
use crate::nodes::{CreateModelInput, TrainInput, UpdateVariableInput};
use api::*;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use cliptune_store::{Execution, ExecutionQuery, ExecutionStatus};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::future::Future;
use std::time::{Duration, Instant};
use utoipa::OpenApi;

/// The generated OpenAPI document (committed as `openapi.json`; a test keeps them equal).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cliptune worker",
        description = "Pipeline nodes (create model, train, update variable, embed), executions and pipelines of cliptune. Errors are {error, error_type}.",
        license(name = "MIT")
    ),
    paths(
        health, ready, info, metrics, openapi_json,
        train, embed, create_model, update_variable,
        create_execution, list_executions, get_execution, terminate_execution,
        execute_pipeline, get_pipeline, patch_variables,
        attached::attach, attached::poll, attached::terminate,
        online::search, online::list_models, online::list_datasets, online::model_metrics, online::item_stream,
    ),
    components(schemas(
        ErrorBody, Function, Health, Ready, Info, Limits, ExecutionRequest, ExecutionView,
        TrainInput, CreateModelInput, UpdateVariableInput, EmbedBody,
        StatusView, PipelineExecuteRequest, VariableValue, OnlineEmbedRequest, OnlineEmbedResponse,
        online::SearchRequest, online::SearchResponse, online::SearchTiming, online::ModelRef, crate::search::Hit,
        online::ModelList, online::ModelSummary, online::DatasetSummary,
        crate::attached::AttachRequest, crate::attached::AttachedView,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "nodes", description = "The pipeline template's nodes, as functions"),
        (name = "executions", description = "Dataloop-style executions"),
        (name = "pipelines", description = "Pipelines and their variables"),
        (name = "service", description = "Health, readiness, info, metrics"),
        (name = "search", description = "Semantic search and what the search page reads"),
        (name = "attached", description = "Attached mode: nodes run for the platform's executions (dataloop/runner.py)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as committed: pretty JSON with a trailing newline.
pub fn openapi_document() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

/// The router with every route, auth, the body limit and request metrics.
pub fn router(worker: Worker) -> Router {
    let limit = worker.config.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/train", post(train))
        .route("/embed", post(embed))
        .route("/create-model", post(create_model))
        .route("/update-variable", post(update_variable))
        .route("/executions", post(create_execution).get(list_executions))
        .route("/executions/{id}", get(get_execution))
        .route("/executions/{id}/terminate", post(terminate_execution))
        .route("/attached", post(attached::attach))
        .route("/attached/{id}", get(attached::poll))
        .route("/attached/{id}/terminate", post(attached::terminate))
        .route("/pipelines/{id}", get(get_pipeline))
        .route("/pipelines/{id}/execute", post(execute_pipeline))
        .route("/pipelines/{id}/variables", patch(patch_variables))
        .route("/search", post(online::search))
        .route("/models", get(online::list_models))
        .route("/models/{id}/metrics", get(online::model_metrics))
        .route("/datasets", get(online::list_datasets))
        .route("/items/{id}/stream", get(online::item_stream))
        .route("/", get(online::page))
        .route("/training", get(online::page))
        .route("/ui/app.js", get(online::app_js))
        .route("/ui/style.css", get(online::style_css))
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(worker.clone(), auth))
        .layer(middleware::from_fn_with_state(worker.clone(), record))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(online::Online::new(&worker)))
        .with_state(worker)
}

/// Serves until `shutdown` resolves, then drains the worker (running executions finish or
/// stop at a step boundary) before the server stops answering.
///
/// Connections are served by hyper directly because `axum::serve` sets no header-read
/// timeout: a client that sends half its headers would hold a connection (and a task)
/// forever. Here it is closed after `header_timeout_seconds`.
pub async fn serve(
    worker: Worker,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = router(worker.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(worker.config.header_timeout_seconds));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // The server keeps answering while the worker drains, so clients can follow their
    // executions to the end.
    let drained = {
        let worker = worker.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining executions");
            worker.shutdown().await;
        }
    };
    tokio::pin!(drained);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut drained => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn auth(State(worker): State<Worker>, request: Request, next: Next) -> Response {
    // Blank tokens never get here (`WorkerConfig::check_auth` refuses them at start-up).
    let Some(token) = worker.config.api_token.as_deref() else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" || online::is_public_asset(request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match given {
        Some(g) if constant_time_eq(g.trim().as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => unauthorized("invalid bearer token"),
        None => unauthorized("missing `Authorization: Bearer <token>` header"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = WorkerError::Unauthorized(message.into()).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn record(State(worker): State<Worker>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    worker.metrics.record_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn not_found(request: Request) -> WorkerError {
    WorkerError::NotFound(format!(
        "no route {} {} (see GET /openapi.json)",
        request.method(),
        request.uri().path()
    ))
}

/// A JSON body: any content type, errors in our shape (413 past the limit, 400 when not
/// JSON, 422 when the JSON has the wrong shape). An empty body reads as `null`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = WorkerError;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                WorkerError::PayloadTooLarge(rejection.body_text())
            } else {
                WorkerError::BadRequest(rejection.body_text())
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &bytes
        };
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| WorkerError::BadRequest(format!("the body is not JSON: {e}")))?;
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| WorkerError::input("body", e.to_string()))
    }
}

/// A query string, with errors in our shape (axum answers plain text).
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = WorkerError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Params(v))
            .map_err(|rejection| WorkerError::input("query", rejection.body_text()))
    }
}

/// Answers the framework gives on its own (405 for a wrong method, a path it cannot parse)
/// get the `{error, error_type}` shape too, so clients parse one shape for every error.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let kind = match status {
        StatusCode::BAD_REQUEST => ErrorKind::BadRequest,
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorKind::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
        s if s.is_server_error() => ErrorKind::Internal,
        _ => ErrorKind::BadRequest,
    };
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let body = ErrorBody {
        error,
        error_type: kind.as_str().into(),
    };
    let mut out = (status, Json(body)).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct WaitParams {
    /// Answer only when the execution has ended (or `timeout` passed).
    #[serde(default)]
    pub wait: bool,
    /// Seconds to wait with `wait=true` (default 600).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// 202 with the execution, or with `wait` 200 once it has ended.
async fn answer(worker: &Worker, execution: Execution, params: &WaitParams) -> Result<Response> {
    if !params.wait {
        return Ok((StatusCode::ACCEPTED, Json(ExecutionView::from(execution))).into_response());
    }
    let limit = Duration::from_secs(params.timeout.unwrap_or(600));
    match tokio::time::timeout(limit, worker.wait(&execution.id)).await {
        Ok(done) => {
            let done = done?;
            let code = if done.status.is_terminal() {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok((code, Json(ExecutionView::from(done))).into_response())
        }
        Err(_) => {
            let now = worker.get(&execution.id).await?;
            Ok((StatusCode::ACCEPTED, Json(ExecutionView::from(now))).into_response())
        }
    }
}

async fn submit_node(
    worker: &Worker,
    function: Function,
    input: Value,
    params: &WaitParams,
) -> Result<Response> {
    let execution = worker.submit(function, input, None).await?;
    answer(worker, execution, params).await
}

#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, description = "The process is alive", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/ready", tag = "service", security(("bearer" = [])),
    responses(
        (status = 200, description = "Device, store and backend answer", body = Ready),
        (status = 503, description = "Not ready (shutting down, device or store unavailable)", body = Ready),
    ))]
async fn ready(State(worker): State<Worker>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ok = worker.is_accepting();
    checks.insert(
        "accepting".into(),
        json!(if ok { "ok" } else { "shutting down" }),
    );
    let device = tokio::time::timeout(Duration::from_secs(2), worker.device.run(|_| ())).await;
    let busy = worker
        .gauges()
        .running
        .iter()
        .any(|(f, n)| *f == "train" && *n > 0);
    checks.insert(
        "device".into(),
        json!(match device {
            Ok(Ok(())) => "ok".to_string(),
            Err(_) if busy => "busy training".to_string(),
            Err(_) => {
                ok = false;
                "no answer within 2 s".to_string()
            }
            Ok(Err(e)) => {
                ok = false;
                e.to_string()
            }
        }),
    );
    let store = worker.platform().list_pipelines().await;
    checks.insert(
        "store".into(),
        json!(match &store {
            Ok(_) => "ok".to_string(),
            Err(e) => {
                ok = false;
                e.to_string()
            }
        }),
    );
    let body = Ready {
        ready: ok,
        backend: worker.platform().backend_name().into(),
        device: worker.device.name().into(),
        checks: Value::Object(checks),
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[utoipa::path(get, path = "/info", tag = "service", security(("bearer" = [])),
    responses((status = 200, description = "Version, backend, device and limits", body = Info)))]
async fn info(State(worker): State<Worker>) -> Json<Info> {
    let c = &worker.config;
    Json(Info {
        name: "cliptune".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        backend: worker.platform().backend_name().into(),
        device: worker.device.name().into(),
        auth: c.api_token.is_some(),
        functions: Function::ALL.to_vec(),
        limits: Limits {
            max_body_bytes: c.max_body_bytes,
            max_queue: c.max_queue,
            embed_batch_size: c.embed_batch_size,
            drain_seconds: c.drain_seconds,
        },
        uptime_seconds: worker.uptime().as_secs_f64(),
        queue_depth: worker.queue_depth(),
    })
}

#[utoipa::path(get, path = "/metrics", tag = "service", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(worker): State<Worker>) -> Response {
    let text = worker.metrics.render(&worker.gauges());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "service", security(("bearer" = [])),
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}

#[utoipa::path(post, path = "/train", tag = "nodes", security(("bearer" = [])), params(WaitParams),
    request_body(content = TrainInput, description = "The model to train and config overrides for this run"),
    responses(
        (status = 202, description = "Queued", body = ExecutionView),
        (status = 200, description = "Ended (with wait=true)", body = ExecutionView),
        (status = 422, description = "Bad input", body = ErrorBody),
        (status = 429, description = "Queue full", body = ErrorBody),
    ))]
async fn train(
    State(w): State<Worker>,
    Params(params): Params<WaitParams>,
    JsonBody(input): JsonBody<Value>,
) -> Result<Response> {
    submit_node(&w, Function::Train, input, &params).await
}

#[utoipa::path(post, path = "/embed", tag = "nodes", security(("bearer" = [])), params(WaitParams),
    request_body(content = EmbedBody, description = "Dataset form `{\"dataset_id\"}` / `{\"dataset\": {\"dataset_id\"}, \"filter\"?, \"model\"?}` or `{\"items\": [{\"item_id\"}]}` (an execution); online form `{\"texts\": [...], \"images\": [base64], \"item_ids\": [...], \"model_id\"?}` (answered at once, see OnlineEmbedRequest)"),
    responses(
        (status = 202, description = "Dataset form: queued", body = ExecutionView),
        (status = 200, description = "Online form: vectors in input order (timing in Server-Timing and x-*-ms headers); dataset form with wait=true: ended", body = OnlineEmbedResponse),
        (status = 422, description = "Bad input", body = ErrorBody),
        (status = 429, description = "Online form: too many requests in flight", body = ErrorBody),
    ))]
async fn embed(
    State(w): State<Worker>,
    axum::Extension(on): axum::Extension<std::sync::Arc<online::Online>>,
    Params(params): Params<WaitParams>,
    JsonBody(input): JsonBody<Value>,
) -> Result<Response> {
    let online = ["texts", "images", "item_ids"]
        .iter()
        .any(|k| input.get(k).is_some());
    if online {
        let request: OnlineEmbedRequest =
            serde_json::from_value(input).map_err(|e| WorkerError::input("body", e.to_string()))?;
        return online::embed(&on, request).await;
    }
    submit_node(&w, Function::Embed, input, &params).await
}

#[utoipa::path(post, path = "/create-model", tag = "nodes", security(("bearer" = [])), params(WaitParams),
    request_body(content = CreateModelInput, description = "The base model, the dataset, config and subsets of the new model"),
    responses(
        (status = 202, description = "Queued", body = ExecutionView),
        (status = 200, description = "Ended (with wait=true)", body = ExecutionView),
        (status = 422, description = "Bad input", body = ErrorBody),
    ))]
async fn create_model(
    State(w): State<Worker>,
    Params(params): Params<WaitParams>,
    JsonBody(input): JsonBody<Value>,
) -> Result<Response> {
    submit_node(&w, Function::CreateModel, input, &params).await
}

#[utoipa::path(post, path = "/update-variable", tag = "nodes", security(("bearer" = [])), params(WaitParams),
    request_body(content = UpdateVariableInput, description = "The model, and the pipeline and variable to point at it"),
    responses(
        (status = 202, description = "Queued", body = ExecutionView),
        (status = 200, description = "Ended (with wait=true)", body = ExecutionView),
        (status = 422, description = "Bad input", body = ErrorBody),
    ))]
async fn update_variable(
    State(w): State<Worker>,
    Params(params): Params<WaitParams>,
    JsonBody(input): JsonBody<Value>,
) -> Result<Response> {
    submit_node(&w, Function::UpdateVariable, input, &params).await
}

#[utoipa::path(post, path = "/executions", tag = "executions", security(("bearer" = [])), params(WaitParams),
    request_body = ExecutionRequest,
    responses(
        (status = 202, description = "Queued", body = ExecutionView),
        (status = 200, description = "Ended (with wait=true)", body = ExecutionView),
        (status = 404, description = "Unknown function", body = ErrorBody),
        (status = 422, description = "Bad input", body = ErrorBody),
    ))]
async fn create_execution(
    State(w): State<Worker>,
    Params(params): Params<WaitParams>,
    JsonBody(request): JsonBody<ExecutionRequest>,
) -> Result<Response> {
    let function = Function::parse(&request.function_name)?;
    if function == Function::Pipeline {
        let pipeline = crate::pipeline::RunInput::parse(&request.input)?;
        let e = w.execute_pipeline(&pipeline.pipeline, &[]).await?;
        return answer(&w, e, &params).await;
    }
    submit_node(&w, function, request.input, &params).await
}

#[utoipa::path(get, path = "/executions", tag = "executions", security(("bearer" = [])), params(ListParams),
    responses((status = 200, description = "Newest first", body = [ExecutionView])))]
async fn list_executions(
    State(w): State<Worker>,
    Params(params): Params<ListParams>,
) -> Result<Json<Vec<ExecutionView>>> {
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(ExecutionStatus::parse(s).ok_or_else(|| {
            WorkerError::input("status", format!("unknown execution status {s:?}"))
        })?),
    };
    let function = match params.function.as_deref() {
        None => None,
        Some(f) => Some(Function::parse(f)?.as_str().to_string()),
    };
    if w.config.attached && w.attached_service().is_none() {
        // No execution handed over yet: no service known, nothing of ours to list.
        return Ok(Json(vec![]));
    }
    let list = w
        .list(&ExecutionQuery {
            status,
            function_name: function,
            pipeline_id: params.pipeline_id,
            pipeline_execution_id: params.pipeline_execution_id,
            // Attached: this service's executions only.
            service_id: w.config.attached.then(|| w.attached_service()).flatten(),
            limit: params.limit.unwrap_or(100),
        })
        .await?;
    Ok(Json(list.into_iter().map(ExecutionView::from).collect()))
}

#[utoipa::path(get, path = "/executions/{id}", tag = "executions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, description = "Status, percent, message, output, error", body = ExecutionView),
        (status = 404, description = "No such execution", body = ErrorBody),
    ))]
async fn get_execution(
    State(w): State<Worker>,
    Path(id): Path<String>,
) -> Result<Json<ExecutionView>> {
    Ok(Json(w.get(&id).await?.into()))
}

#[utoipa::path(post, path = "/executions/{id}/terminate", tag = "executions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 200, description = "Termination requested (queued: canceled at once; running: aborted at the next step)", body = ExecutionView),
        (status = 404, description = "No such execution", body = ErrorBody),
        (status = 409, description = "Already ended", body = ErrorBody),
    ))]
async fn terminate_execution(
    State(w): State<Worker>,
    Path(id): Path<String>,
) -> Result<Json<ExecutionView>> {
    Ok(Json(w.terminate(&id).await?.into()))
}

#[utoipa::path(post, path = "/pipelines/{id}/execute", tag = "pipelines", security(("bearer" = [])), params(WaitParams,
        ("id" = String, Path, description = "Pipeline id or name")),
    request_body(content = PipelineExecuteRequest, description = "Optional variable values, as Dataloop's `{\"pipeline\": {\"input\": {...}}}` or `{\"variables\": {...}}`"),
    responses(
        (status = 202, description = "The run, queued", body = ExecutionView),
        (status = 200, description = "Ended (with wait=true)", body = ExecutionView),
        (status = 422, description = "Bad variable value or empty required variable", body = ErrorBody),
    ))]
async fn execute_pipeline(
    State(w): State<Worker>,
    Path(id): Path<String>,
    Params(params): Params<WaitParams>,
    JsonBody(body): JsonBody<Option<PipelineExecuteRequest>>,
) -> Result<Response> {
    let values = body.map(|b| b.values()).unwrap_or_default();
    let e = w.execute_pipeline(&id, &values).await?;
    answer(&w, e, &params).await
}

#[utoipa::path(get, path = "/pipelines/{id}", tag = "pipelines", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pipeline id or name")),
    responses(
        (status = 200, description = "Nodes, connections, start nodes and variables", body = Object),
        (status = 404, description = "No such pipeline", body = ErrorBody),
    ))]
async fn get_pipeline(State(w): State<Worker>, Path(id): Path<String>) -> Result<Json<Value>> {
    let p = w.platform().resolve_pipeline(&id).await?;
    Ok(Json(
        serde_json::to_value(p).map_err(|e| WorkerError::Internal(e.to_string()))?,
    ))
}

#[utoipa::path(patch, path = "/pipelines/{id}/variables", tag = "pipelines", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pipeline id or name")),
    request_body(content = Vec<VariableValue>, description = "`{\"variables\": [{\"name\", \"value\"}]}` (Dataloop's SDK) or a bare array (its OpenAPI spec)"),
    responses(
        (status = 200, description = "The pipeline with its updated variables", body = Object),
        (status = 422, description = "Unknown variable or bad value; nothing changed", body = ErrorBody),
    ))]
async fn patch_variables(
    State(w): State<Worker>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>> {
    let list = match &body {
        Value::Array(a) => a.clone(),
        Value::Object(o) => match o.get("variables") {
            Some(Value::Array(a)) => a.clone(),
            _ => {
                return Err(WorkerError::input(
                    "variables",
                    "expected {\"variables\": [{\"name\", \"value\"}, ...]} or a bare array",
                ))
            }
        },
        _ => {
            return Err(WorkerError::input(
                "body",
                "expected {\"variables\": [...]} or a bare array of {\"name\", \"value\"}",
            ))
        }
    };
    let mut values = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let parsed: VariableValue = serde_json::from_value(v.clone())
            .map_err(|e| WorkerError::input(format!("variables[{i}]"), e.to_string()))?;
        values.push((parsed.name, parsed.value));
    }
    let p = w.platform().resolve_pipeline(&id).await?;
    crate::pipeline::set_variables(&**w.platform(), &p, &values).await?;
    let p = w.platform().get_pipeline(&p.id).await?;
    Ok(Json(
        serde_json::to_value(p).map_err(|e| WorkerError::Internal(e.to_string()))?,
    ))
}
