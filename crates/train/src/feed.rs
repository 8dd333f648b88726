//! The feed: decode threads between a bounded queue of jobs and a bounded queue of results.
//!
//! Decoding (JPEG decode + resize + normalise) is the CPU side's expensive stage, so it runs
//! on `threads` OS threads that each take the next job as soon as they finish one: no thread
//! waits for the slowest image of a batch, and reading (which fills the job queue) and the
//! device (which drains the result queue) overlap with it. Memory stays bounded by the two
//! queues' capacities plus one job per thread, whatever the size of the data.
//!
//! The queues are the caller's: [`Decoders::start`] takes "next job" and "emit result"
//! closures, so an async caller (the worker's embed node, over tokio channels) and a blocking
//! one ([`Feed`], over std channels: training and tests) share the threads and the timing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Decode threads when none are asked for: every core this process may use (affinity and
/// cgroup quota included) less one for the device thread, at least one.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(1)
        .max(1)
}

/// `requested`, or [`default_threads`] for 0.
pub fn resolve_threads(requested: usize) -> usize {
    if requested == 0 {
        default_threads()
    } else {
        requested
    }
}

/// Busy time of the decode threads, summed over them, and the jobs they finished.
#[derive(Debug, Default)]
pub struct Meter {
    nanos: AtomicU64,
    jobs: AtomicU64,
}

impl Meter {
    fn add(&self, busy: Duration) {
        self.nanos
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        self.jobs.fetch_add(1, Ordering::Relaxed);
    }

    /// Thread-seconds spent in jobs (not waiting for a job or for room in the results).
    pub fn thread_seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn jobs(&self) -> u64 {
        self.jobs.load(Ordering::Relaxed)
    }
}

/// The running decode threads.
pub struct Decoders {
    handles: Vec<JoinHandle<()>>,
    meter: Arc<Meter>,
}

impl Decoders {
    /// Starts `threads` threads that loop: `next()` a job (None: no more, the thread ends),
    /// `work` it, `emit` the result (false: the consumer is gone, the thread ends).
    pub fn start<J, T>(
        threads: usize,
        next: impl Fn() -> Option<J> + Send + Sync + 'static,
        work: impl Fn(J) -> T + Send + Sync + 'static,
        emit: impl Fn(T) -> bool + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let meter = Arc::new(Meter::default());
        let shared = Arc::new((next, work, emit));
        let mut handles = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let (shared, meter) = (shared.clone(), meter.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("cliptune-decode-{i}"))
                .spawn(move || {
                    let (next, work, emit) = &*shared;
                    while let Some(job) = next() {
                        let started = Instant::now();
                        let out = work(job);
                        meter.add(started.elapsed());
                        if !emit(out) {
                            return;
                        }
                    }
                });
            match spawned {
                Ok(h) => handles.push(h),
                // The threads already started end when the caller drops its queues.
                Err(e) => return Err(e),
            }
        }
        Ok(Self { handles, meter })
    }

    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    pub fn meter(&self) -> Arc<Meter> {
        self.meter.clone()
    }

    /// Waits for the threads to end (after the job queue closed or the consumer left).
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// A blocking feed over std channels: push jobs (see [`Feed::pusher`]) from one thread, iterate the
/// results (in completion order) on another.
pub struct Feed<J, T> {
    jobs: Option<SyncSender<J>>,
    results: Option<Receiver<T>>,
    decoders: Option<Decoders>,
    stop: Arc<AtomicBool>,
}

impl<J: Send + 'static, T: Send + 'static> Feed<J, T> {
    /// `capacity`: most jobs waiting and most results waiting (each queue).
    pub fn start(
        threads: usize,
        capacity: usize,
        work: impl Fn(J) -> T + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let (jobs, job_rx) = sync_channel::<J>(capacity.max(1));
        let (result_tx, results) = sync_channel::<T>(capacity.max(1));
        let job_rx = Mutex::new(job_rx);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let decoders = Decoders::start(
            threads,
            // A thread holds the lock while it waits: the others wait for the lock instead,
            // and each job goes to exactly one thread. The timeout lets a dropped feed end
            // its threads while a pusher is still alive.
            move || {
                let rx = job_rx.lock().ok()?;
                loop {
                    if stopped.load(Ordering::Relaxed) {
                        return None;
                    }
                    match rx.recv_timeout(Duration::from_millis(50)) {
                        Ok(j) => return Some(j),
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return None,
                    }
                }
            },
            work,
            move |t| result_tx.send(t).is_ok(),
        )?;
        Ok(Self {
            jobs: Some(jobs),
            results: Some(results),
            decoders: Some(decoders),
            stop,
        })
    }

    /// A handle that queues a job (blocking while the queue is full); false once the feed
    /// is gone.
    pub fn pusher(&self) -> impl Fn(J) -> bool + Send + 'static {
        let jobs = self.jobs.clone().expect("jobs open until finish");
        move |j| jobs.send(j).is_ok()
    }

    /// No more jobs from this handle: the threads end after the queued ones once every
    /// pusher is dropped too.
    pub fn finish(&mut self) {
        self.jobs.take();
    }

    /// The next result, blocking; None once every job is done, [`Feed::finish`] was called
    /// and every pusher dropped.
    pub fn recv(&self) -> Option<T> {
        self.results.as_ref()?.recv().ok()
    }

    pub fn meter(&self) -> Arc<Meter> {
        self.decoders.as_ref().expect("running").meter()
    }

    pub fn threads(&self) -> usize {
        self.decoders.as_ref().map_or(0, Decoders::threads)
    }
}

impl<J, T> Drop for Feed<J, T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs.take();
        // Threads blocked on a full result queue see the receiver gone and end.
        self.results.take();
        if let Some(d) = self.decoders.take() {
            d.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_job_exactly_once_on_several_threads() {
        let mut feed = Feed::start(4, 3, |j: u32| (j, j * 2)).unwrap();
        assert_eq!(feed.threads(), 4);
        let push = feed.pusher();
        let producer = std::thread::spawn(move || (0..500).all(push));
        let mut seen = HashSet::new();
        let mut got = 0;
        feed.finish();
        while let Some((j, twice)) = feed.recv() {
            assert_eq!(twice, j * 2);
            assert!(seen.insert(j), "job {j} came back twice");
            got += 1;
        }
        assert!(producer.join().unwrap());
        assert_eq!(got, 500);
        assert_eq!(feed.meter().jobs(), 500);
    }

    #[test]
    fn queues_stay_within_capacity_with_a_slow_consumer() {
        let (threads, capacity) = (3, 4);
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let mut feed = Feed::start(threads, capacity, move |j: usize| {
            s.fetch_add(1, Ordering::SeqCst);
            j
        })
        .unwrap();
        let push = feed.pusher();
        let pushed = Arc::new(AtomicUsize::new(0));
        let p = pushed.clone();
        let producer = std::thread::spawn(move || {
            for j in 0..200 {
                if !push(j) {
                    return;
                }
                p.fetch_add(1, Ordering::SeqCst);
            }
        });
        feed.finish();
        let mut consumed = 0;
        let mut worst = 0;
        while feed.recv().is_some() {
            consumed += 1;
            std::thread::sleep(Duration::from_micros(300));
            // Beyond what was consumed: `capacity` results waiting, one in each thread's
            // hands, `capacity` jobs queued (and the one the producer is blocked on).
            let ahead = pushed.load(Ordering::SeqCst) - consumed;
            worst = worst.max(ahead);
            assert!(
                ahead <= 2 * capacity + threads + 1,
                "{ahead} items in flight, bound {}",
                2 * capacity + threads + 1
            );
        }
        producer.join().unwrap();
        assert_eq!(consumed, 200);
        assert_eq!(started.load(Ordering::SeqCst), 200);
        // The bound was reached, so the check above could have failed.
        assert!(worst >= capacity, "{worst}");
    }

    #[test]
    fn dropping_the_feed_mid_way_ends_the_threads() {
        let feed = Feed::start(2, 1, |j: u8| j).unwrap();
        let push = feed.pusher();
        let producer = std::thread::spawn(move || (0..100).filter(|&j| push(j)).count());
        assert!(feed.recv().is_some());
        drop(feed);
        // The producer stops once the feed is gone instead of blocking for ever.
        assert!(producer.join().unwrap() < 100);
    }

    #[test]
    fn default_leaves_a_core_for_the_device() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(default_threads(), cores.saturating_sub(1).max(1));
        assert_eq!(resolve_threads(0), default_threads());
        assert_eq!(resolve_threads(5), 5);
    }
}
