//! `cliptune serve`: the HTTP worker.

use crate::{output, Ctx};
use anyhow::{Context, Result};
use clap::Args;
use cliptune_store::Platform;
use cliptune_worker::{Backend, Worker, WorkerConfig};
use std::sync::Arc;

/// Serve the pipeline nodes, executions and pipelines over HTTP.
///
/// Examples:
///   cliptune serve --addr 0.0.0.0:8080
///   CLIPTUNE_API_TOKEN=secret cliptune serve --device cuda
///   cliptune serve --backend dataloop   # DATALOOP_* variables, see docs/operations.md
///   cliptune serve --openapi > openapi.json
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: WorkerConfig,
    /// Print the OpenAPI document of the API and exit.
    #[arg(long)]
    pub openapi: bool,
}

/// The platform chosen by `--backend`.
pub fn open_platform(ctx: &Ctx, backend: Backend) -> Result<Arc<dyn Platform>> {
    Ok(match backend {
        Backend::Local => Arc::new(
            cliptune_store::LocalStore::open(&ctx.home)
                .with_context(|| format!("opening the store in {}", ctx.home.display()))?,
        ),
        Backend::Dataloop => Arc::new(
            cliptune_store::DataloopBackend::from_env()
                .context("configuring the Dataloop backend (see docs/operations.md)")?,
        ),
    })
}

/// A multi-threaded runtime: the worker's lanes, device replies and HTTP run side by side.
/// The process's one async runtime, started on first use: stores, workers and servers
/// opened by one command all live on it.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(RUNTIME.get_or_init(|| rt))
}

pub fn run(ctx: &Ctx, args: ServeArgs) -> Result<()> {
    if args.openapi {
        print!("{}", cliptune_worker::openapi_document());
        return Ok(());
    }
    let config = args.config;
    let platform = open_platform(ctx, config.backend)?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("listening on {}", config.addr))?;
        let addr = listener.local_addr()?;
        let worker = Worker::start(platform, config, ctx.home.clone()).await?;
        let started = serde_json::json!({
            "listening": format!("http://{addr}"),
            "backend": worker.platform().backend_name(),
            "device": worker.device.name(),
            "home": ctx.home.display().to_string(),
            "auth": worker.config.api_token.is_some(),
        });
        output::print(ctx, &started, |s| {
            format!(
                "cliptune worker listening on {} (backend {}, device {}, home {}){}",
                s["listening"].as_str().unwrap_or_default(),
                s["backend"].as_str().unwrap_or_default(),
                s["device"].as_str().unwrap_or_default(),
                s["home"].as_str().unwrap_or_default(),
                if worker.config.api_token.is_some() {
                    ", bearer auth on"
                } else {
                    ""
                }
            )
        });
        cliptune_worker::serve(worker, listener, shutdown_signal())
            .await
            .context("serving HTTP")?;
        eprintln!("cliptune worker stopped");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutdown requested: finishing or checkpointing running executions");
}
