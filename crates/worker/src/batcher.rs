//! Dynamic batching of online embedding (`POST /embed`, `POST /search`).
//!
//! A request is a list of inputs (a tokenized text or a preprocessed image). One loop forms
//! device batches from the queued inputs, first come first served, for the model of the
//! oldest request, until the token budget is full: a text costs its tokens, an image its
//! patches, which is what the transformer's work grows with. While the device runs one
//! batch, new requests queue up, so batches grow with the load on their own: a lone request
//! runs at once with no added wait, and many concurrent requests share few large batches.
//! A request is answered when its last input is done.
//!
//! Admission is bounded ([`Batcher::admit`]): past `max_inflight` requests a new one fails
//! at once (HTTP 429) rather than waiting in a queue that only grows.

use crate::device::DeviceHandle;
use crate::error::{Result, WorkerError};
use crate::infer::{encode, Input, Precision, Prepared};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Limits of online embedding.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OnlineConfig {
    /// Most tokens (text tokens plus image patches) in one device batch.
    pub token_budget: usize,
    /// Most online requests (embed and search) admitted at once; more answer 429.
    pub max_inflight: usize,
    /// The worker's embedding precision (`--embed-precision`).
    pub precision: Precision,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            // 4096 is 83 ViT-B/32 images (49 patches) or a few hundred short texts: large
            // enough to use the device well, small enough to keep one batch under ~1 s on CPU.
            token_budget: 4096,
            max_inflight: 128,
            precision: Precision::Fp32,
        }
    }
}

impl OnlineConfig {
    /// The limits of `cliptune serve`'s flags (`--embed-token-budget`, `--max-inflight`).
    pub fn of(config: &crate::WorkerConfig) -> Self {
        Self {
            token_budget: config.embed_token_budget,
            max_inflight: config.max_inflight,
            ..Self::default()
        }
    }
}

/// Where a request's time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// From admission to the start of the first batch that carried one of its inputs.
    pub queue: Duration,
    /// Device time of the batches that carried its inputs.
    pub device: Duration,
    pub batches: u32,
    /// Inputs in the largest batch that carried one of its inputs.
    pub batch_inputs: usize,
    /// Tokens in that batch.
    pub batch_tokens: usize,
}

/// A slot of the in-flight bound; the request counts as in flight while it is held.
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    pub admitted: Instant,
}

struct Job {
    model: Arc<Prepared>,
    inputs: Vec<Option<Input>>,
    next: usize,
    out: Vec<Vec<f32>>,
    done: usize,
    admitted: Instant,
    timing: Timing,
    started: bool,
    reply: oneshot::Sender<Result<(Vec<Vec<f32>>, Timing)>>,
}

/// Online embedding's queue, batch loop and admission bound.
pub struct Batcher {
    device: DeviceHandle,
    config: OnlineConfig,
    permits: Arc<Semaphore>,
    tx: OnceLock<mpsc::UnboundedSender<Job>>,
    batches: Arc<AtomicU64>,
    rejected: AtomicU64,
}

impl Batcher {
    pub fn new(device: DeviceHandle, config: OnlineConfig) -> Self {
        Self {
            device,
            permits: Arc::new(Semaphore::new(config.max_inflight.max(1))),
            config,
            tx: OnceLock::new(),
            batches: Arc::new(AtomicU64::new(0)),
            rejected: AtomicU64::new(0),
        }
    }

    /// Admits a request, or fails at once with `Overloaded` when `max_inflight` are running.
    pub fn admit(&self) -> Result<Permit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Ok(Permit {
                _permit: p,
                admitted: Instant::now(),
            }),
            Err(_) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(WorkerError::Overloaded(format!(
                    "{} online requests are in flight (--max-inflight); retry shortly",
                    self.config.max_inflight
                )))
            }
        }
    }

    /// L2-normalized vectors of `inputs`, in their order.
    pub async fn embed(
        &self,
        permit: &Permit,
        model: Arc<Prepared>,
        inputs: Vec<Input>,
    ) -> Result<(Vec<Vec<f32>>, Timing)> {
        if inputs.is_empty() {
            return Ok((Vec::new(), Timing::default()));
        }
        let (reply, answer) = oneshot::channel();
        let n = inputs.len();
        let job = Job {
            model,
            inputs: inputs.into_iter().map(Some).collect(),
            next: 0,
            out: vec![Vec::new(); n],
            done: 0,
            admitted: permit.admitted,
            timing: Timing::default(),
            started: false,
            reply,
        };
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(batch_loop(
                rx,
                self.device.clone(),
                self.config.token_budget.max(1),
                self.config.precision,
                self.batches.clone(),
            ));
            tx
        });
        tx.send(job)
            .map_err(|_| WorkerError::Unavailable("the online batch loop has stopped".into()))?;
        answer.await.map_err(|_| {
            WorkerError::Unavailable("the online batch loop dropped a request".into())
        })?
    }
}

/// Where each input of a batch came from: (job index in the queue, input index).
type Slot = (usize, usize);

async fn batch_loop(
    mut rx: mpsc::UnboundedReceiver<Job>,
    device: DeviceHandle,
    budget: usize,
    precision: Precision,
    batches: Arc<AtomicU64>,
) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(job) => queue.push_back(job),
                None => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            queue.push_back(job);
        }
        // A client that went away does not need its vectors.
        queue.retain(|j| !j.reply.is_closed());
        let Some(head) = queue.front() else { continue };
        let model = head.model.clone();

        let mut images: Vec<Vec<f32>> = Vec::new();
        let mut texts: Vec<Vec<i64>> = Vec::new();
        let (mut image_slots, mut text_slots): (Vec<Slot>, Vec<Slot>) = (Vec::new(), Vec::new());
        let mut cost = 0usize;
        let started = Instant::now();
        'fill: for (qi, job) in queue.iter_mut().enumerate() {
            if !Arc::ptr_eq(&job.model, &model) && job.model.dir != model.dir {
                continue;
            }
            while job.next < job.inputs.len() {
                let c = job.inputs[job.next].as_ref().map_or(1, |i| model.cost(i));
                // The first input always goes in, so an input larger than the budget still runs.
                if cost > 0 && cost + c > budget {
                    break 'fill;
                }
                cost += c;
                match job.inputs[job.next].take() {
                    Some(Input::Image(px)) => {
                        images.push(px);
                        image_slots.push((qi, job.next));
                    }
                    Some(Input::Text(ids)) => {
                        texts.push(ids);
                        text_slots.push((qi, job.next));
                    }
                    None => {}
                }
                job.next += 1;
                if !job.started {
                    job.started = true;
                    job.timing.queue = started.saturating_duration_since(job.admitted);
                }
            }
        }
        let n_inputs = images.len() + texts.len();
        let m = model.clone();
        let result = device
            .run(move |dev| {
                let clip = dev.model(&m.dir)?;
                encode(&clip, precision, images, texts, true)
            })
            .await
            .and_then(|r| r);
        let took = started.elapsed();
        batches.fetch_add(1, Ordering::Relaxed);

        let mut touched: Vec<usize> = image_slots.iter().chain(&text_slots).map(|s| s.0).collect();
        touched.sort_unstable();
        touched.dedup();
        for &qi in &touched {
            let t = &mut queue[qi].timing;
            t.device += took;
            t.batches += 1;
            if n_inputs > t.batch_inputs {
                t.batch_inputs = n_inputs;
                t.batch_tokens = cost;
            }
        }
        match result {
            Ok((img, txt)) => {
                for ((qi, ii), v) in image_slots
                    .into_iter()
                    .zip(img)
                    .chain(text_slots.into_iter().zip(txt))
                {
                    queue[qi].out[ii] = v;
                    queue[qi].done += 1;
                }
                // Answer finished jobs (back to front so indices stay valid).
                for &qi in touched.iter().rev() {
                    if queue[qi].done == queue[qi].inputs.len() {
                        let job = queue.remove(qi).expect("index is in the queue");
                        let _ = job.reply.send(Ok((job.out, job.timing)));
                    }
                }
            }
            Err(e) => {
                // A failed batch fails every request it carried; the others go on.
                for &qi in touched.iter().rev() {
                    let job = queue.remove(qi).expect("index is in the queue");
                    let _ = job.reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

fn same_error(e: &WorkerError) -> WorkerError {
    match e.error_type() {
        "validation" => WorkerError::input("model", e.to_string()),
        "unavailable" => WorkerError::Unavailable(e.to_string()),
        _ => WorkerError::Internal(e.to_string()),
    }
}
