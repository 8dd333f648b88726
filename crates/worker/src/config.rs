//! The worker's settings: one struct, every field a flag with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which platform the worker reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded store under `--home` (SQLite + files).
    Local,
    /// Dataloop's REST API (see docs/operations.md for its variables).
    Dataloop,
}

/// Settings of `cliptune serve` (and of the in-process worker `cliptune pipeline execute` uses).
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct WorkerConfig {
    /// Address to listen on.
    #[arg(long, env = "CLIPTUNE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Platform backend.
    #[arg(long, env = "CLIPTUNE_BACKEND", value_enum, default_value = "local")]
    pub backend: Backend,
    /// Device for training and embedding: cpu, cuda, cuda:N or auto.
    #[arg(long, env = "CLIPTUNE_DEVICE", default_value = "auto")]
    pub device: String,
    /// Bearer token required on every endpoint but /health (unset: no auth).
    #[arg(long, env = "CLIPTUNE_API_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub api_token: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "CLIPTUNE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most executions waiting per lane (train, embed) before new ones get 429.
    #[arg(long, env = "CLIPTUNE_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// Seconds a shutdown waits for running executions before stopping them at a step
    /// boundary (training keeps its last epoch checkpoint).
    #[arg(long, env = "CLIPTUNE_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Items per device batch of the embed node.
    #[arg(long, env = "CLIPTUNE_EMBED_BATCH", default_value_t = 32)]
    pub embed_batch_size: usize,
    /// Threads libtorch uses for intra-op parallelism (0: libtorch's default).
    #[arg(long, env = "CLIPTUNE_TORCH_THREADS", default_value_t = 0)]
    pub torch_threads: usize,
    /// Work directory for model downloads and training checkpoints (default: <home>/work).
    #[arg(long, env = "CLIPTUNE_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
}

impl WorkerConfig {
    /// Defaults for an in-process worker (tests, `cliptune pipeline execute`).
    pub fn local(device: &str) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            backend: Backend::Local,
            device: device.to_string(),
            api_token: None,
            max_body_bytes: 16 * 1024 * 1024,
            max_queue: 64,
            drain_seconds: 30,
            embed_batch_size: 32,
            torch_threads: 0,
            work_dir: None,
        }
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}
