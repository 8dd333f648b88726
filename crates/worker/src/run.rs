//! One execution's run, the same path for both owners of its record:
//!
//! - [`Sink::Record`]: an execution this worker created; the worker writes its status to
//!   the platform (`in-progress`, progress, then the final status and output).
//! - [`Sink::Attached`]: an execution the platform's agent handed over (attached mode); the
//!   agent owns the record, so the run only keeps its progress and outcome for the runner
//!   (see [`crate::attached`]).
//!
//! Either way the node sees the same [`NodeCtx`] and ends one of three ways: success,
//! stopped (terminated or shut down) or failed.

use crate::attached::{AttachedRun, Outcome};
use crate::ctx::{NodeCtx, Queue, Stop, StopReason};
use crate::error::{Result, WorkerError};
use crate::executions::Worker;
use crate::function::Function;
use cliptune_store::{ExecutionPipeline, ExecutionProgress, ExecutionStatus, Id};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The handle a queued or running execution is controlled through.
pub struct Control {
    pub(crate) function: Function,
    pub(crate) stop: Arc<Stop>,
    pub(crate) running: AtomicBool,
    /// Set for an execution the platform handed over (attached mode).
    attached: Option<Attached>,
}

/// What an attached execution runs with: the platform's execution is not re-read.
pub(crate) struct Attached {
    pub run: Arc<AttachedRun>,
    pub input: Value,
    pub pipeline: Option<ExecutionPipeline>,
}

impl Control {
    pub(crate) fn new(function: Function, attached: Option<Attached>) -> Arc<Self> {
        Arc::new(Self {
            function,
            stop: Arc::new(Stop::default()),
            running: AtomicBool::new(false),
            attached,
        })
    }

    pub(crate) fn stop(&self, reason: StopReason) {
        self.stop.request(reason);
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

/// Where a run's life is written.
enum Sink<'a> {
    Record,
    Attached(&'a Attached),
}

/// How a node run ended.
enum Ended {
    Success(Value),
    /// Terminated or shut down; `when` is "before it started" or "while running".
    Stopped(&'static str),
    Failed(WorkerError),
}

/// What a started run has: its input and where its progress goes.
struct Started {
    input: Value,
    pipeline: Option<ExecutionPipeline>,
    progress: watch::Sender<(u32, String)>,
    /// Writes progress to the record; awaited after the node so no write is lost.
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    /// Runs one queued execution to its end.
    pub(crate) async fn run(&self, id: Id) {
        let Some(control) = self.control(&id) else {
            return;
        };
        self.dequeued(control.function);
        let sink = match &control.attached {
            Some(a) => Sink::Attached(a),
            None => Sink::Record,
        };
        let state = match self.run_node(&id, &control, &sink).await {
            Ok(state) => state,
            Err(e) => {
                // Only the record's bookkeeping can fail: an attached run writes nothing.
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
                ExecutionStatus::SystemFailure.as_str()
            }
        };
        self.metrics
            .record_execution(control.function.as_str(), state);
        self.forget(&id);
    }

    /// Starts, runs and ends the node; answers the final state for the metrics.
    async fn run_node(
        &self,
        id: &Id,
        control: &Arc<Control>,
        sink: &Sink<'_>,
    ) -> Result<&'static str> {
        let started = match sink {
            Sink::Record => {
                let execution = self.platform.get_execution(id).await?;
                if execution.status.is_terminal() {
                    return Ok(execution.status.as_str());
                }
                if control.stop.requested() {
                    return self
                        .end(id, control, sink, Ended::Stopped("before it started"))
                        .await;
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
                let (tx, rx) = watch::channel((0u32, String::from("started")));
                Started {
                    input: execution.input,
                    pipeline: execution.pipeline,
                    progress: tx,
                    writer: Some(self.progress_writer(id, rx)),
                }
            }
            Sink::Attached(a) => {
                if control.stop.requested() {
                    return self
                        .end(id, control, sink, Ended::Stopped("before it started"))
                        .await;
                }
                let Some(tx) = a.run.progress_tx.lock().expect("progress lock").take() else {
                    let e = WorkerError::Internal("the run started twice".into());
                    return self.end(id, control, sink, Ended::Failed(e)).await;
                };
                control.running.store(true, Ordering::SeqCst);
                let _ = tx.send((0, "started".into()));
                Started {
                    input: a.input.clone(),
                    pipeline: a.pipeline.clone(),
                    progress: tx,
                    writer: None,
                }
            }
        };
        let function = control.function;
        // Only the pipeline runner gets the queue.
        let queue =
            (function == Function::Pipeline).then(|| Arc::new(self.clone()) as Arc<dyn Queue>);
        let ctx = NodeCtx::new(
            self.env(),
            id.clone(),
            started.pipeline,
            control.stop.clone(),
            started.progress,
            queue,
        );
        let result = crate::dispatch::run(function, &started.input, &ctx).await;
        drop(ctx);
        if let Some(writer) = started.writer {
            let _ = writer.await;
        }
        let ended = match result {
            Ok(output) => Ended::Success(output),
            Err(e) if e.is_termination() => Ended::Stopped("while running"),
            Err(e) => {
                tracing::warn!(execution = %id, function = function.as_str(), error = %e, "execution failed");
                Ended::Failed(e)
            }
        };
        self.end(id, control, sink, ended).await
    }

    /// Writes the latest progress to the record until the node drops its sender.
    fn progress_writer(
        &self,
        id: &Id,
        mut rx: watch::Receiver<(u32, String)>,
    ) -> tokio::task::JoinHandle<()> {
        let platform = self.platform.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut written = rx.borrow().clone();
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
                    if let Err(e) = platform.progress_execution(&id, update).await {
                        tracing::warn!(execution = %id, error = %e, "progress not stored");
                    }
                    written = latest;
                }
                if changed.is_err() {
                    break;
                }
            }
        })
    }

    /// Records how the run ended where its sink says; answers the state for the metrics.
    async fn end(
        &self,
        id: &Id,
        control: &Control,
        sink: &Sink<'_>,
        ended: Ended,
    ) -> Result<&'static str> {
        match sink {
            Sink::Record => {
                let status = match ended {
                    Ended::Success(output) => {
                        self.platform
                            .finish_execution(id, ExecutionStatus::Success, Some(output), None)
                            .await?;
                        ExecutionStatus::Success
                    }
                    Ended::Stopped(when) => self.finish_stopped(id, control, when).await?,
                    Ended::Failed(e) => {
                        self.platform
                            .finish_execution(
                                id,
                                ExecutionStatus::Failed,
                                None,
                                Some(e.to_string()),
                            )
                            .await?;
                        ExecutionStatus::Failed
                    }
                };
                Ok(status.as_str())
            }
            Sink::Attached(a) => {
                let outcome = match ended {
                    Ended::Success(output) => Outcome {
                        state: "success",
                        output,
                        error: None,
                    },
                    Ended::Stopped(when) => Outcome {
                        state: "terminated",
                        output: Value::Null,
                        error: Some(match control.stop.reason() {
                            Some(StopReason::Shutdown) => format!("the worker shut down {when}"),
                            _ => format!("terminated {when}"),
                        }),
                    },
                    Ended::Failed(e) => Outcome {
                        state: "failed",
                        output: Value::Null,
                        error: Some(e.to_string()),
                    },
                };
                let state = outcome.state;
                self.finish_attached(id, &a.run, outcome);
                Ok(state)
            }
        }
    }

    /// Ends an execution that was stopped: terminated ones are `aborted` (running) or
    /// `canceled` (queued); on shutdown, idempotent ones become `rerun` so the next start
    /// queues them again, the others fail.
    pub(crate) async fn finish_stopped(
        &self,
        id: &Id,
        control: &Control,
        when: &str,
    ) -> Result<ExecutionStatus> {
        let running = control.is_running();
        match control.stop.reason() {
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
}

#[async_trait::async_trait]
impl Queue for Worker {
    async fn submit(
        &self,
        function: Function,
        input: Value,
        pipeline: Option<ExecutionPipeline>,
    ) -> Result<cliptune_store::Execution> {
        Worker::submit(self, function, input, pipeline).await
    }

    async fn wait(&self, id: &str) -> Result<cliptune_store::Execution> {
        Worker::wait(self, id).await
    }

    async fn terminate(&self, id: &str) -> Result<cliptune_store::Execution> {
        Worker::terminate(self, id).await
    }
}
