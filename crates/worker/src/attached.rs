//! Attached mode: nodes run for executions the platform created (a Dataloop agent calls
//! `dataloop/runner.py`, which hands each call over with `POST /attached`).
//!
//! The agent owns the execution record: it sets `in-progress` when it starts a call, posts
//! the progress the runner relays, and the final status and output when the call returns.
//! The worker therefore never creates executions and never writes their status; it keeps
//! each attached run's progress and outcome in memory for the runner to read
//! (`GET /attached/{id}`). The one write it makes is a rerun of a *stale* execution of
//! its own service: `in-progress`, not run here, status unchanged for `--stale-seconds`
//! (its replica died with it, e.g. `kill -9` or an OOM kill), so the platform queues it
//! again for a live replica. Executions of other services are refused and never touched.

use crate::error::{Result, WorkerError};
use crate::executions::{Function, Worker};
use cliptune_store::{ExecutionQuery, ExecutionStatus, Id};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Finished runs kept for their runner to collect; older ones are dropped first.
const KEEP_FINISHED: usize = 256;

/// One handed-over execution: progress while it runs, then its outcome.
pub struct AttachedRun {
    pub function: Function,
    progress: watch::Receiver<(u32, String)>,
    /// Taken by the run when it starts.
    pub(crate) progress_tx: Mutex<Option<watch::Sender<(u32, String)>>>,
    outcome: watch::Sender<Option<Outcome>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    /// `success`, `failed` or `terminated`.
    pub state: &'static str,
    pub output: Value,
    pub error: Option<String>,
}

/// A handed-over execution as the runner sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttachedView {
    pub execution_id: Id,
    pub function: Function,
    /// `queued`, `running`, `success`, `failed` or `terminated`.
    pub state: String,
    pub percent: u32,
    pub message: String,
    pub output: Value,
    pub error: Option<String>,
}

/// `POST /attached`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct AttachRequest {
    /// The platform's execution (the agent's `context.execution_id`).
    pub execution_id: Id,
    /// The manifest's function name (`train_model`, `embed_items`, ...).
    pub function: String,
    /// The call's inputs as ids (default: the execution's own input).
    #[serde(default)]
    pub input: Option<Value>,
}

/// The attached runs of a worker and the service it serves.
#[derive(Default)]
pub struct Registry {
    service: Mutex<Option<Id>>,
    runs: Mutex<HashMap<Id, Arc<AttachedRun>>>,
    finished: Mutex<Vec<Id>>,
}

impl Registry {
    pub fn new(service: Option<Id>) -> Self {
        Self {
            service: Mutex::new(service),
            ..Self::default()
        }
    }

    pub fn service(&self) -> Option<Id> {
        self.service.lock().expect("service lock").clone()
    }

    fn run(&self, id: &str) -> Option<Arc<AttachedRun>> {
        self.runs.lock().expect("runs lock").get(id).cloned()
    }
}

impl AttachedRun {
    fn view(&self, id: &Id, running: bool) -> AttachedView {
        let (percent, message) = self.progress.borrow().clone();
        let outcome = self.outcome.borrow().clone();
        let state = match &outcome {
            Some(o) => o.state.to_string(),
            None if running => "running".into(),
            None => "queued".into(),
        };
        AttachedView {
            execution_id: id.clone(),
            function: self.function,
            state,
            percent: if outcome.as_ref().is_some_and(|o| o.state == "success") {
                100
            } else {
                percent
            },
            message,
            output: outcome.as_ref().map_or(Value::Null, |o| o.output.clone()),
            error: outcome.and_then(|o| o.error),
        }
    }
}

impl Worker {
    fn attached_only(&self) -> Result<()> {
        if self.config.attached {
            Ok(())
        } else {
            Err(WorkerError::Conflict(
                "this worker is not in attached mode (start it with --attached)".into(),
            ))
        }
    }

    /// Takes over the platform's execution `req.execution_id` and queues its node. Calling
    /// it again for the same execution (an agent's retry) answers the run already there.
    pub async fn attach(&self, req: AttachRequest) -> Result<AttachedView> {
        self.attached_only()?;
        if !self.is_accepting() {
            return Err(WorkerError::Unavailable(
                "the worker is shutting down and takes no new executions".into(),
            ));
        }
        let function = Function::parse(&req.function)?;
        let id = req.execution_id.trim().to_string();
        if let Some(view) = self.attached_view(&id) {
            return Ok(view);
        }
        let execution = self.platform.get_execution(&id).await?;
        if execution.status.is_terminal() {
            return Err(WorkerError::Conflict(format!(
                "execution {id} already ended ({})",
                execution.status.as_str()
            )));
        }
        let own = self.attached().service();
        match (&own, &execution.service_id) {
            (Some(own), Some(theirs)) if own != theirs => {
                return Err(WorkerError::Conflict(format!(
                    "execution {id} belongs to service {theirs}; this worker serves {own}"
                )))
            }
            (None, Some(theirs)) => {
                *self.attached().service.lock().expect("service lock") = Some(theirs.clone());
                tracing::info!(service = %theirs, "serving the service of the first execution");
            }
            _ => {}
        }
        let input = req.input.unwrap_or(execution.input);
        crate::dispatch::validate_input(function, &input)?;
        crate::dispatch::check_refs(function, &input, &*self.platform).await?;
        let (tx, rx) = watch::channel((0u32, String::from("queued")));
        let run = Arc::new(AttachedRun {
            function,
            progress: rx,
            progress_tx: Mutex::new(Some(tx)),
            outcome: watch::channel(None).0,
        });
        self.attached()
            .runs
            .lock()
            .expect("runs lock")
            .insert(id.clone(), run.clone());
        self.enqueue_attached(&id, function, input, execution.pipeline, run.clone());
        Ok(run.view(&id, false))
    }

    /// The service this worker serves in attached mode, once known.
    pub fn attached_service(&self) -> Option<Id> {
        self.attached().service()
    }

    /// The run of a handed-over execution, if this worker has it.
    pub fn attached_view(&self, id: &str) -> Option<AttachedView> {
        let run = self.attached().run(id)?;
        let running = self.control(id).is_some_and(|c| c.is_running());
        Some(run.view(&id.to_string(), running))
    }

    /// [`Worker::attached_view`], waiting up to `wait` for the progress or outcome to
    /// change first (a runner's long poll: each answer is one progress relay).
    pub async fn wait_attached(&self, id: &str, wait: Duration) -> Result<AttachedView> {
        self.attached_only()?;
        let run = self
            .attached()
            .run(id)
            .ok_or_else(|| WorkerError::NotFound(format!("no attached execution {id} here")))?;
        // Subscribed before the check, so an outcome set in between still wakes us.
        let mut outcome = run.outcome.subscribe();
        if outcome.borrow_and_update().is_none() {
            // The registry's receiver never marks what it saw, so a clone of it would
            // answer at once forever: wait for the next change from now.
            let mut progress = run.progress.clone();
            progress.mark_unchanged();
            let _ = tokio::time::timeout(wait, async {
                tokio::select! {
                    changed = progress.changed() => {
                        // The run dropped its progress sender: it is ending, and its outcome
                        // follows. Without this wait a long poll in that window answered at
                        // once, again and again ("running" in a busy loop).
                        if changed.is_err() {
                            let _ = outcome.changed().await;
                        }
                    }
                    _ = outcome.changed() => {}
                }
            })
            .await;
        }
        // Evicted while waiting (more than KEEP_FINISHED runs ended since): an error, never a panic.
        self.attached_view(id)
            .ok_or_else(|| WorkerError::NotFound(format!("attached execution {id} was dropped")))
    }

    /// Asks a handed-over execution to stop (the agent's termination, relayed).
    pub fn terminate_attached(&self, id: &str) -> Result<AttachedView> {
        self.attached_only()?;
        let view = self
            .attached_view(id)
            .ok_or_else(|| WorkerError::NotFound(format!("no attached execution {id} here")))?;
        if let Some(c) = self.control(id) {
            c.stop(crate::ctx::StopReason::Terminate);
        }
        Ok(view)
    }

    /// Records how a handed-over execution ended; keeps the last [`KEEP_FINISHED`].
    pub(crate) fn finish_attached(&self, id: &Id, run: &AttachedRun, outcome: Outcome) {
        run.outcome.send_replace(Some(outcome));
        let mut finished = self.attached().finished.lock().expect("finished lock");
        finished.push(id.clone());
        if finished.len() > KEEP_FINISHED {
            let old = finished.remove(0);
            self.attached().runs.lock().expect("runs lock").remove(&old);
        }
    }

    /// Reruns stale executions of this worker's service (see the module doc). Pages of the
    /// listing are the platform's (100 on Dataloop's FaaS queries).
    pub async fn sweep_stale(&self) -> Result<Vec<Id>> {
        let Some(service) = self.attached().service() else {
            return Ok(vec![]);
        };
        let stale = self.config.stale_seconds as f64;
        let now = cliptune_store::parse_rfc3339(&cliptune_store::now_rfc3339()).unwrap_or(0.0);
        let running = self
            .platform
            .list_executions(&ExecutionQuery {
                status: Some(ExecutionStatus::InProgress),
                service_id: Some(service.clone()),
                ..ExecutionQuery::default()
            })
            .await?;
        let mut rerun = Vec::new();
        for e in running {
            // The platform filters; checking again keeps a lax filter from touching others.
            if e.service_id.as_deref() != Some(&service) || self.control(&e.id).is_some() {
                continue;
            }
            let moved = cliptune_store::parse_rfc3339(&e.latest_status.timestamp)
                .or_else(|| cliptune_store::parse_rfc3339(&e.updated_at));
            if moved.is_some_and(|t| now - t < stale) {
                continue;
            }
            match self.platform.rerun_execution(&e.id).await {
                Ok(_) => {
                    tracing::warn!(execution = %e.id, function = %e.function_name,
                        "rerun: in progress without a sign of life for {stale} s (its replica died)");
                    rerun.push(e.id);
                }
                // Another replica's sweep was first, or the agent just moved it.
                Err(err) => tracing::info!(execution = %e.id, error = %err, "not rerun"),
            }
        }
        Ok(rerun)
    }

    /// Sweeps now and then every half `--stale-seconds` until the worker stops accepting.
    pub(crate) fn spawn_sweeps(&self) {
        let weak = self.downgrade();
        let every = Duration::from_secs_f64((self.config.stale_seconds as f64 / 2.0).max(0.5));
        tokio::spawn(async move {
            loop {
                let Some(w) = Worker::upgrade(&weak) else {
                    break;
                };
                if !w.is_accepting() {
                    break;
                }
                if let Err(e) = w.sweep_stale().await {
                    tracing::warn!(error = %e, "stale-execution sweep failed; trying again later");
                }
                drop(w);
                tokio::time::sleep(every).await;
            }
        });
    }
}
