//! Prometheus metrics in the text exposition format, kept in plain maps behind one mutex:
//! the worker's label sets are few (routes x methods x statuses, functions x statuses),
//! so a registry crate would add weight without adding anything we need.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the request-duration histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct State {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<(String, String), Histogram>,
    executions: BTreeMap<(String, String), u64>,
    samples_per_second: f64,
    training_samples: u64,
    embedded_items: u64,
    /// Busy seconds of the embed node's stages (read, decode, device, write).
    embed_stages: BTreeMap<String, f64>,
    /// Busy seconds of training's stages (read, decode, device).
    train_stages: BTreeMap<String, f64>,
}

/// The worker's counters, gauges and histograms.
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

/// Values read at scrape time from their owners rather than stored here.
pub struct Gauges {
    /// Executions waiting, per lane.
    pub queued: Vec<(&'static str, usize)>,
    /// Executions running, per function.
    pub running: Vec<(&'static str, usize)>,
    /// Jobs waiting for the device thread.
    pub device_pending: usize,
    pub uptime: Duration,
    /// Exact top-k searches, and those that needed the scan's second pass.
    pub searches: (u64, u64),
}

impl Metrics {
    pub fn record_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let mut s = self.state.lock().expect("metrics lock");
        *s.requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let h = s
            .durations
            .entry((method.to_string(), route.to_string()))
            .or_default();
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// An execution reached `status` (terminal, or re-queued).
    pub fn record_execution(&self, function: &str, status: &str) {
        let mut s = self.state.lock().expect("metrics lock");
        *s.executions
            .entry((function.to_string(), status.to_string()))
            .or_default() += 1;
    }

    /// The current training throughput (0 when no training runs).
    pub fn set_training_rate(&self, samples_per_second: f64) {
        self.state.lock().expect("metrics lock").samples_per_second = samples_per_second;
    }

    pub fn add_training_samples(&self, n: u64) {
        self.state.lock().expect("metrics lock").training_samples += n;
    }

    pub fn add_embedded_items(&self, n: u64) {
        self.state.lock().expect("metrics lock").embedded_items += n;
    }

    pub fn add_embed_stage(&self, stage: &str, seconds: f64) {
        *self
            .state
            .lock()
            .expect("metrics lock")
            .embed_stages
            .entry(stage.to_string())
            .or_default() += seconds;
    }

    pub fn add_train_stage(&self, stage: &str, seconds: f64) {
        *self
            .state
            .lock()
            .expect("metrics lock")
            .train_stages
            .entry(stage.to_string())
            .or_default() += seconds;
    }

    pub fn training_rate(&self) -> f64 {
        self.state.lock().expect("metrics lock").samples_per_second
    }

    /// The exposition text.
    pub fn render(&self, gauges: &Gauges) -> String {
        let s = self.state.lock().expect("metrics lock");
        let mut out = String::new();
        let w = &mut out;
        header(
            w,
            "cliptune_requests_total",
            "counter",
            "HTTP requests by method, route and status.",
        );
        for ((method, route, status), n) in &s.requests {
            let _ = writeln!(
                w,
                "cliptune_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        header(
            w,
            "cliptune_request_duration_seconds",
            "histogram",
            "HTTP request durations by method and route.",
        );
        for ((method, route), h) in &s.durations {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    w,
                    "cliptune_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                w,
                "cliptune_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                w,
                "cliptune_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                w,
                "cliptune_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        header(
            w,
            "cliptune_queue_depth",
            "gauge",
            "Executions waiting to start, by lane.",
        );
        for (lane, n) in &gauges.queued {
            let _ = writeln!(w, "cliptune_queue_depth{{lane=\"{lane}\"}} {n}");
        }
        header(
            w,
            "cliptune_executions_running",
            "gauge",
            "Executions running now, by function.",
        );
        for (function, n) in &gauges.running {
            let _ = writeln!(
                w,
                "cliptune_executions_running{{function=\"{function}\"}} {n}"
            );
        }
        header(
            w,
            "cliptune_executions_total",
            "counter",
            "Executions that ended (or were re-queued) in this process, by function and status.",
        );
        for ((function, status), n) in &s.executions {
            let _ = writeln!(
                w,
                "cliptune_executions_total{{function=\"{function}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            w,
            "cliptune_device_pending_jobs",
            "gauge",
            "Jobs waiting for the device thread.",
        );
        let _ = writeln!(w, "cliptune_device_pending_jobs {}", gauges.device_pending);
        header(
            w,
            "cliptune_training_samples_per_second",
            "gauge",
            "Throughput of the running training (0 when none runs).",
        );
        let _ = writeln!(
            w,
            "cliptune_training_samples_per_second {}",
            s.samples_per_second
        );
        header(
            w,
            "cliptune_training_samples_total",
            "counter",
            "Training samples processed.",
        );
        let _ = writeln!(w, "cliptune_training_samples_total {}", s.training_samples);
        header(
            w,
            "cliptune_embedded_items_total",
            "counter",
            "Items embedded by the embed node.",
        );
        let _ = writeln!(w, "cliptune_embedded_items_total {}", s.embedded_items);
        header(
            w,
            "cliptune_embed_stage_seconds_total",
            "counter",
            "Busy seconds of the embed node's stages (the largest bounds the rate).",
        );
        for (stage, seconds) in &s.embed_stages {
            let _ = writeln!(
                w,
                "cliptune_embed_stage_seconds_total{{stage=\"{stage}\"}} {seconds:.6}"
            );
        }
        header(
            w,
            "cliptune_train_stage_seconds_total",
            "counter",
            "Busy seconds of training's stages (read and decode per decode thread, device steps).",
        );
        for (stage, seconds) in &s.train_stages {
            let _ = writeln!(
                w,
                "cliptune_train_stage_seconds_total{{stage=\"{stage}\"}} {seconds:.6}"
            );
        }
        header(
            w,
            "cliptune_searches_total",
            "counter",
            "Nearest-neighbour searches over a feature set.",
        );
        let _ = writeln!(w, "cliptune_searches_total {}", gauges.searches.0);
        header(
            w,
            "cliptune_search_second_passes_total",
            "counter",
            "Searches whose int8 scan could not prove the top-k alone and rescored more rows.",
        );
        let _ = writeln!(
            w,
            "cliptune_search_second_passes_total {}",
            gauges.searches.1
        );
        header(
            w,
            "cliptune_uptime_seconds",
            "gauge",
            "Seconds since the worker started.",
        );
        let _ = writeln!(w, "cliptune_uptime_seconds {}", gauges.uptime.as_secs_f64());
        out
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.add_train_stage("decode", 1.5);
        m.add_train_stage("decode", 0.25);
        m.record_request("GET", "/health", 200, Duration::from_millis(3));
        m.record_request("GET", "/health", 200, Duration::from_millis(300));
        let text = m.render(&Gauges {
            queued: vec![("train", 2)],
            running: vec![],
            device_pending: 0,
            uptime: Duration::from_secs(1),
            searches: (7, 2),
        });
        assert!(text.contains(
            "cliptune_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 2"
        ));
        assert!(text.contains("route=\"/health\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("route=\"/health\",le=\"0.5\"} 2"), "{text}");
        assert!(text.contains("cliptune_queue_depth{lane=\"train\"} 2"));
        assert!(text.contains("cliptune_searches_total 7\n"), "{text}");
        assert!(
            text.contains("cliptune_train_stage_seconds_total{stage=\"decode\"} 1.750000\n"),
            "{text}"
        );
        assert!(
            text.contains("cliptune_search_second_passes_total 2\n"),
            "{text}"
        );
    }
}
