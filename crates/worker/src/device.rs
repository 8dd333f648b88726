//! The device has one owner: an OS thread fed through a channel.
//!
//! Two kinds of jobs reach it. *Long* jobs (a training run) hold the device for minutes;
//! *short* jobs (one embedding batch) take milliseconds. A long job calls
//! [`DeviceCtx::serve_pending`] between its steps, which runs the short jobs waiting
//! meanwhile, so embedding and online requests keep moving during a training run while
//! two trainings never overlap. Loaded inference models are cached on this thread, so a
//! model is read from disk once, not per batch.

use crate::error::{Result, WorkerError};
use cliptune_clip::{checkpoint, Clip, LoadOptions};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

type JobFn = Box<dyn FnOnce(&mut DeviceCtx) + Send>;

enum Job {
    Long(JobFn),
    Short(JobFn),
}

/// How many inference models stay loaded on the device thread.
const MODEL_CACHE: usize = 2;

/// What a job running on the device thread can use.
pub struct DeviceCtx {
    pub device: tch::Device,
    rx: mpsc::Receiver<Job>,
    deferred: VecDeque<JobFn>,
    models: VecDeque<(PathBuf, Rc<Clip>)>,
    serving: bool,
    pending: Arc<AtomicUsize>,
}

impl DeviceCtx {
    /// Runs the short jobs that are waiting (long ones are kept for later). Long jobs call
    /// this between steps so that they share the device fairly with inference.
    pub fn serve_pending(&mut self) {
        if self.serving {
            return;
        }
        self.serving = true;
        loop {
            match self.rx.try_recv() {
                Ok(Job::Short(f)) => {
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    f(self)
                }
                Ok(Job::Long(f)) => self.deferred.push_back(f),
                Err(_) => break,
            }
        }
        self.serving = false;
    }

    /// The inference model stored in `dir` (a native checkpoint), loaded once and cached.
    pub fn model(&mut self, dir: &Path) -> Result<Rc<Clip>> {
        if let Some(pos) = self.models.iter().position(|(p, _)| p == dir) {
            let entry = self.models.remove(pos).expect("position is valid");
            let clip = entry.1.clone();
            self.models.push_front(entry);
            return Ok(clip);
        }
        let clip = Rc::new(checkpoint::load(dir, self.device, &LoadOptions::default())?);
        self.models.push_front((dir.to_path_buf(), clip.clone()));
        self.models.truncate(MODEL_CACHE);
        Ok(clip)
    }

    /// Drops a cached model (its files changed or were removed).
    pub fn forget_model(&mut self, dir: &Path) {
        self.models.retain(|(p, _)| p != dir);
    }
}

/// A cheap handle to the device thread.
#[derive(Clone)]
pub struct DeviceHandle {
    tx: mpsc::Sender<Job>,
    device: tch::Device,
    name: String,
    pending: Arc<AtomicUsize>,
}

impl DeviceHandle {
    /// Starts the owner thread of `device`. `threads` > 0 sets libtorch's intra-op threads.
    pub fn start(device: tch::Device, threads: usize) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let name = cliptune_clip::device_name(device);
        let thread_pending = pending.clone();
        std::thread::Builder::new()
            .name(format!("device-{name}"))
            .spawn(move || {
                if threads > 0 {
                    tch::set_num_threads(threads as i32);
                }
                let mut ctx = DeviceCtx {
                    device,
                    rx,
                    deferred: VecDeque::new(),
                    models: VecDeque::new(),
                    serving: false,
                    pending: thread_pending,
                };
                loop {
                    if let Some(f) = ctx.deferred.pop_front() {
                        ctx.pending.fetch_sub(1, Ordering::Relaxed);
                        f(&mut ctx);
                        continue;
                    }
                    match ctx.rx.recv() {
                        Ok(Job::Long(f) | Job::Short(f)) => {
                            ctx.pending.fetch_sub(1, Ordering::Relaxed);
                            f(&mut ctx)
                        }
                        Err(_) => break,
                    }
                }
            })
            .map_err(|e| WorkerError::Internal(format!("starting the device thread: {e}")))?;
        Ok(Self {
            tx,
            device,
            name,
            pending,
        })
    }

    pub fn device(&self) -> tch::Device {
        self.device
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Jobs sent to the device and not started yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Runs a long job (it must call [`DeviceCtx::serve_pending`] between its steps).
    pub async fn run_long<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DeviceCtx) -> R + Send + 'static,
    ) -> Result<R> {
        self.send(f, true).await
    }

    /// Runs a short job (one batch).
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DeviceCtx) -> R + Send + 'static,
    ) -> Result<R> {
        self.send(f, false).await
    }

    async fn send<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DeviceCtx) -> R + Send + 'static,
        long: bool,
    ) -> Result<R> {
        let (reply, answer) = oneshot::channel();
        let job: JobFn = Box::new(move |ctx| {
            // A panic inside libtorch code must not take the device thread down with it.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx)));
            let _ = reply.send(out);
        });
        self.pending.fetch_add(1, Ordering::Relaxed);
        let job = if long {
            Job::Long(job)
        } else {
            Job::Short(job)
        };
        if self.tx.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(WorkerError::Unavailable(format!(
                "the {} device thread has stopped",
                self.name
            )));
        }
        match answer.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(WorkerError::Internal(format!("device job panicked: {msg}")))
            }
            Err(_) => Err(WorkerError::Unavailable(format!(
                "the {} device thread dropped a job",
                self.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn short_jobs_run_between_steps_of_a_long_job() {
        let dev = DeviceHandle::start(tch::Device::Cpu, 1).unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let l = log.clone();
        let d = dev.clone();
        let long = async move {
            d.run_long(move |ctx| {
                l.lock().unwrap().push("long:start".into());
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                ctx.serve_pending();
                l.lock().unwrap().push("long:end".into());
            })
            .await
        };
        let long = tokio::spawn(long);
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        let l = log.clone();
        let d = dev.clone();
        let short =
            tokio::spawn(
                async move { d.run(move |_| l.lock().unwrap().push("short".into())).await },
            );
        // Wait until the short job is queued before letting the long one reach its step boundary.
        while dev.pending() == 0 {
            tokio::task::yield_now().await;
        }
        go_tx.send(()).unwrap();
        long.await.unwrap().unwrap();
        short.await.unwrap().unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            vec!["long:start", "short", "long:end"],
            "the short job must run inside the long job's step boundary"
        );
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_survives() {
        let dev = DeviceHandle::start(tch::Device::Cpu, 1).unwrap();
        let err = dev.run(|_| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(dev.run(|_| 7).await.unwrap(), 7);
    }
}
