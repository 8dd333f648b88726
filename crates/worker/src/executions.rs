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

use crate::attached::AttachedRun;
use crate::config::WorkerConfig;
use crate::ctx::{Env, StopReason};
use crate::device::DeviceHandle;
use crate::error::{Result, WorkerError};
use crate::metrics::{Gauges, Metrics};
use crate::nodes::{BASE_MODEL_VARIABLE, DATASET_VARIABLE, NEWEST_MODEL_VARIABLE};
use cliptune_store::{
    Execution, ExecutionPipeline, ExecutionProgress, ExecutionQuery, ExecutionStatus, Id,
    ModelStatus, NewExecution, Platform, VariableUpdate,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

use crate::run::Attached;
pub use crate::run::Control;

/// The service name of the executions a plain (not attached) worker creates, and the only
/// ones its restart recovery touches.
pub const SERVICE_NAME: &str = "cliptune";

pub use crate::function::Function;

/// The queue an execution of `function` waits in, if any (the others start at once).
fn lane(function: Function) -> Option<Lane> {
    match function {
        Function::Train => Some(Lane::Device),
        Function::Embed | Function::EmbedItems | Function::EmbedDataset => Some(Lane::Embed),
        _ => None,
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

/// The shared state of a worker. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Shared>,
}

pub struct Shared {
    env: Arc<Env>,
    started: Instant,
    controls: Mutex<HashMap<Id, Arc<Control>>>,
    device_lane: mpsc::UnboundedSender<Id>,
    embed_lane: mpsc::UnboundedSender<Id>,
    ended: broadcast::Sender<Id>,
    accepting: AtomicBool,
    queued_device: AtomicUsize,
    queued_embed: AtomicUsize,
    lock: Mutex<Option<StoreLock>>,
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

/// A worker shows its environment (platform, configuration, device, metrics); the queue's
/// state stays inside.
impl std::ops::Deref for Worker {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.inner.env
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
        worker.inner.accepting.store(false, Ordering::SeqCst);
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
                env: Arc::new(Env {
                    platform,
                    config,
                    device,
                    embed_precision,
                    metrics: Metrics::default(),
                    work_dir,
                }),
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

    /// The environment nodes run in.
    pub fn env(&self) -> Arc<Env> {
        self.inner.env.clone()
    }

    pub(crate) fn attached(&self) -> &crate::attached::Registry {
        &self.inner.attached
    }

    /// Time since the worker started.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::SeqCst)
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
        crate::dispatch::validate_input(function, &input)?;
        crate::dispatch::check_refs(function, &input, &*self.platform).await?;
        if let Some(lane) = lane(function) {
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
            Lane::Device => &self.inner.queued_device,
            Lane::Embed => &self.inner.queued_embed,
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
        self.inner
            .controls
            .lock()
            .expect("controls lock")
            .insert(id.clone(), control);
        match lane(function) {
            Some(lane) => {
                self.queued(lane).fetch_add(1, Ordering::SeqCst);
                let tx = match lane {
                    Lane::Device => &self.inner.device_lane,
                    Lane::Embed => &self.inner.embed_lane,
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
        self.inner
            .controls
            .lock()
            .expect("controls lock")
            .get(id)
            .cloned()
    }

    /// Counts an execution out of its lane's queue as it starts.
    pub(crate) fn dequeued(&self, function: Function) {
        if let Some(lane) = lane(function) {
            self.queued(lane).fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Drops a finished execution's control and tells its waiters.
    pub(crate) fn forget(&self, id: &Id) {
        self.inner
            .controls
            .lock()
            .expect("controls lock")
            .remove(id);
        let _ = self.inner.ended.send(id.clone());
    }

    /// Starts a run of `pipeline` after writing `values` into its variables. On the first run
    /// an empty "Newest CLIP model" takes the base model's id, as the template does.
    pub async fn execute_pipeline(
        &self,
        pipeline: &str,
        values: &[(String, Value)],
    ) -> Result<cliptune_store::Execution> {
        let platform = self.platform();
        let p = platform.resolve_pipeline(pipeline).await?;
        // Checked before anything is written, so a bad template changes nothing.
        crate::template::check(&crate::template::Template {
            name: p.name.clone(),
            nodes: p.nodes.clone(),
            connections: p.connections.clone(),
            start_nodes: p.start_nodes.clone(),
            variables: p.variables.clone(),
        })?;
        if !values.is_empty() {
            crate::pipeline::set_variables(&**platform, &p, values).await?;
        }
        let p = platform.get_pipeline(&p.id).await?;
        let newest = p.variable(NEWEST_MODEL_VARIABLE).map(|v| v.value.clone());
        let base = p.variable(BASE_MODEL_VARIABLE).map(|v| v.value.clone());
        if let (Some(Value::Null), Some(base @ Value::String(_))) = (newest, base) {
            platform
                .update_variables(
                    &p.id,
                    &[VariableUpdate {
                        name: NEWEST_MODEL_VARIABLE.into(),
                        value: base,
                    }],
                )
                .await?;
        }
        for (var, kind) in [
            (DATASET_VARIABLE, "dataset"),
            (BASE_MODEL_VARIABLE, "model"),
        ] {
            if p.variable(var).is_some_and(|v| v.value.is_null()) {
                return Err(WorkerError::input(
                    var,
                    format!(
                        "the pipeline's {kind} variable is empty: set it (--var \"{var}=...\")"
                    ),
                ));
            }
        }
        self.submit(
            Function::Pipeline,
            json!({"pipeline_id": p.id}),
            Some(ExecutionPipeline {
                id: p.id.clone(),
                node_id: None,
                execution_id: None,
            }),
        )
        .await
    }

    pub async fn get(&self, id: &str) -> Result<Execution> {
        Ok(self.platform.get_execution(id).await?)
    }

    pub async fn list(&self, query: &ExecutionQuery) -> Result<Vec<Execution>> {
        Ok(self.platform.list_executions(query).await?)
    }

    /// Waits until the execution ends (or, on shutdown, stops running here).
    pub async fn wait(&self, id: &str) -> Result<Execution> {
        let mut ended = self.inner.ended.subscribe();
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
        self.inner.accepting.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + self.config.drain();
        while self.running_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let controls: Vec<Arc<Control>> = self
            .inner
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
        self.inner.lock.lock().expect("lock").take();
    }

    fn running_count(&self) -> usize {
        self.inner
            .controls
            .lock()
            .expect("controls lock")
            .values()
            .filter(|c| c.running.load(Ordering::SeqCst))
            .count()
    }

    /// Scrape-time gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let controls = self.inner.controls.lock().expect("controls lock");
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
                ("device", self.inner.queued_device.load(Ordering::SeqCst)),
                ("embed", self.inner.queued_embed.load(Ordering::SeqCst)),
            ],
            running,
            device_pending: self.device.pending(),
            uptime: self.inner.started.elapsed(),
            searches: cliptune_store::vectors::search_counts(),
        }
    }

    /// Executions waiting to start, all lanes together.
    pub fn queue_depth(&self) -> usize {
        self.inner.queued_device.load(Ordering::SeqCst)
            + self.inner.queued_embed.load(Ordering::SeqCst)
    }
}
