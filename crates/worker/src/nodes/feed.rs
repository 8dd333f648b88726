//! The embed node's feed: platform reads -> decode threads -> decoded items, each stage
//! running at once with the others and with the device.
//!
//! ```text
//!  reader task (async)            decode threads (N, std)          the node's loop
//!  pages, "has a vector?",  raw   decode + resize + normalise, dec  batches -> device
//!  up to READS_IN_FLIGHT    ───►  tokenize (cliptune_train::feed) ───► -> writer task
//!  item reads at once     (2N)                                 (2 batches)
//! ```
//!
//! Memory is bounded whatever the dataset size: at most READS_IN_FLIGHT + 2N + N raw items
//! (encoded bytes) and 2 x batch decoded items wait in the queues, besides the batch being
//! assembled, the one on the device and two batches of vectors waiting to be written. Items
//! come out in completion order (the feature set is keyed by item, so order is irrelevant),
//! each exactly once: an item is read by one read task and decoded by one thread.

use super::embed::Pages;
use crate::error::{Result, WorkerError};
use crate::infer::{read_item, Input, Prepared, Raw};
use cliptune_store::{Item, Platform};
use cliptune_train::feed::{Decoders, Meter};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Item reads in flight at once: with a remote platform each one is a download, so several
/// run together and their latency overlaps.
pub const READS_IN_FLIGHT: usize = 16;

/// Decoded items waiting for the device, in batches.
const DECODED_BATCHES: usize = 2;

/// One item, ready for the device or failed.
pub enum Decoded {
    /// Boxed: an item record is large and the queue holds many.
    Ready(Box<Item>, Input),
    Failed(Value),
}

/// What the reader reports besides items.
pub enum Note {
    /// A page was read: items of the target so far that already had a vector, and the
    /// target's size.
    Page { existing: usize, total: usize },
    /// Unreadable items (a read error, an unknown id).
    Failed(Value),
    /// Reading ended with an error: the run fails.
    Error(WorkerError),
}

/// The running feed.
pub struct Feed {
    /// Decoded items in completion order; closed once every item went through.
    pub decoded: mpsc::Receiver<Decoded>,
    /// Progress and read failures, all sent before `decoded` closes.
    pub notes: mpsc::UnboundedReceiver<Note>,
    reader: tokio::task::JoinHandle<()>,
    decoders: Option<Decoders>,
    meter: Arc<Meter>,
    /// Reader's busy seconds (not waiting for room in the queue) and items read.
    read: Arc<Mutex<(f64, usize)>>,
}

impl Feed {
    /// Starts reading `pages` and decoding on `threads` threads; `set_id` is the feature set
    /// whose existing vectors are skipped.
    pub fn start(
        platform: Arc<dyn Platform>,
        model: Arc<Prepared>,
        pages: Pages,
        set_id: String,
        batch_size: usize,
        threads: usize,
    ) -> Result<Self> {
        let threads = threads.max(1);
        let (raw_tx, raw_rx) =
            mpsc::channel::<(Item, std::result::Result<Raw, String>)>(2 * threads);
        let (decoded_tx, decoded) = mpsc::channel::<Decoded>(DECODED_BATCHES * batch_size.max(1));
        let (note_tx, notes) = mpsc::unbounded_channel();
        let read = Arc::new(Mutex::new((0.0, 0)));
        let reader = tokio::spawn(read_all(
            platform,
            pages,
            set_id,
            raw_tx,
            note_tx,
            read.clone(),
        ));
        let raw_rx = Mutex::new(raw_rx);
        let decoders = Decoders::start(
            threads,
            // One thread waits inside the lock, the others for the lock: each raw item goes
            // to exactly one thread.
            move || raw_rx.lock().ok()?.blocking_recv(),
            move |(item, raw)| decode(&model, item, raw),
            move |d| decoded_tx.blocking_send(d).is_ok(),
        )
        .map_err(|e| WorkerError::Internal(format!("starting decode threads: {e}")))?;
        Ok(Self {
            decoded,
            notes,
            reader,
            meter: decoders.meter(),
            decoders: Some(decoders),
            read,
        })
    }

    pub fn threads(&self) -> usize {
        self.decoders.as_ref().map_or(0, Decoders::threads)
    }

    /// Reader's busy seconds and items read so far.
    pub fn read(&self) -> (f64, usize) {
        *self.read.lock().expect("read meter")
    }

    /// Decode threads' busy thread-seconds and items decoded so far.
    pub fn decode(&self) -> (f64, usize) {
        (self.meter.thread_seconds(), self.meter.jobs() as usize)
    }

    /// Stops everything (also mid-way) and waits for the decode threads.
    pub async fn close(mut self) {
        self.reader.abort();
        let _ = (&mut self.reader).await;
        // With the reader gone (its sender dropped) and the receiver closed, every thread
        // ends at its next wait.
        self.decoded.close();
        while self.decoded.try_recv().is_ok() {}
        if let Some(d) = self.decoders.take() {
            let _ = tokio::task::spawn_blocking(move || d.join()).await;
        }
    }
}

/// Reads every page and item of the target; items go to the decode threads, the rest to
/// the notes.
async fn read_all(
    platform: Arc<dyn Platform>,
    mut pages: Pages,
    set_id: String,
    raw: mpsc::Sender<(Item, std::result::Result<Raw, String>)>,
    notes: mpsc::UnboundedSender<Note>,
    meter: Arc<Mutex<(f64, usize)>>,
) {
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    let mut reads = tokio::task::JoinSet::new();
    let outcome: Result<()> = async {
        let mut existing = 0;
        loop {
            let page = pages.next(&platform, &set_id).await?;
            existing += page.existing;
            let _ = notes.send(Note::Page {
                existing,
                total: page.total,
            });
            for f in page.failed {
                let _ = notes.send(Note::Failed(f));
            }
            for item in page.todo {
                while reads.len() >= READS_IN_FLIGHT {
                    let done = reads.join_next().await.expect("reads in flight");
                    let done = done.map_err(|e| WorkerError::Internal(format!("reading: {e}")))?;
                    if !forward(&raw, done, &mut waited).await {
                        return Ok(());
                    }
                    count(&meter, started, waited);
                }
                let platform = platform.clone();
                reads.spawn(async move {
                    let r = read_item(&*platform, &item).await;
                    (item, r)
                });
            }
            if !page.more {
                break;
            }
        }
        while let Some(done) = reads.join_next().await {
            let done = done.map_err(|e| WorkerError::Internal(format!("reading: {e}")))?;
            if !forward(&raw, done, &mut waited).await {
                return Ok(());
            }
            count(&meter, started, waited);
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        let _ = notes.send(Note::Error(e));
    }
    let mut m = meter.lock().expect("read meter");
    m.0 = (started.elapsed() - waited).as_secs_f64();
}

/// Hands one finished read to the decode threads, adding the wait for room to `waited`;
/// false once they are gone.
async fn forward(
    raw: &mpsc::Sender<(Item, std::result::Result<Raw, String>)>,
    done: (Item, std::result::Result<Raw, String>),
    waited: &mut Duration,
) -> bool {
    let t = Instant::now();
    let ok = raw.send(done).await.is_ok();
    *waited += t.elapsed();
    ok
}

/// One more item read: the reader's busy time is its wall time less its waits for room.
fn count(meter: &Mutex<(f64, usize)>, started: Instant, waited: Duration) {
    let mut m = meter.lock().expect("read meter");
    m.0 = started.elapsed().saturating_sub(waited).as_secs_f64();
    m.1 += 1;
}

fn decode(model: &Prepared, item: Item, raw: std::result::Result<Raw, String>) -> Decoded {
    match raw.and_then(|raw| model.input(raw, &item.filename)) {
        Ok(input) => Decoded::Ready(Box::new(item), input),
        Err(reason) => Decoded::Failed(json!({"item_id": item.id, "reason": reason})),
    }
}
