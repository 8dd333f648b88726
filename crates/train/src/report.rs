//! The run report: JSON for machines, a self-contained HTML page (inline SVG) with the loss
//! and recall curves for people. Both are stored with the trained model.

use crate::config::TrainConfig;
use crate::data::BadPair;
use crate::metrics::Metrics;
use crate::state::EpochRecord;
use crate::Result;
use cliptune_clip::checkpoint::write_atomic;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataSummary {
    pub train: usize,
    pub validation: usize,
    pub distinct_validation_captions: usize,
    /// Pairs read from the source, usable or not.
    pub total: usize,
    /// Skipped pairs and why.
    pub bad: Vec<BadPair>,
    pub batch_size: usize,
    pub grad_accumulation: usize,
    pub steps_per_epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub base_model: String,
    pub device: String,
    pub config: TrainConfig,
    pub warnings: Vec<String>,
    pub data: DataSummary,
    /// Epoch 0 is the base model.
    pub history: Vec<EpochRecord>,
    /// The epoch whose weights the model has (0: no epoch beat the base model).
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    /// Metrics of the delivered model (the best epoch's, or after WiSE-FT blending).
    pub final_metrics: Metrics,
    pub seconds: f64,
}

pub const JSON: &str = "report.json";
pub const HTML: &str = "report.html";

/// Writes `report.json` and `report.html` into `dir`.
pub fn write(dir: &Path, report: &RunReport) -> Result<()> {
    let json = serde_json::to_vec_pretty(report).expect("report serializes");
    write_atomic(&dir.join(JSON), &json)?;
    write_atomic(&dir.join(HTML), html(report).as_bytes())?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A line chart of `series` (name, points (epoch, value)) as inline SVG.
fn chart(title: &str, series: &[(&str, Vec<(f64, f64)>)], unit_range: bool) -> String {
    let (w, h, left, right, top, bottom) = (560.0, 300.0, 56.0, 150.0, 30.0, 40.0);
    let pts: Vec<&(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter()).collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><text x="{left}" y="18" font-weight="bold">{}</text>"#,
        escape(title)
    );
    if pts.is_empty() {
        svg.push_str("</svg>");
        return svg;
    }
    let x_max = pts.iter().map(|p| p.0).fold(1.0f64, f64::max);
    let (mut y_min, mut y_max) = if unit_range {
        (0.0, 1.0)
    } else {
        let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    if y_max - y_min < 1e-9 {
        y_min -= 0.5;
        y_max += 0.5;
    }
    let pw = w - left - right;
    let ph = h - top - bottom;
    let sx = |x: f64| left + pw * x / x_max;
    let sy = |y: f64| top + ph * (1.0 - (y - y_min) / (y_max - y_min));
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let y = y_min + (y_max - y_min) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{:.3}</text><line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            left - 4.0,
            sy(y) + 4.0,
            y,
            left + pw,
            sy(y),
            sy(y)
        );
    }
    let ticks = x_max as usize;
    let every = (ticks / 10).max(1);
    for e in (0..=ticks).step_by(every) {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{e}</text>"#,
            sx(e as f64),
            top + ph + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">epoch</text>"#,
        left + pw / 2.0,
        h - 4.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y) in points {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                sx(*x),
                sy(*y)
            );
        }
        let ly = top + 14.0 + 18.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            left + pw + 10.0,
            left + pw + 30.0,
            left + pw + 36.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The HTML page: summary, two charts, the epoch table, skipped pairs.
pub fn html(r: &RunReport) -> String {
    let series = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        r.history
            .iter()
            .filter_map(|e| f(e).map(|v| (e.epoch as f64, v)))
            .collect()
    };
    let loss = chart(
        "Loss",
        &[
            ("validation", series(&|e| Some(e.metrics.val_loss))),
            ("train", series(&|e| e.train_loss)),
        ],
        false,
    );
    let recall = chart(
        "Validation recall",
        &[
            ("i2t R@1", series(&|e| Some(e.metrics.i2t_r1))),
            ("i2t R@5", series(&|e| Some(e.metrics.i2t_r5))),
            ("t2i R@1", series(&|e| Some(e.metrics.t2i_r1))),
            ("t2i R@5", series(&|e| Some(e.metrics.t2i_r5))),
            (
                "caption acc.",
                series(&|e| Some(e.metrics.caption_accuracy)),
            ),
        ],
        true,
    );
    let mut rows = String::new();
    for e in &r.history {
        let m = &e.metrics;
        let _ = write!(
            rows,
            "<tr{}><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            if e.epoch == r.best_epoch { " class=\"best\"" } else { "" },
            e.epoch,
            e.train_loss.map_or("-".into(), |v| format!("{v:.4}")),
            m.val_loss, m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10, m.caption_accuracy,
            e.samples_per_sec.map_or("-".into(), |v| format!("{v:.1}")),
        );
    }
    let bad: String = r
        .data
        .bad
        .iter()
        .map(|b| format!("<li>{}</li>", escape(&b.to_string())))
        .collect();
    let warnings: String = r
        .warnings
        .iter()
        .map(|w| format!("<li>{}</li>", escape(w)))
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>cliptune run report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}tr.best{{background:#e8f4e8}}</style></head><body>
<h1>Training report</h1>
<p>Base model <b>{base}</b> on {device}; {train} training and {val} validation pairs; {epochs} epoch(s) run{stopped}; best epoch {best} (its weights are the model's). {secs:.0} s.</p>
{loss}
{recall}
<h2>Epochs</h2>
<table><tr><th>epoch</th><th>train loss</th><th>val loss</th><th>i2t R@1</th><th>R@5</th><th>R@10</th><th>t2i R@1</th><th>R@5</th><th>R@10</th><th>caption acc.</th><th>samples/s</th></tr>{rows}</table>
<h2>Warnings</h2><ul>{warnings}</ul>
<h2>Skipped pairs ({nbad} of {total})</h2><ul>{bad}</ul>
<h2>Config</h2><pre>{config}</pre>
</body></html>
"#,
        base = escape(&r.base_model),
        device = escape(&r.device),
        train = r.data.train,
        val = r.data.validation,
        epochs = r.epochs_run,
        stopped = if r.stopped_early {
            " (stopped early)"
        } else {
            ""
        },
        best = r.best_epoch,
        secs = r.seconds,
        nbad = r.data.bad.len(),
        total = r.data.total,
        config = escape(&serde_json::to_string_pretty(&r.config).unwrap_or_default()),
    )
}
