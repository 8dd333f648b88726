//! What a node gets while it runs, and nothing more: the worker's environment (platform,
//! device, configuration, metrics, work directory), its execution, progress and stop
//! requests. Only the pipeline runner also gets the queue, to submit its node executions.
//!
//! This module imports no other worker module that runs nodes, so the import direction
//! stays one way: `http` -> `executions` (queue, `run`) -> `pipeline` -> `nodes` -> `ctx`.

use crate::config::WorkerConfig;
use crate::device::DeviceHandle;
use crate::error::{Result, WorkerError};
use crate::function::Function;
use crate::metrics::Metrics;
use cliptune_store::{Execution, ExecutionPipeline, Id, Platform};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// The worker's read-only environment, shared by its nodes, handlers and the CLI.
pub struct Env {
    pub platform: Arc<dyn Platform>,
    pub config: WorkerConfig,
    pub device: DeviceHandle,
    pub metrics: Metrics,
    /// Model downloads and training checkpoints.
    pub work_dir: PathBuf,
    /// `config.embed_precision` resolved for the device.
    pub embed_precision: cliptune_train::Precision,
}

impl Env {
    pub fn platform(&self) -> &Arc<dyn Platform> {
        &self.platform
    }
}

/// Why an execution was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Terminate,
    Shutdown,
}

/// A stop request: set once, seen by the node at its next step boundary.
#[derive(Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    reason: Mutex<Option<StopReason>>,
    notify: Notify,
}

impl Stop {
    /// The first reason given wins.
    pub fn request(&self, reason: StopReason) {
        let mut r = self.reason.lock().expect("stop lock");
        if r.is_none() {
            *r = Some(reason);
        }
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().expect("stop lock")
    }
}

/// What the pipeline runner may do with the queue (no other node submits executions).
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Creates an execution and queues it; its input is checked first.
    async fn submit(
        &self,
        function: Function,
        input: Value,
        pipeline: Option<ExecutionPipeline>,
    ) -> Result<Execution>;
    /// Waits until the execution ends (or, on shutdown, stops running here).
    async fn wait(&self, id: &str) -> Result<Execution>;
    /// Asks an execution to stop.
    async fn terminate(&self, id: &str) -> Result<Execution>;
}

/// What a node gets while it runs.
#[derive(Clone)]
pub struct NodeCtx {
    pub env: Arc<Env>,
    pub execution_id: Id,
    pub pipeline: Option<ExecutionPipeline>,
    stop: Arc<Stop>,
    progress: Arc<watch::Sender<(u32, String)>>,
    queue: Option<Arc<dyn Queue>>,
}

impl NodeCtx {
    pub(crate) fn new(
        env: Arc<Env>,
        execution_id: Id,
        pipeline: Option<ExecutionPipeline>,
        stop: Arc<Stop>,
        progress: watch::Sender<(u32, String)>,
        queue: Option<Arc<dyn Queue>>,
    ) -> Self {
        Self {
            env,
            execution_id,
            pipeline,
            stop,
            progress: Arc::new(progress),
            queue,
        }
    }

    /// Reports progress (0..=100) and a message; cheap, callable from any thread.
    /// Writes are coalesced: only the latest report waiting is stored.
    pub fn progress(&self, percent: u32, message: impl Into<String>) {
        let _ = self.progress.send((percent.min(100), message.into()));
    }

    /// `Err(Terminated)` once termination or shutdown was requested: call between steps.
    pub fn check(&self) -> Result<()> {
        if self.stop.requested() {
            Err(WorkerError::Terminated(match self.stop.reason() {
                Some(StopReason::Shutdown) => "the worker is shutting down".into(),
                _ => "termination requested".into(),
            }))
        } else {
            Ok(())
        }
    }

    /// The flag the training engine polls between steps.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.stop.flag.clone()
    }

    /// Resolves once termination or shutdown is requested.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.stop.notify.notified();
            if self.stop.requested() {
                return;
            }
            notified.await;
        }
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop.reason()
    }

    /// The queue, for the pipeline runner only.
    pub fn queue(&self) -> Result<&dyn Queue> {
        self.queue.as_deref().ok_or_else(|| {
            WorkerError::Internal("only the pipeline runner submits executions".into())
        })
    }
}
