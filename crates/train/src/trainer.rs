//! The training run: data checks, baseline evaluation, epochs of contrastive training with
//! evaluation after each, early stopping, checkpoints, resume, WiSE-FT, and the report.

use crate::config::{Precision, TrainConfig};
use crate::data::{split, BadPair, Pair, Rng, Source};
use crate::evaluate::{evaluate, EvalSetup};
use crate::loader::{find_bad, Augment, Batch, Loader};
use crate::metrics::Metrics;
use crate::optim::{learning_rate, treatment, AdamW};
use crate::precision::{self, autocast, LossScale};
use crate::report::{self, DataSummary, RunReport};
use crate::state::{self, EpochRecord, State};
use crate::{loss, Result, TrainError};
use cliptune_clip::{checkpoint, Clip, LoadOptions, LOGIT_SCALE_MAX};
use cliptune_prep::Codec;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A training job. Build `source` from a folder ([`crate::data::read_folder`]) or from any
/// list of [`Pair`]s (a platform dataset).
pub struct Job {
    /// Base model: any checkpoint `cliptune_clip::checkpoint::load` reads.
    pub base: PathBuf,
    /// How the base model is named in the report (registry id, or the path).
    pub base_name: String,
    pub source: Source,
    pub config: TrainConfig,
    /// Warnings from reading the config, carried into the report.
    pub warnings: Vec<String>,
    /// Parent of run directories; the run lives in `runs_root/<run key>`.
    pub runs_root: PathBuf,
    pub device: Device,
    /// Continue from the last completed epoch of the same run, if there is one.
    pub resume: bool,
    /// Image-decoding threads (0: every core this process may use less one, at least 1).
    pub decode_threads: usize,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Checking,
    Baseline,
    Training,
    Evaluating,
    Finishing,
}

/// A progress report.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub phase: Phase,
    /// Of the whole run's training steps, 0-100.
    pub percent: f64,
    pub epoch: usize,
    pub epochs: usize,
    /// Optimizer steps done in the run / planned.
    pub step: u64,
    pub steps: u64,
    /// Loss of the last step.
    pub loss: Option<f64>,
    /// Training throughput of the current epoch so far.
    pub samples_per_sec: Option<f64>,
    pub lr: Option<f64>,
    /// Where the current epoch's time goes so far (None outside training).
    pub stages: Option<Stages>,
}

/// The training epoch's stages: reading image bytes and decoding them (on the decode
/// threads, ahead of the device; their busy time divided by the threads), the device's
/// step (forward, backward, optimizer). The busiest bounds the rate.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stages {
    pub read: Stage,
    pub decode: Stage,
    pub device: Stage,
    pub decode_threads: usize,
    /// The stage with the most busy time: the one that bounds the rate.
    pub bottleneck: &'static str,
}

/// One stage: busy seconds, items (images or samples) and their rate.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stage {
    pub seconds: f64,
    pub items: usize,
    pub items_per_s: f64,
}

impl Stage {
    pub fn new(seconds: f64, items: usize) -> Self {
        Self {
            seconds,
            items,
            items_per_s: items as f64 / seconds.max(1e-9),
        }
    }
}

impl Stages {
    pub const NAMES: [&'static str; 3] = ["read", "decode", "device"];

    pub fn new(read: Stage, decode: Stage, device: Stage, decode_threads: usize) -> Self {
        let mut s = Self {
            read,
            decode,
            device,
            decode_threads,
            bottleneck: "",
        };
        s.bottleneck = s.busiest();
        s
    }

    pub fn all(&self) -> [&Stage; 3] {
        [&self.read, &self.decode, &self.device]
    }

    fn busiest(&self) -> &'static str {
        let all = self.all();
        let i = (0..all.len())
            .max_by(|&a, &b| all[a].seconds.total_cmp(&all[b].seconds))
            .unwrap_or(0);
        Self::NAMES[i]
    }

    /// `read 0.1 s (900/s), decode 2.0 s (60/s), device 1.2 s (100/s); bottleneck decode`
    pub fn summary(&self) -> String {
        let parts: Vec<String> = Self::NAMES
            .iter()
            .zip(self.all())
            .map(|(n, s)| format!("{n} {:.1} s ({:.0}/s)", s.seconds, s.items_per_s))
            .collect();
        format!("{}; bottleneck {}", parts.join(", "), self.bottleneck)
    }
}

/// What the run tells its observer.
pub enum Event<'a> {
    Progress(&'a Progress),
    /// An epoch has been evaluated and checkpointed.
    Epoch(&'a EpochRecord),
    Warning(&'a str),
}

/// The training config, as run, beside the trained weights.
pub const CONFIG_FILE: &str = "train_config.json";

/// The result of a run.
pub struct Outcome {
    /// Native checkpoint directory of the trained model, with `report.json`, `report.html`,
    /// `train_config.json` and the adapter's `best.pt` (`weights_filename`) beside the weights.
    pub model_dir: PathBuf,
    pub run_dir: PathBuf,
    pub report: RunReport,
}

/// Identifies a run: base model, config and pair list. `--resume` continues the run with the
/// same key.
pub fn run_key(base: &Path, config: &TrainConfig, source: &Source) -> String {
    // The adapter file's name changes no weight, so a run resumes under any name (and runs
    // begun before the key existed keep their key).
    let mut config = config.to_json();
    if let Some(o) = config.as_object_mut() {
        o.remove("weights_filename");
    }
    let mut text = format!("{}\n{}\n", base.display(), config);
    for p in &source.pairs {
        text.push_str(&format!(
            "{}\t{}\t{}\n",
            p.id,
            p.caption,
            p.subset.as_deref().unwrap_or("")
        ));
    }
    for b in &source.bad {
        text.push_str(&format!("bad\t{}\n", b.id));
    }
    format!("{:016x}", crate::data::fnv1a(text.as_bytes()))
}

/// Usable train and validation pairs after the bad-data check.
pub struct Checked {
    pub train: Vec<Pair>,
    pub validation: Vec<Pair>,
    pub bad: Vec<BadPair>,
    pub total: usize,
    pub ignored: usize,
}

/// Splits, decodes every image once, drops unusable pairs, and fails when more than
/// `max_bad_fraction` are unusable or a subset keeps fewer than 2 pairs.
pub fn check_data(
    source: &Source,
    config: &TrainConfig,
    codec: &Codec,
    pool: &rayon::ThreadPool,
) -> Result<Checked> {
    let total = source.pairs.len() + source.bad.len();
    let mut bad = source.bad.clone();
    let found = find_bad(&source.pairs, codec, pool);
    let bad_ids: std::collections::HashSet<&str> = found.iter().map(|b| b.id.as_str()).collect();
    let usable: Vec<Pair> = source
        .pairs
        .iter()
        .filter(|p| !bad_ids.contains(p.id.as_str()))
        .cloned()
        .collect();
    bad.extend(found.iter().cloned());
    if total > 0 && bad.len() as f64 > config.max_bad_fraction * total as f64 {
        return Err(TrainError::TooManyBad {
            bad: bad.len(),
            total,
            max_fraction: config.max_bad_fraction,
            list: bad.iter().map(ToString::to_string).collect(),
        });
    }
    let s = split(usable, config.seed, config.validation_fraction);
    for (name, n) in [("train", s.train.len()), ("validation", s.validation.len())] {
        if n < 2 {
            return Err(TrainError::Data(format!(
                "subset {name} has {n} usable pair(s); training needs at least 2 in each of train and validation{}",
                if bad.is_empty() { String::new() } else { format!(" ({} unusable pairs skipped)", bad.len()) }
            )));
        }
    }
    Ok(Checked {
        train: s.train,
        validation: s.validation,
        bad,
        total,
        ignored: s.ignored,
    })
}

pub(crate) fn thread_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    let threads = crate::feed::resolve_threads(threads);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cliptune-decode-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| TrainError::Data(format!("cannot start decoding threads: {e}")))
}

/// Runs a training job to the end (or to early stopping). `observer` sees progress,
/// epochs and warnings; setting `cancel` stops at the next step with
/// [`TrainError::Cancelled`], leaving the last completed epoch's checkpoint for `resume`.
pub fn run(job: Job, observer: &mut dyn FnMut(Event<'_>), cancel: &AtomicBool) -> Result<Outcome> {
    let started = Instant::now();
    let cfg = job.config.clone();
    precision::check(cfg.precision, job.device)?;
    let base_config = checkpoint::inspect(&job.base, &LoadOptions::default())?.config;
    cfg.check_model(&base_config)?;
    for w in &job.warnings {
        observer(Event::Warning(w));
    }
    let key = run_key(&job.base, &cfg, &job.source);
    let run_dir = job.runs_root.join(&key);
    let epochs = cfg.num_epochs;
    let mut progress = Progress {
        phase: Phase::Checking,
        percent: 0.0,
        epoch: 0,
        epochs,
        step: 0,
        steps: 0,
        loss: None,
        samples_per_sec: None,
        lr: None,
        stages: None,
    };
    observer(Event::Progress(&progress));

    let codec = Arc::new(Codec::new(
        base_config.vision.image_size as u32,
        base_config.text.context_length as usize,
    ));
    let pool = thread_pool(job.decode_threads)?;
    let checked = check_data(&job.source, &cfg, &codec, &pool)?;
    let mut warnings = job.warnings.clone();
    if checked.ignored > 0 {
        let w = format!(
            "{} pairs in subsets other than train/validation are not used",
            checked.ignored
        );
        observer(Event::Warning(&w));
        warnings.push(w);
    }
    if !checked.bad.is_empty() {
        let w = format!(
            "{} of {} pairs skipped as unusable (listed in the report)",
            checked.bad.len(),
            checked.total
        );
        observer(Event::Warning(&w));
        warnings.push(w);
    }

    // Micro-batch size: the configured one unless the training set is smaller than a step.
    let k = cfg.grad_accumulation;
    let n_train = checked.train.len();
    let mut micro = cfg.batch_size;
    if n_train < micro * k {
        micro = n_train / k;
        if micro * k < 2 {
            return Err(TrainError::config(
                "grad_accumulation",
                format!("{k} micro-batches cannot be made from {n_train} training pairs"),
            ));
        }
        let w = format!(
            "batch_size {} x grad_accumulation {k} exceeds the {n_train} training pairs; using batch_size {micro}",
            cfg.batch_size
        );
        observer(Event::Warning(&w));
        warnings.push(w);
    }
    let steps_per_epoch = (n_train / (micro * k)) as u64;
    let total_steps = steps_per_epoch * epochs as u64;
    progress.steps = total_steps;

    let mut clip = checkpoint::load(&job.base, job.device, &LoadOptions::default())?;
    let mut params = Vec::new();
    for (name, mut var) in clip.var_store().variables() {
        let t = treatment(&name, &var.size(), &base_config, &cfg);
        if t.trainable {
            params.push((name, var, t.lr_scale, t.decay));
        } else {
            let _ = var.requires_grad_(false);
        }
    }
    let mut opt = AdamW::new(params, cfg.betas, cfg.epsilon, cfg.weight_decay);

    let train = Arc::new(checked.train);
    let validation = Arc::new(checked.validation);
    let eval_setup = EvalSetup {
        codec: codec.clone(),
        pool: pool.clone(),
        batch_size: cfg.eval_batch_size,
        precision: cfg.precision,
        prefetch: 2,
    };
    let data = DataSummary {
        train: train.len(),
        validation: validation.len(),
        distinct_validation_captions: crate::evaluate::distinct_captions(&validation).1,
        bad: checked.bad.clone(),
        total: checked.total,
        batch_size: micro,
        grad_accumulation: k,
        steps_per_epoch,
    };

    let pointer = if job.resume {
        state::read_pointer(&run_dir)?
    } else {
        None
    };
    let mut st = match pointer {
        Some(p) => {
            check_same_run(&run_dir, &key)?;
            state::prune(&run_dir, &p)?;
            let st = state::load(&run_dir, p.last, &clip, &mut opt)?;
            tracing::info!(epoch = st.epoch, "resuming {}", run_dir.display());
            st
        }
        None => {
            if run_dir.exists() {
                std::fs::remove_dir_all(&run_dir).map_err(|e| TrainError::io(&run_dir, e))?;
            }
            std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::io(&run_dir, e))?;
            let run_json = serde_json::json!({
                "key": key, "base": job.base_name, "base_path": job.base, "config": cfg.to_json(),
            });
            checkpoint::write_atomic(
                &run_dir.join(state::RUN),
                &serde_json::to_vec_pretty(&run_json).expect("json"),
            )?;
            progress.phase = Phase::Baseline;
            observer(Event::Progress(&progress));
            let t = Instant::now();
            let metrics = evaluate(&clip, validation.clone(), &eval_setup, &mut |_, _| {})?;
            let record = EpochRecord {
                epoch: 0,
                metrics,
                train_loss: None,
                lr: None,
                samples_per_sec: None,
                data_wait_fraction: None,
                seconds: t.elapsed().as_secs_f64(),
                improved: true,
            };
            let st = State {
                epoch: 0,
                global_step: 0,
                best_epoch: 0,
                best_val_loss: metrics.val_loss,
                bad_epochs: 0,
                stopped_early: false,
                history: vec![record.clone()],
                loss_scale: LossScale::new(cfg.precision),
                data_order: "splitmix64(seed, epoch) Fisher-Yates shuffle; augmentation splitmix64(seed, epoch, index)".into(),
                seconds: 0.0,
            };
            state::save(&run_dir, &clip, &opt, &st)?;
            observer(Event::Epoch(&record));
            st
        }
    };
    let resumed_seconds = st.seconds;

    let logit_scale = clip.logit_scale().shallow_clone();
    while st.epoch < epochs && !st.stopped_early {
        let epoch = st.epoch + 1;
        let epoch_start = Instant::now();
        let mut order: Vec<usize> = (0..n_train).collect();
        Rng::derive(cfg.seed, epoch as u64, 1).shuffle(&mut order);
        let batches: Vec<Vec<usize>> = order
            .chunks_exact(micro)
            .take(steps_per_epoch as usize * k)
            .map(<[usize]>::to_vec)
            .collect();
        let augment = cfg.augment.then_some(Augment {
            seed: cfg.seed,
            epoch: epoch as u64,
        });
        let mut loader = Loader::spawn(
            train.clone(),
            batches,
            codec.clone(),
            augment,
            pool.clone(),
            2 * k + 1,
        );
        progress.phase = Phase::Training;
        progress.epoch = epoch;
        let mut loss_sum = 0.0;
        let mut samples = 0usize;
        let mut device_seconds = 0.0;
        let mut lr = 0.0;
        for _ in 0..steps_per_epoch {
            if cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled);
            }
            let mut micro_batches = Vec::with_capacity(k);
            for _ in 0..k {
                let b = loader
                    .next()
                    .ok_or_else(|| TrainError::Data("the loader stopped early".into()))??;
                micro_batches.push(b);
            }
            lr = learning_rate(&cfg, st.global_step, total_steps);
            let stepping = Instant::now();
            let loss = train_step(
                &clip,
                &mut opt,
                &micro_batches,
                &cfg,
                &mut st.loss_scale,
                lr,
            )?;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    loss,
                    epoch,
                    step: st.global_step,
                });
            }
            tch::no_grad(|| {
                let _ = logit_scale.shallow_clone().clamp_(0.0, LOGIT_SCALE_MAX);
            });
            // The loss came back to the host, so the step's device work is done.
            device_seconds += stepping.elapsed().as_secs_f64();
            st.global_step += 1;
            loss_sum += loss;
            samples += micro * k;
            let (read, decode) = loader.stages();
            progress.stages = Some(Stages::new(
                read,
                decode,
                Stage::new(device_seconds, samples),
                loader.threads(),
            ));
            let secs = epoch_start.elapsed().as_secs_f64();
            progress.step = st.global_step;
            progress.percent = 100.0 * st.global_step as f64 / total_steps.max(1) as f64;
            progress.loss = Some(loss);
            progress.lr = Some(lr);
            progress.samples_per_sec = Some(samples as f64 / secs.max(1e-9));
            observer(Event::Progress(&progress));
        }
        let train_secs = epoch_start.elapsed().as_secs_f64();
        let waited = loader.waited().as_secs_f64();
        drop(loader);
        progress.phase = Phase::Evaluating;
        observer(Event::Progress(&progress));
        progress.stages = None;
        let metrics = evaluate(&clip, validation.clone(), &eval_setup, &mut |_, _| {})?;
        let improved = st.observe(epoch, metrics.val_loss, &cfg);
        let record = EpochRecord {
            epoch,
            metrics,
            train_loss: (steps_per_epoch > 0).then(|| loss_sum / steps_per_epoch as f64),
            lr: Some(lr),
            samples_per_sec: Some(samples as f64 / train_secs.max(1e-9)),
            data_wait_fraction: Some(waited / train_secs.max(1e-9)),
            seconds: epoch_start.elapsed().as_secs_f64(),
            improved,
        };
        st.history.push(record.clone());
        st.seconds = resumed_seconds + started.elapsed().as_secs_f64();
        state::save(&run_dir, &clip, &opt, &st)?;
        observer(Event::Epoch(&record));
    }

    progress.phase = Phase::Finishing;
    observer(Event::Progress(&progress));
    // The model is the best epoch's weights, never a later, worse epoch's.
    state::load_weights(&clip, &state::epoch_dir(&run_dir, st.best_epoch))?;
    let best = st.history[st.best_epoch].metrics;
    let final_metrics = if cfg.wise_ft_alpha < 1.0 {
        let base = checkpoint::load(&job.base, job.device, &LoadOptions::default())?;
        wise_ft(&mut clip, &base, cfg.wise_ft_alpha);
        evaluate(&clip, validation.clone(), &eval_setup, &mut |_, _| {})?
    } else {
        best
    };
    let model_dir = run_dir.join("final");
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir).map_err(|e| TrainError::io(&model_dir, e))?;
    }
    checkpoint::save(&clip, &model_dir)?;
    // The same weights as Dataloop's CLIP adapter keeps them, so either side can load a
    // model the other trained; cliptune's own files win when both are present.
    checkpoint::save_model_state_dict(&clip, &model_dir.join(&cfg.weights_filename))?;
    let report = RunReport {
        base_model: job.base_name.clone(),
        device: cliptune_clip::device_name(job.device),
        config: cfg.clone(),
        warnings,
        data,
        history: st.history.clone(),
        best_epoch: st.best_epoch,
        epochs_run: st.epoch,
        stopped_early: st.stopped_early,
        final_metrics,
        seconds: resumed_seconds + started.elapsed().as_secs_f64(),
    };
    report::write(&model_dir, &report)?;
    checkpoint::write_atomic(
        &model_dir.join(CONFIG_FILE),
        &serde_json::to_vec_pretty(&cfg.to_json()).expect("json"),
    )?;
    Ok(Outcome {
        model_dir,
        run_dir,
        report,
    })
}

fn check_same_run(run_dir: &Path, key: &str) -> Result<()> {
    let path = run_dir.join(state::RUN);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Resume(format!("{}: {e}", path.display())))?;
    if v["key"].as_str() != Some(key) {
        return Err(TrainError::Resume(format!(
            "{} belongs to another run; start over without --resume",
            run_dir.display()
        )));
    }
    Ok(())
}

/// One optimizer step over `batches` (the micro-batches of one contrastive batch). Returns
/// the loss over the whole contrastive batch.
pub fn train_step(
    clip: &Clip,
    opt: &mut AdamW,
    batches: &[Batch],
    cfg: &TrainConfig,
    loss_scale: &mut Option<LossScale>,
    lr: f64,
) -> Result<f64> {
    let scale = loss_scale.map_or(1.0, |s| s.scale);
    opt.zero_grad();
    let loss_value = backward(clip, batches, cfg.precision, scale)?;
    if let Some(ls) = loss_scale.as_mut() {
        opt.scale_grads(1.0 / scale);
        if !ls.update(opt.grads_finite()) {
            tracing::warn!(
                "fp16 gradients overflowed; step skipped, loss scale now {}",
                ls.scale
            );
            return Ok(loss_value);
        }
    }
    if let Some(max) = cfg.max_grad_norm {
        opt.clip_grad_norm(max);
    }
    opt.step(lr);
    Ok(loss_value)
}

/// Accumulates into the parameters' gradients `scale` times the gradient of the contrastive
/// loss over all `batches` together; returns that loss (unscaled).
pub fn backward(clip: &Clip, batches: &[Batch], prec: Precision, scale: f64) -> Result<f64> {
    let device = clip.device();
    if batches.len() == 1 {
        let b = &batches[0];
        let loss = autocast(prec, device, || -> Result<Tensor> {
            let img = clip
                .encode_image(&b.pixels.to_device(device))?
                .to_kind(Kind::Float);
            let txt = clip
                .encode_text(&b.tokens.to_device(device))?
                .to_kind(Kind::Float);
            Ok(loss::clip_loss(&clip.logits(&img, &txt)))
        })?;
        (&loss * scale).backward();
        return Ok(loss.double_value(&[]));
    }
    // Feature caching (GradCache): features of every micro-batch without a graph, the loss
    // over all of them once, then each micro-batch re-run with its slice of the feature
    // gradient. The result equals the full-batch gradient, logit_scale's included.
    let mut imgs = Vec::with_capacity(batches.len());
    let mut txts = Vec::with_capacity(batches.len());
    tch::no_grad(|| -> Result<()> {
        autocast(prec, device, || -> Result<()> {
            for b in batches {
                imgs.push(
                    clip.encode_image(&b.pixels.to_device(device))?
                        .to_kind(Kind::Float),
                );
                txts.push(
                    clip.encode_text(&b.tokens.to_device(device))?
                        .to_kind(Kind::Float),
                );
            }
            Ok(())
        })
    })?;
    let img_all = Tensor::cat(&imgs, 0).detach().set_requires_grad(true);
    let txt_all = Tensor::cat(&txts, 0).detach().set_requires_grad(true);
    let loss = loss::clip_loss(&clip.logits(&img_all, &txt_all));
    (&loss * scale).backward();
    let (gi, gt) = (img_all.grad(), txt_all.grad());
    let mut offset = 0;
    for b in batches {
        let n = b.indices.len() as i64;
        let surrogate = autocast(prec, device, || -> Result<Option<Tensor>> {
            let img = clip
                .encode_image(&b.pixels.to_device(device))?
                .to_kind(Kind::Float);
            let txt = clip
                .encode_text(&b.tokens.to_device(device))?
                .to_kind(Kind::Float);
            let mut terms = Vec::new();
            if img.requires_grad() {
                terms.push((img * gi.narrow(0, offset, n)).sum(Kind::Float));
            }
            if txt.requires_grad() {
                terms.push((txt * gt.narrow(0, offset, n)).sum(Kind::Float));
            }
            Ok(terms.into_iter().reduce(|a, b| a + b))
        })?;
        if let Some(s) = surrogate {
            s.backward();
        }
        offset += n;
    }
    Ok(loss.double_value(&[]))
}

/// WiSE-FT: `w = (1 - alpha) * base + alpha * w` for every weight.
pub fn wise_ft(clip: &mut Clip, base: &Clip, alpha: f64) {
    let base_vars = base.var_store().variables();
    tch::no_grad(|| {
        for (name, mut var) in clip.var_store().variables() {
            let b = &base_vars[&name];
            let blended = &var * alpha + b.to_device(var.device()) * (1.0 - alpha);
            var.copy_(&blended);
        }
    });
}

/// Evaluates a model on pairs (all of them, or one subset), checking them first like a run
/// does. Returns the metrics and the unusable pairs that were skipped.
pub fn evaluate_pairs(
    clip: &Clip,
    source: &Source,
    subset: Option<&str>,
    eval_batch_size: usize,
    precision_: Precision,
    max_bad_fraction: f64,
    decode_threads: usize,
) -> Result<(Metrics, Vec<BadPair>, usize)> {
    precision::check(precision_, clip.device())?;
    let c = clip.config();
    let codec = Arc::new(Codec::new(
        c.vision.image_size as u32,
        c.text.context_length as usize,
    ));
    let pool = thread_pool(decode_threads)?;
    let pairs: Vec<Pair> = source
        .pairs
        .iter()
        .filter(|p| subset.is_none_or(|s| p.subset.as_deref() == Some(s)))
        .cloned()
        .collect();
    if pairs.is_empty() {
        return Err(TrainError::Data(match subset {
            Some(s) => format!("no pairs in subset {s:?}"),
            None => "no pairs".into(),
        }));
    }
    let total = pairs.len() + source.bad.len();
    let mut bad = source.bad.clone();
    let found = find_bad(&pairs, &codec, &pool);
    let ids: std::collections::HashSet<&str> = found.iter().map(|b| b.id.as_str()).collect();
    let usable: Vec<Pair> = pairs
        .into_iter()
        .filter(|p| !ids.contains(p.id.as_str()))
        .collect();
    bad.extend(found);
    if bad.len() as f64 > max_bad_fraction * total as f64 {
        return Err(TrainError::TooManyBad {
            bad: bad.len(),
            total,
            max_fraction: max_bad_fraction,
            list: bad.iter().map(ToString::to_string).collect(),
        });
    }
    let n = usable.len();
    let setup = EvalSetup {
        codec,
        pool,
        batch_size: eval_batch_size,
        precision: precision_,
        prefetch: 2,
    };
    let metrics = evaluate(clip, Arc::new(usable), &setup, &mut |_, _| {})?;
    Ok((metrics, bad, n))
}
