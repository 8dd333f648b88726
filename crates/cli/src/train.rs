//! `cliptune train` and `cliptune eval`.

use crate::{models, output, Ctx};
use anyhow::{bail, Context, Result};
use clap::Args;
use cliptune_clip::{checkpoint, parse_device, LoadOptions};
use cliptune_store::{LocalStore, Platform, Subsets};
use cliptune_train::{data, trainer, Event, Job, Metrics, Phase, Source, TrainConfig};
use serde::Serialize;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Fine-tune a model on captioned images and register the result as a new model.
///
/// Example: cliptune train --data ./pets --base-model openai-b32 --config '{"num_epochs": 5, "learning_rate": 1e-5}'
#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["data", "dataset"])))]
#[command(
    after_help = "Data folder: captions.jsonl with one {\"file\", \"caption\", \"subset\"?, \"label\"?} object per line \
(subset: train | validation; without it 10% is held out by a seeded split).\n\
With --json, progress and the result are JSON lines on stdout; the last line is the result.\n\
Config keys: see docs/training.md."
)]
pub struct TrainArgs {
    /// Folder with captions.jsonl and the images it names.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Dataset of the store (id or name): items tagged train / validation are the subsets
    /// (untagged: a seeded 10% split, as for a folder).
    #[arg(long)]
    dataset: Option<String>,
    /// Base model: registry id or name, or a checkpoint path.
    #[arg(long)]
    base_model: String,
    /// Training config as JSON, or @FILE; merged shallowly onto the base model's config.
    #[arg(long)]
    config: Option<String>,
    /// Continue the same run (same data, base model and config) from its last completed epoch.
    #[arg(long)]
    resume: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Name of the new model (default: <base name>-ft).
    #[arg(long)]
    name: Option<String>,
    /// libtorch intra-op threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Image-decoding threads (0: every core this process may use less one for the device
    /// thread, at least 1).
    #[arg(long, default_value_t = 0)]
    decode_threads: usize,
}

/// Evaluate a model on captioned images: validation loss, recall@1/5/10 both ways, caption accuracy.
///
/// Example: cliptune eval --model openai-b32 --data ./pets --subset validation --json
#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["data", "dataset"])))]
pub struct EvalArgs {
    /// Registry id or name, or a checkpoint path.
    #[arg(long)]
    model: String,
    /// Folder with captions.jsonl and the images it names.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Dataset of the store (id or name): its items tagged train or validation.
    #[arg(long)]
    dataset: Option<String>,
    /// Only pairs of this subset (default: every pair).
    #[arg(long)]
    subset: Option<String>,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Batch size of the validation loss (fixed, so the loss is comparable across runs).
    #[arg(long, default_value_t = 256)]
    eval_batch_size: usize,
    /// fp32, bf16 autocast, or fp16 autocast (CUDA only).
    #[arg(long, default_value = "fp32")]
    precision: cliptune_train::Precision,
    /// Fail when more than this share of pairs is unusable.
    #[arg(long, default_value_t = 0.05)]
    max_bad_fraction: f64,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Serialize)]
struct TrainResult {
    id: String,
    name: String,
    base_model: String,
    best_epoch: usize,
    epochs_run: usize,
    stopped_early: bool,
    metrics: Metrics,
    baseline: Metrics,
    skipped_pairs: usize,
    report: PathBuf,
}

fn read_config(arg: Option<&str>) -> Result<Value> {
    let Some(arg) = arg else {
        return Ok(Value::Null);
    };
    let (text, what) = match arg.strip_prefix('@') {
        Some(file) => (
            std::fs::read_to_string(file).with_context(|| format!("reading config file {file}"))?,
            file.to_string(),
        ),
        None => (arg.to_string(), "--config".to_string()),
    };
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{what} is not valid JSON"))?;
    if !v.is_object() {
        bail!("{what} must be a JSON object");
    }
    Ok(v)
}

/// The config stored with a model trained earlier (merged under the user's).
fn base_config(path: &Path) -> Result<Value> {
    let file = path.join("train_config.json");
    if !file.is_file() {
        return Ok(Value::Null);
    }
    let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", file.display()))
}

fn set_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

/// The pairs of a folder, or of a store dataset (whose images are read through the store,
/// on the process's runtime, while training runs).
fn read_source(ctx: &Ctx, folder: Option<&Path>, dataset: Option<&str>) -> Result<Source> {
    match (folder, dataset) {
        (Some(dir), _) => Ok(data::read_folder(dir)?),
        (None, Some(name)) => {
            let rt = crate::serve::runtime()?;
            let store: Arc<dyn Platform> = Arc::new(LocalStore::open(&ctx.home)?);
            let source = rt.block_on(async {
                let ds = store.resolve_dataset(name).await?;
                let tagged = cliptune_worker::dataset_source(
                    &store,
                    &ds.id,
                    &Subsets::default_filters(),
                    &|| Ok(()),
                )
                .await?;
                if !tagged.pairs.is_empty() || !tagged.bad.is_empty() {
                    return anyhow::Ok(tagged);
                }
                // No item is tagged train or validation: every item, split the way a
                // folder without a subset column is (a seeded 10% for validation).
                let everything = Subsets {
                    train: cliptune_store::dql::default_filter(),
                    validation: serde_json::json!({"id": "$none"}),
                };
                let mut source =
                    cliptune_worker::dataset_source(&store, &ds.id, &everything, &|| Ok(()))
                        .await?;
                for pair in &mut source.pairs {
                    pair.subset = None;
                }
                if source.pairs.is_empty() {
                    bail!("dataset {name} has no usable image-caption pairs");
                }
                anyhow::Ok(source)
            })?;
            Ok(source)
        }
        (None, None) => bail!("give --data DIR or --dataset D"),
    }
}

pub fn train(ctx: &Ctx, args: TrainArgs) -> Result<()> {
    let user = read_config(args.config.as_deref())?;
    let base = models::resolve(ctx, &args.base_model)?;
    let parsed = TrainConfig::from_layers(&[&base_config(&base)?, &user])?;
    let device = parse_device(&args.device)?;
    set_threads(args.threads);
    let source = read_source(ctx, args.data.as_deref(), args.dataset.as_deref())?;
    let base_name = args.base_model.clone();
    let job = Job {
        base: base.clone(),
        base_name: base_name.clone(),
        source,
        config: parsed.config,
        warnings: parsed.warnings,
        runs_root: ctx.home.join("runs"),
        device,
        resume: args.resume,
        decode_threads: args.decode_threads,
    };
    let cancel = AtomicBool::new(false);
    let mut view = ProgressView::new(ctx.json);
    let outcome = trainer::run(job, &mut |e| view.event(e), &cancel);
    view.finish();
    let outcome = outcome?;
    let stem = Path::new(&base_name)
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let name = args.name.unwrap_or_else(|| format!("{stem}-ft"));
    let entry = models::register_trained(ctx, &outcome.model_dir, &name, &base_name)?;
    let model_dir = models::resolve(ctx, &entry.id)?;
    // The registered copy holds everything the run produced; the run directory's
    // checkpoints (optimizer state included) are no longer needed.
    let _ = std::fs::remove_dir_all(&outcome.run_dir);
    let r = &outcome.report;
    let result = TrainResult {
        id: entry.id.clone(),
        name: entry.name.clone(),
        base_model: base_name,
        best_epoch: r.best_epoch,
        epochs_run: r.epochs_run,
        stopped_early: r.stopped_early,
        metrics: r.final_metrics,
        baseline: r.history[0].metrics,
        skipped_pairs: r.data.bad.len(),
        report: model_dir.join(cliptune_train::report::HTML),
    };
    if ctx.json {
        let mut v = serde_json::to_value(&result)?;
        v["event"] = "done".into();
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{}\nbest epoch {} of {}{}; report {}\n{}",
            result.id,
            result.best_epoch,
            result.epochs_run,
            if result.stopped_early {
                " (stopped early)"
            } else {
                ""
            },
            result.report.display(),
            metrics_table(&result.baseline, &result.metrics)
        );
    }
    Ok(())
}

pub fn eval(ctx: &Ctx, args: EvalArgs) -> Result<()> {
    let path = models::resolve(ctx, &args.model)?;
    let device = parse_device(&args.device)?;
    set_threads(args.threads);
    let precision = args.precision;
    if args.eval_batch_size < 2 {
        bail!("--eval-batch-size must be at least 2");
    }
    let clip = checkpoint::load(&path, device, &LoadOptions::default())?;
    let source = read_source(ctx, args.data.as_deref(), args.dataset.as_deref())?;
    let (metrics, bad, n) = trainer::evaluate_pairs(
        &clip,
        &source,
        args.subset.as_deref(),
        args.eval_batch_size,
        precision,
        args.max_bad_fraction,
        0,
    )?;
    #[derive(Serialize)]
    struct EvalResult {
        #[serde(flatten)]
        metrics: Metrics,
        pairs: usize,
        skipped: Vec<cliptune_train::BadPair>,
    }
    let result = EvalResult {
        metrics,
        pairs: n,
        skipped: bad,
    };
    output::print(ctx, &result, |r| {
        let m = &r.metrics;
        let mut s = format!(
            "{} pairs\nval_loss {:.4}\ni2t R@1 {:.4}  R@5 {:.4}  R@10 {:.4}\nt2i R@1 {:.4}  R@5 {:.4}  R@10 {:.4}\ncaption accuracy {:.4}",
            r.pairs, m.val_loss, m.i2t_r1, m.i2t_r5, m.i2t_r10, m.t2i_r1, m.t2i_r5, m.t2i_r10, m.caption_accuracy
        );
        if !r.skipped.is_empty() {
            s.push_str(&format!("\nskipped {} unusable pairs:", r.skipped.len()));
            for b in &r.skipped {
                s.push_str(&format!("\n  {b}"));
            }
        }
        s
    });
    Ok(())
}

fn metrics_table(before: &Metrics, after: &Metrics) -> String {
    let rows = [
        ("val_loss", before.val_loss, after.val_loss),
        ("i2t_r1", before.i2t_r1, after.i2t_r1),
        ("i2t_r5", before.i2t_r5, after.i2t_r5),
        ("i2t_r10", before.i2t_r10, after.i2t_r10),
        ("t2i_r1", before.t2i_r1, after.t2i_r1),
        ("t2i_r5", before.t2i_r5, after.t2i_r5),
        ("t2i_r10", before.t2i_r10, after.t2i_r10),
        (
            "caption_accuracy",
            before.caption_accuracy,
            after.caption_accuracy,
        ),
    ];
    let mut s = format!("{:<18}{:>10}{:>10}", "metric", "base", "trained");
    for (k, b, a) in rows {
        s.push_str(&format!("\n{k:<18}{b:>10.4}{a:>10.4}"));
    }
    s
}

/// Shows progress: a bar on a terminal, JSON lines with `--json`, plain epoch lines otherwise.
struct ProgressView {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<Instant>,
    last_phase: Option<Phase>,
}

impl ProgressView {
    fn new(json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(1);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        Self {
            json,
            bar,
            last_line: None,
            last_phase: None,
        }
    }

    fn line(&self, v: Value) {
        println!("{}", serde_json::to_string(&v).expect("json"));
    }

    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Progress(p) => {
                let phase_changed = self.last_phase != Some(p.phase);
                self.last_phase = Some(p.phase);
                if self.json {
                    // One line a second at most, plus every phase change.
                    let due = self
                        .last_line
                        .is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0);
                    if due || phase_changed {
                        self.last_line = Some(Instant::now());
                        let mut v = serde_json::to_value(p).expect("json");
                        v["event"] = "progress".into();
                        self.line(v);
                    }
                } else if let Some(bar) = &self.bar {
                    bar.set_length(p.steps.max(1));
                    bar.set_position(p.step);
                    let mut msg =
                        format!("{:?} epoch {}/{}", p.phase, p.epoch, p.epochs).to_lowercase();
                    if let Some(l) = p.loss {
                        msg.push_str(&format!(" loss {l:.4}"));
                    }
                    if let Some(s) = p.samples_per_sec {
                        msg.push_str(&format!(" {s:.1} samples/s"));
                    }
                    if let Some(st) = &p.stages {
                        msg.push_str(&format!("; {}", st.summary()));
                    }
                    bar.set_message(msg);
                } else if phase_changed {
                    eprintln!("{:?}", p.phase);
                }
            }
            Event::Epoch(r) => {
                if self.json {
                    let mut v = serde_json::to_value(r).expect("json");
                    v["event"] = "epoch".into();
                    self.line(v);
                } else {
                    let m = &r.metrics;
                    let msg = format!(
                        "epoch {}: val_loss {:.4} i2t_r1 {:.3} t2i_r1 {:.3} caption_acc {:.3}{}",
                        r.epoch,
                        m.val_loss,
                        m.i2t_r1,
                        m.t2i_r1,
                        m.caption_accuracy,
                        if r.improved { " *" } else { "" }
                    );
                    match &self.bar {
                        Some(bar) => bar.println(msg),
                        None => eprintln!("{msg}"),
                    }
                }
            }
            Event::Warning(w) => {
                if self.json {
                    self.line(serde_json::json!({"event": "warning", "message": w}));
                } else {
                    match &self.bar {
                        Some(bar) => bar.println(format!("warning: {w}")),
                        None => eprintln!("warning: {w}"),
                    }
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
