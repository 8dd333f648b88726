//! Executions: one record per node run, queued per resource, with progress, termination,
//! waiting and crash recovery.
//!
//! Lanes give each resource one owner. `device` (training) runs one execution at a time:
//! one training per device. `embed` runs one dataset embedding at a time; its batches
//! share the device thread with a running training (see [`crate::device`]). Everything
//! else (creating a model, updating a variable, driving a pipeline run) only talks to the
//! platform and starts at once.
//!
//! The platform's execution record is the source of truth: a restart finds executions a
//! previous process left `in-progress` and re-queues them when the node is idempotent
//! (`train` resumes from its last epoch checkpoint, `embed` skips what has vectors,
//! `update-variable` sets the same value, pipeline runs reuse finished nodes) or else fails
//! them (`create-model`). Executions that never started (`created`, `rerun`) are queued again.

use crate::attached::{AttachedRun, Outcome};
use crate::config::WorkerConfig;
use crate::device::DeviceHandle;
use crate::error::{Result, WorkerError};
use crate::metrics::{Gauges, Metrics};
use cliptune_store::{
    Execution, ExecutionPipeline, ExecutionProgress, ExecutionQuery, ExecutionStatus, Id,
    ModelStatus, NewExecution, Platform,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch, Notify};

/// The service name of the executions a plain (not attached) worker creates, and the only
/// ones its restart recovery touches.
pub const SERVICE_NAME: &str = "cliptune";

/// The functions a worker serves: the template's nodes, the model adapter's functions
/// (`train_model` is [`Function::Train`]; `embed_items`, `embed_dataset`), pipeline runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    CreateModel,
    Train,
    UpdateVariable,
    /// cliptune's own embedding node: a dataset (`filter`) or a list of items, counts out.
    Embed,
    /// The adapter's `embed_items(items)`: the items and their vectors out.
    EmbedItems,
    /// The adapter's `embed_dataset(dataset, filters)`.
    EmbedDataset,
    /// A pipeline run: drives the node executions in order.
    Pipeline,
}

impl Function {
    pub const ALL: [Function; 7] = [
        Self::CreateModel,
        Self::Train,
        Self::UpdateVariable,
        Self::Embed,
        Self::EmbedItems,
        Self::EmbedDataset,
        Self::Pipeline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateModel => "create-model",
            Self::Train => "train",
            Self::UpdateVariable => "update-variable",
            Self::Embed => "embed",
            Self::EmbedItems => "embed-items",
            Self::EmbedDataset => "embed-dataset",
            Self::Pipeline => "pipeline",
        }
    }

    /// Our names, plus the ones dataloop.json's modules, Dataloop's CLIP adapter and its
    /// template use (`create_model`, `train_model`, `embed_items`, `embed_dataset`, ...).
    pub fn parse(name: &str) -> Result<Self> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match n.as_str() {
            "create-model" | "create-new-model" | "clone-model" => Self::CreateModel,
            "train" | "train-model" => Self::Train,
            "update-variable" | "update-newest-model" | "update-model-variable" => {
                Self::UpdateVariable
            }
            "embed" | "extract-features" => Self::Embed,
            "embed-items" => Self::EmbedItems,
            "embed-dataset" => Self::EmbedDataset,
            "pipeline" | "run-pipeline" | "execute-pipeline" => Self::Pipeline,
            _ => return Err(WorkerError::UnknownFunction(name.to_string())),
        })
    }

    fn lane(self) -> Option<Lane> {
        match self {
            Self::Train => Some(Lane::Device),
            Self::Embed | Self::EmbedItems | Self::EmbedDataset => Some(Lane::Embed),
            _ => None,
        }
    }

    /// Running it again after an interruption gives the same result without duplicates:
    /// training resumes from its last completed epoch (its run directory is per model),
    /// embedding skips items that have a vector, a pipeline run reuses finished nodes.
    pub fn idempotent(self) -> bool {
        matches!(
            self,
            Self::Train
                | Self::UpdateVariable
                | Self::Embed
                | Self::EmbedItems
                | Self::EmbedDataset
                | Self::Pipeline
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Device,
    Embed,
}

impl Lane {
    fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Embed => "embed",
        }
    }
}

/// Why an execution was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Terminate,
    Shutdown,
}

/// The handle a queued or running execution is controlled through.
pub struct Control {
    function: Function,
    cancel: Arc<AtomicBool>,
    reason: Mutex<Option<StopReason>>,
    notify: Notify,
    pub(crate) running: AtomicBool,
    /// Set for an execution the platform handed over (attached mode).
    attached: Option<Attached>,
}

/// What an attached execution runs with: the platform's execution is not re-read.
struct Attached {
    run: Arc<AttachedRun>,
    input: Value,
    pipeline: Option<ExecutionPipeline>,
}

impl Control {
    fn new(function: Function, attached: Option<Attached>) -> Arc<Self> {
        Arc::new(Self {
            function,
            cancel: Arc::new(AtomicBool::new(false)),
            reason: Mutex::new(None),
            notify: Notify::new(),
            running: AtomicBool::new(false),
            attached,
        })
    }

    pub(crate) fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().expect("control lock");
        if r.is_none() {
            *r = Some(reason);
        }
        self.cancel.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn stop_reason(&self) -> Option<StopReason> {
        *self.reason.lock().expect("control lock")
    }
}

/// What a node gets while it runs: the worker, its execution, progress and termination.
#[derive(Clone)]
pub struct NodeCtx {
    pub worker: Worker,
    pub execution_id: Id,
    pub pipeline: Option<ExecutionPipeline>,
    control: Arc<Control>,
    progress: Arc<watch::Sender<(u32, String)>>,
}

impl NodeCtx {
    /// Reports progress (0..=100) and a message; cheap, callable from any thread.
    /// Writes are coalesced: only the latest report waiting is stored.
    pub fn progress(&self, percent: u32, message: impl Into<String>) {
        let _ = self.progress.send((percent.min(100), message.into()));
    }

    /// `Err(Terminated)` once termination or shutdown was requested: call between steps.
    pub fn check(&self) -> Result<()> {
        if self.control.cancel.load(Ordering::SeqCst) {
            Err(WorkerError::Terminated(match self.control.stop_reason() {
                Some(StopReason::Shutdown) => "the worker is shutting down".into(),
                _ => "termination requested".into(),
            }))
        } else {
            Ok(())
        }
    }

    /// The flag the training engine polls between steps.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.control.cancel.clone()
    }

    /// Resolves once termination or shutdown is requested.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.control.notify.notified();
            if self.control.cancel.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.control.stop_reason()
    }
}

/// The shared state of a worker. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Shared>,
}

pub struct Shared {
    pub platform: Arc<dyn Platform>,
    pub config: WorkerConfig,
    pub device: DeviceHandle,
    pub metrics: Metrics,
    /// Model downloads and training checkpoints.
    pub work_dir: PathBuf,
    pub started: Instant,
    controls: Mutex<HashMap<Id, Arc<Control>>>,
    device_lane: mpsc::UnboundedSender<Id>,
    embed_lane: mpsc::UnboundedSender<Id>,
    ended: broadcast::Sender<Id>,
    accepting: AtomicBool,
    queued_device: AtomicUsize,
    queued_embed: AtomicUsize,
    lock: Mutex<Option<StoreLock>>,
    /// `config.embed_precision` resolved for the device.
    pub embed_precision: cliptune_train::Precision,
    /// Executions handed over by the platform (attached mode).
    pub(crate) attached: crate::attached::Registry,
}

/// One worker process per store: an exclusive OS lock (`flock`) on `<home>/worker.lock`.
/// The kernel drops the lock when the process dies however it dies, so a file left by a
/// killed worker never blocks a restart (even when the new process reuses the old pid, as
/// pid 1 in a container does); and it sits on the store, not the work directory, so two
/// workers cannot share a store through different `--work-dir`s.
struct StoreLock {
    // Held open for the life of the worker: closing it releases the lock.
    _file: std::fs::File,
}

impl StoreLock {
    fn acquire(home: &std::path::Path) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        let path = home.join("worker.lock");
        let io = |e: std::io::Error| WorkerError::Internal(format!("{}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {
                // The pid is for people reading the file; the lock is what counts.
                file.set_len(0).map_err(io)?;
                file.rewind().map_err(io)?;
                write!(file, "{}", std::process::id()).map_err(io)?;
                Ok(Self { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                Err(WorkerError::Conflict(format!(
                    "another cliptune worker{holder} is using the store at {}: \
                     use its HTTP API (e.g. POST /pipelines/{{id}}/execute) or stop it",
                    home.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }
}

impl std::ops::Deref for Worker {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.inner
    }
}

/// What [`Worker::recover`] did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Recovery {
    pub failed: Vec<Id>,
    pub requeued: Vec<Id>,
}

impl Worker {
    /// Starts the device thread and the lanes, then recovers what a previous process left
    /// behind. Must be called inside a tokio runtime.
    pub async fn start(
        platform: Arc<dyn Platform>,
        config: WorkerConfig,
        home: PathBuf,
    ) -> Result<Self> {
        Ok(Self::start_recovering(platform, config, home).await?.0)
    }

    /// [`Worker::start`], also answering what the recovery did (so that a command rerun
    /// after a kill can wait for the execution it left behind instead of adding one).
    pub async fn start_recovering(
        platform: Arc<dyn Platform>,
        config: WorkerConfig,
        home: PathBuf,
    ) -> Result<(Self, Recovery)> {
        let worker = Self::open(platform, config, home, true)?;
        if worker.config.attached {
            // The platform queues and reruns; only stale executions of this service are
            // this worker's business (see `attached`).
            worker.spawn_sweeps();
            return Ok((worker, Recovery::default()));
        }
        let recovery = worker.recover().await?;
        if !recovery.failed.is_empty() || !recovery.requeued.is_empty() {
            tracing::warn!(
                failed = recovery.failed.len(),
                requeued = recovery.requeued.len(),
                "recovered executions left behind by a previous process"
            );
        }
        Ok((worker, recovery))
    }

    /// A worker for inference only (the device thread, no executions): it neither claims
    /// the store nor recovers anything, so it can run beside a serving worker.
    pub async fn start_inference(
        platform: Arc<dyn Platform>,
        config: WorkerConfig,
        home: PathBuf,
    ) -> Result<Self> {
        let worker = Self::open(platform, config, home, false)?;
        worker.accepting.store(false, Ordering::SeqCst);
        Ok(worker)
    }

    fn open(
        platform: Arc<dyn Platform>,
        config: WorkerConfig,
        home: PathBuf,
        claim: bool,
    ) -> Result<Self> {
        config
            .check_auth()
            .map_err(|m| WorkerError::input("auth", m))?;
        let device = cliptune_clip::parse_device(&config.device)?;
        let embed_precision = config
            .embed_precision(device)
            .map_err(|m| WorkerError::input("embed_precision", m))?;
        let device = DeviceHandle::start(device, config.torch_threads)?;
        let work_dir = config.work_dir.clone().unwrap_or_else(|| home.join("work"));
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| WorkerError::Internal(format!("{}: {e}", work_dir.display())))?;
        let lock = if claim {
            std::fs::create_dir_all(&home)
                .map_err(|e| WorkerError::Internal(format!("{}: {e}", home.display())))?;
            Some(StoreLock::acquire(&home)?)
        } else {
            None
        };
        let service = config.service_id.clone();
        let (device_tx, device_rx) = mpsc::unbounded_channel();
        let (embed_tx, embed_rx) = mpsc::unbounded_channel();
        let (ended, _) = broadcast::channel(256);
        let worker = Worker {
            inner: Arc::new(Shared {
                platform,
                config,
                device,
                embed_precision,
                metrics: Metrics::default(),
                work_dir,
                started: Instant::now(),
                controls: Mutex::new(HashMap::new()),
                device_lane: device_tx,
                embed_lane: embed_tx,
                ended,
                accepting: AtomicBool::new(true),
                queued_device: AtomicUsize::new(0),
                queued_embed: AtomicUsize::new(0),
                lock: Mutex::new(lock),
                attached: crate::attached::Registry::new(service),
            }),
        };
        for mut rx in [device_rx, embed_rx] {
            // Lanes hold a weak reference so that dropping every `Worker` ends them.
            let weak = Arc::downgrade(&worker.inner);
            tokio::spawn(async move {
                while let Some(id) = rx.recv().await {
                    let Some(inner) = weak.upgrade() else { break };
                    Worker { inner }.run(id).await;
                }
            });
        }
        Ok(worker)
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn upgrade(weak: &std::sync::Weak<Shared>) -> Option<Self> {
        weak.upgrade().map(|inner| Worker { inner })
    }

    pub fn platform(&self) -> &Arc<dyn Platform> {
        &self.inner.platform
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Creates an execution of `function` with `input` and queues it. The input is checked
    /// first, so a bad one is an error here rather than a failed execution.
    pub async fn submit(
        &self,
        function: Function,
        input: Value,
        pipeline: Option<ExecutionPipeline>,
    ) -> Result<Execution> {
        if !self.is_accepting() {
            return Err(WorkerError::Unavailable(
                "the worker is shutting down and accepts no new executions".into(),
            ));
        }
        if self.config.attached {
            return Err(WorkerError::Conflict(
                "attached mode: executions are created by the platform and handed over \
                 with POST /attached"
                    .into(),
            ));
        }
        crate::nodes::validate_input(function, &input)?;
        crate::nodes::check_refs(function, &input, &*self.platform).await?;
        if let Some(lane) = function.lane() {
            let queued = self.queued(lane).load(Ordering::SeqCst);
            if queued >= self.config.max_queue {
                return Err(WorkerError::Overloaded(format!(
                    "{queued} executions are waiting in the {} lane (limit {}); retry later",
                    lane.name(),
                    self.config.max_queue
                )));
            }
        }
        let execution = self
            .platform
            .create_execution(NewExecution {
                function_name: function.as_str().to_string(),
                service_name: Some(SERVICE_NAME.into()),
                pipeline,
                input,
            })
            .await?;
        self.enqueue(&execution.id, function);
        Ok(execution)
    }

    fn queued(&self, lane: Lane) -> &AtomicUsize {
        match lane {
            Lane::Device => &self.queued_device,
            Lane::Embed => &self.queued_embed,
        }
    }

    fn enqueue(&self, id: &Id, function: Function) {
        self.enqueue_control(id, Control::new(function, None));
    }

    /// Queues a handed-over execution (attached mode) with its input.
    pub(crate) fn enqueue_attached(
        &self,
        id: &Id,
        function: Function,
        input: Value,
        pipeline: Option<ExecutionPipeline>,
        run: Arc<AttachedRun>,
    ) {
        let attached = Attached {
            run,
            input,
            pipeline,
        };
        self.enqueue_control(id, Control::new(function, Some(attached)));
    }

    fn enqueue_control(&self, id: &Id, control: Arc<Control>) {
        let function = control.function;
        self.controls
            .lock()
            .expect("controls lock")
            .insert(id.clone(), control);
        match function.lane() {
            Some(lane) => {
                self.queued(lane).fetch_add(1, Ordering::SeqCst);
                let tx = match lane {
                    Lane::Device => &self.device_lane,
                    Lane::Embed => &self.embed_lane,
                };
                let _ = tx.send(id.clone());
            }
            None => {
                let w = self.clone();
                let id = id.clone();
                tokio::spawn(async move { w.run(id).await });
            }
        }
    }

    pub(crate) fn control(&self, id: &str) -> Option<Arc<Control>> {
        self.controls
            .lock()
            .expect("controls lock")
            .get(id)
            .cloned()
    }

    /// Runs one queued execution to its end.
    async fn run(&self, id: Id) {
        let Some(control) = self.control(&id) else {
            return;
        };
        if let Some(lane) = control.function.lane() {
            self.queued(lane).fetch_sub(1, Ordering::SeqCst);
        }
        let function = control.function;
        if let Some(attached) = &control.attached {
            let outcome = self.run_attached(&id, &control, attached).await;
            self.metrics
                .record_execution(function.as_str(), outcome.state);
            self.controls.lock().expect("controls lock").remove(&id);
            self.finish_attached(&id, &attached.run, outcome);
            let _ = self.ended.send(id);
            return;
        }
        let status = match self.run_inner(&id, &control).await {
            Ok(status) => status,
            Err(e) => {
                tracing::error!(execution = %id, error = %e, "execution bookkeeping failed");
                let _ = self
                    .platform
                    .finish_execution(
                        &id,
                        ExecutionStatus::SystemFailure,
                        None,
                        Some(e.to_string()),
                    )
                    .await;
                ExecutionStatus::SystemFailure
            }
        };
        self.metrics
            .record_execution(function.as_str(), status.as_str());
        self.controls.lock().expect("controls lock").remove(&id);
        let _ = self.ended.send(id);
    }

    async fn run_inner(&self, id: &Id, control: &Arc<Control>) -> Result<ExecutionStatus> {
        let execution = self.platform.get_execution(id).await?;
        if execution.status.is_terminal() {
            return Ok(execution.status);
        }
        if control.cancel.load(Ordering::SeqCst) {
            return self.finish_stopped(id, control, "before it started").await;
        }
        control.running.store(true, Ordering::SeqCst);
        self.platform
            .progress_execution(
                id,
                ExecutionProgress {
                    status: Some(ExecutionStatus::InProgress),
                    percent_complete: Some(0),
                    message: Some("started".into()),
                    output: None,
                },
            )
            .await?;
        let (tx, mut rx) = watch::channel((0u32, String::from("started")));
        let platform = self.platform.clone();
        let writer_id = id.clone();
        let writer = tokio::spawn(async move {
            let mut written = (0u32, String::from("started"));
            loop {
                let changed = rx.changed().await;
                let latest = rx.borrow_and_update().clone();
                if latest != written {
                    let update = ExecutionProgress {
                        status: None,
                        percent_complete: Some(latest.0),
                        message: Some(latest.1.clone()),
                        output: None,
                    };
                    if let Err(e) = platform.progress_execution(&writer_id, update).await {
                        tracing::warn!(execution = %writer_id, error = %e, "progress not stored");
                    }
                    written = latest;
                }
                if changed.is_err() {
                    break;
                }
            }
        });
        let ctx = NodeCtx {
            worker: self.clone(),
            execution_id: id.clone(),
            pipeline: execution.pipeline.clone(),
            control: control.clone(),
            progress: Arc::new(tx),
        };
        let function = control.function;
        let result = crate::nodes::run(function, &execution.input, &ctx).await;
        drop(ctx);
        let _ = writer.await;
        match result {
            Ok(output) => {
                self.platform
                    .finish_execution(id, ExecutionStatus::Success, Some(output), None)
                    .await?;
                Ok(ExecutionStatus::Success)
            }
            Err(e) if e.is_termination() => self.finish_stopped(id, control, "while running").await,
            Err(e) => {
                tracing::warn!(execution = %id, function = function.as_str(), error = %e, "execution failed");
                self.platform
                    .finish_execution(id, ExecutionStatus::Failed, None, Some(e.to_string()))
                    .await?;
                Ok(ExecutionStatus::Failed)
            }
        }
    }

    /// Runs a handed-over execution's node; the platform record is the agent's to write.
    async fn run_attached(&self, id: &Id, control: &Arc<Control>, a: &Attached) -> Outcome {
        let stopped = |when: &str| Outcome {
            state: "terminated",
            output: Value::Null,
            error: Some(match control.stop_reason() {
                Some(StopReason::Shutdown) => format!("the worker shut down {when}"),
                _ => format!("terminated {when}"),
            }),
        };
        if control.cancel.load(Ordering::SeqCst) {
            return stopped("before it started");
        }
        let Some(tx) = a.run.progress_tx.lock().expect("progress lock").take() else {
            return Outcome {
                state: "failed",
                output: Value::Null,
                error: Some("internal: the run started twice".into()),
            };
        };
        control.running.store(true, Ordering::SeqCst);
        let _ = tx.send((0, "started".into()));
        let ctx = NodeCtx {
            worker: self.clone(),
            execution_id: id.clone(),
            pipeline: a.pipeline.clone(),
            control: control.clone(),
            progress: Arc::new(tx),
        };
        let result = crate::nodes::run(control.function, &a.input, &ctx).await;
        match result {
            Ok(output) => Outcome {
                state: "success",
                output,
                error: None,
            },
            Err(e) if e.is_termination() => stopped("while running"),
            Err(e) => {
                tracing::warn!(execution = %id, function = control.function.as_str(), error = %e, "attached execution failed");
                Outcome {
                    state: "failed",
                    output: Value::Null,
                    error: Some(e.to_string()),
                }
            }
        }
    }

    /// Ends an execution that was stopped: terminated ones are `aborted` (running) or
    /// `canceled` (queued); on shutdown, idempotent ones become `rerun` so the next start
    /// queues them again, the others fail.
    async fn finish_stopped(
        &self,
        id: &Id,
        control: &Control,
        when: &str,
    ) -> Result<ExecutionStatus> {
        let running = control.running.load(Ordering::SeqCst);
        match control.stop_reason() {
            Some(StopReason::Shutdown) if control.function.idempotent() || !running => {
                self.platform
                    .progress_execution(
                        id,
                        ExecutionProgress {
                            status: Some(ExecutionStatus::Rerun),
                            percent_complete: None,
                            message: Some(format!(
                                "interrupted by shutdown {when}; queued again when the worker restarts"
                            )),
                            output: None,
                        },
                    )
                    .await?;
                Ok(ExecutionStatus::Rerun)
            }
            Some(StopReason::Shutdown) => {
                let message = format!("interrupted by shutdown {when}");
                self.platform
                    .finish_execution(id, ExecutionStatus::Failed, None, Some(message))
                    .await?;
                Ok(ExecutionStatus::Failed)
            }
            _ => {
                let status = if running {
                    ExecutionStatus::Aborted
                } else {
                    ExecutionStatus::Canceled
                };
                self.platform
                    .finish_execution(id, status, None, Some(format!("terminated {when}")))
                    .await?;
                Ok(status)
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Execution> {
        Ok(self.platform.get_execution(id).await?)
    }

    pub async fn list(&self, query: &ExecutionQuery) -> Result<Vec<Execution>> {
        Ok(self.platform.list_executions(query).await?)
    }

    /// Waits until the execution ends (or, on shutdown, stops running here).
    pub async fn wait(&self, id: &str) -> Result<Execution> {
        let mut ended = self.ended.subscribe();
        loop {
            let execution = self.platform.get_execution(id).await?;
            if execution.status.is_terminal() {
                return Ok(execution);
            }
            let managed = self.control(id).is_some();
            if !managed && !self.is_accepting() {
                return Ok(execution);
            }
            tokio::select! {
                got = ended.recv() => match got {
                    Ok(done) if done == id => return self.platform.get_execution(id).await.map_err(Into::into),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(execution),
                },
                // Executions run by another process only show up in the store.
                _ = tokio::time::sleep(Duration::from_millis(if managed { 5000 } else { 500 })) => {}
            }
        }
    }

    /// Asks an execution to stop. A queued one ends at once (`canceled`); a running one
    /// stops at its next step boundary (`aborted`). Answers the execution as it is now.
    pub async fn terminate(&self, id: &str) -> Result<Execution> {
        let execution = self.platform.get_execution(id).await?;
        if execution.status.is_terminal() {
            return Err(WorkerError::Conflict(format!(
                "execution {id} already ended with status {}",
                execution.status.as_str()
            )));
        }
        match self.control(id) {
            Some(control) => {
                control.stop(StopReason::Terminate);
                if !control.running.load(Ordering::SeqCst) {
                    // Queued: end it now rather than when its lane reaches it.
                    // Its lane still holds the id and skips it (and counts it) when reached.
                    self.finish_stopped(&id.to_string(), &control, "before it started")
                        .await?;
                }
            }
            None => {
                // Nobody runs it (left by another process): end the record.
                self.platform
                    .finish_execution(
                        id,
                        ExecutionStatus::Canceled,
                        None,
                        Some("terminated; no worker was running it".into()),
                    )
                    .await?;
            }
        }
        Ok(self.platform.get_execution(id).await?)
    }

    /// Fails or re-queues executions of this worker's service that a previous process left
    /// unfinished (see the module doc).
    pub async fn recover(&self) -> Result<Recovery> {
        let mut all = self
            .platform
            .list_executions(&ExecutionQuery::default())
            .await?;
        all.reverse(); // oldest first
        let mut report = Recovery::default();
        // Nodes before pipeline runs, so that a resumed run sees its nodes' final state.
        all.sort_by_key(|e| e.function_name == Function::Pipeline.as_str());
        for e in all {
            // Executions of other services (other apps in the project) are theirs to recover.
            if e.service_name.as_deref() != Some(SERVICE_NAME) {
                continue;
            }
            let Ok(function) = Function::parse(&e.function_name) else {
                continue;
            };
            if self.control(&e.id).is_some() {
                continue;
            }
            match e.status {
                ExecutionStatus::InProgress if !function.idempotent() => {
                    self.platform
                        .finish_execution(
                            &e.id,
                            ExecutionStatus::Failed,
                            None,
                            Some("interrupted: the worker stopped while this execution ran".into()),
                        )
                        .await?;
                    if function == Function::Train {
                        self.fail_training_model(&e).await;
                    }
                    self.metrics.record_execution(function.as_str(), "failed");
                    report.failed.push(e.id);
                }
                ExecutionStatus::InProgress => {
                    self.platform
                        .progress_execution(
                            &e.id,
                            ExecutionProgress {
                                status: Some(ExecutionStatus::Rerun),
                                percent_complete: None,
                                message: Some(
                                    "re-queued: the worker stopped while this execution ran".into(),
                                ),
                                output: None,
                            },
                        )
                        .await?;
                    self.enqueue(&e.id, function);
                    report.requeued.push(e.id);
                }
                ExecutionStatus::Created | ExecutionStatus::Rerun => {
                    self.enqueue(&e.id, function);
                    report.requeued.push(e.id);
                }
                _ => {}
            }
        }
        Ok(report)
    }

    /// A training that died with its process leaves its model `training`: mark it failed.
    async fn fail_training_model(&self, e: &Execution) {
        let Ok(id) = crate::nodes::model_input(&e.input, "model") else {
            return;
        };
        if let Ok(mut model) = self.platform.get_model(&id).await {
            if model.status == ModelStatus::Training {
                model.status = ModelStatus::Failed;
                if let Err(err) = self.platform.update_model(&model).await {
                    tracing::warn!(model = %id, error = %err, "could not mark the model failed");
                }
            }
        }
    }

    /// Stops accepting work, lets running executions finish for `drain`, then stops them
    /// at their next step boundary (training keeps its last epoch checkpoint). Queued
    /// executions stay queued in the store and start again with the next process.
    pub async fn shutdown(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + self.config.drain();
        while self.running_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let controls: Vec<Arc<Control>> = self
            .controls
            .lock()
            .expect("controls lock")
            .values()
            .cloned()
            .collect();
        for c in &controls {
            c.stop(StopReason::Shutdown);
        }
        // Queued ones are not run; running ones end at their next step boundary.
        while self.running_count() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The store is free for the next process.
        self.lock.lock().expect("lock").take();
    }

    fn running_count(&self) -> usize {
        self.controls
            .lock()
            .expect("controls lock")
            .values()
            .filter(|c| c.running.load(Ordering::SeqCst))
            .count()
    }

    /// Scrape-time gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let controls = self.controls.lock().expect("controls lock");
        let running = Function::ALL
            .iter()
            .map(|f| {
                let n = controls
                    .values()
                    .filter(|c| c.function == *f && c.running.load(Ordering::SeqCst))
                    .count();
                (f.as_str(), n)
            })
            .collect();
        Gauges {
            queued: vec![
                ("device", self.queued_device.load(Ordering::SeqCst)),
                ("embed", self.queued_embed.load(Ordering::SeqCst)),
            ],
            running,
            device_pending: self.device.pending(),
            uptime: self.started.elapsed(),
            searches: cliptune_store::vectors::search_counts(),
        }
    }

    /// Executions waiting to start, all lanes together.
    pub fn queue_depth(&self) -> usize {
        self.queued_device.load(Ordering::SeqCst) + self.queued_embed.load(Ordering::SeqCst)
    }
}
