//! *Train*: fine-tunes a `created` model on its dataset's train/validation subsets.
//!
//! Status `training` -> pairs resolved through the platform (subset DQL filters from
//! `metadata.system.subsets`, captions by [`cliptune_store::Datasets::caption`], image
//! bytes fetched on the trainer's decode threads) -> the training engine on the device
//! thread, with progress per step and metric samples per epoch -> artifacts uploaded ->
//! status `trained`.
//! Any failure marks the model `failed`, so "Newest CLIP model" can never point at it.
//! A shutdown stops at a step boundary and leaves the model `training`: the run directory
//! is per model, so the re-queued execution resumes from the last completed epoch.

use super::input::{json_object, parse, ModelRef};
use super::local_weights;
use crate::ctx::{NodeCtx, StopReason};
use crate::error::{Result, WorkerError};
use cliptune_store::{
    set_path, Id, Item, MetricPoint, MetricSample, Model, ModelStatus, Platform, Subsets,
};
use cliptune_train::{
    BadPair, Event, ImageFetcher, ImageSource, Pair, Phase, Source, Stages, TrainConfig,
};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// *Train*'s inputs.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainInput {
    /// The `created` model to train.
    pub model: ModelRef,
    /// Keys merged (shallowly) over the model's configuration for this run only.
    #[serde(default, alias = "model_config", deserialize_with = "json_object")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Map<String, Value>>,
}

impl TrainInput {
    pub fn parse(input: &Value) -> Result<Self> {
        let input: Self = parse(input)?;
        if let Some(c) = &input.config {
            TrainConfig::from_map(c)?;
        }
        Ok(input)
    }
}

/// Reads item bytes through the platform from the trainer's (non-async) decode threads.
struct PlatformFetcher {
    platform: Arc<dyn Platform>,
    runtime: tokio::runtime::Handle,
}

impl ImageFetcher for PlatformFetcher {
    fn fetch(&self, key: &str) -> std::io::Result<Vec<u8>> {
        self.runtime
            .block_on(self.platform.item_bytes(key))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

pub async fn run(input: TrainInput, ctx: &NodeCtx) -> Result<Value> {
    let platform = ctx.env.platform().clone();
    let model = platform.resolve_model(&input.model).await?;
    match model.status {
        ModelStatus::Trained | ModelStatus::Deployed | ModelStatus::PreTrained => {
            return Err(WorkerError::Conflict(format!(
                "model {} ({}) is {} already; clone it (create-model) to train again",
                model.name,
                model.id,
                model.status.as_str()
            )))
        }
        _ => {}
    }
    let model_id = model.id.clone();
    let result = train(model, input, ctx).await;
    if let Err(e) = &result {
        let shutdown = e.is_termination() && ctx.stop_reason() == Some(StopReason::Shutdown);
        if !shutdown {
            if let Ok(mut m) = platform.get_model(&model_id).await {
                m.status = ModelStatus::Failed;
                set_path(
                    &mut m.metadata,
                    &["cliptune", "error"],
                    json!(e.to_string()),
                );
                if let Err(err) = platform.update_model(&m).await {
                    tracing::warn!(model = %model_id, error = %err, "could not mark the model failed");
                }
            }
        }
        ctx.env.metrics.set_training_rate(0.0);
    }
    result
}

async fn train(mut model: Model, input: TrainInput, ctx: &NodeCtx) -> Result<Value> {
    let platform = ctx.env.platform().clone();
    let layers_model = Value::Object(model.configuration.clone());
    let layers_input = input
        .config
        .clone()
        .map(Value::Object)
        .unwrap_or(Value::Null);
    let parsed = TrainConfig::from_layers(&[&layers_model, &layers_input])?;
    let dataset_id = model.dataset_id.clone().ok_or_else(|| {
        WorkerError::input(
            "model",
            format!(
                "model {} has no dataset to train on (create it with create-model)",
                model.id
            ),
        )
    })?;
    let subsets = model.subsets().unwrap_or_else(Subsets::default_filters);
    // The weights to start from: the model's own, else the base model's it was cloned from.
    let weights_model = if model.artifacts.is_empty() {
        let base = model.base_model_id.clone().ok_or_else(|| {
            WorkerError::input(
                "model",
                format!("model {} has neither weights nor a base model", model.id),
            )
        })?;
        platform.get_model(&base).await?
    } else {
        model.clone()
    };

    model.status = ModelStatus::Training;
    model = platform.update_model(&model).await?;
    ctx.progress(1, "resolving training pairs");
    let source = dataset_source(&platform, &dataset_id, &subsets, &|| ctx.check()).await?;
    ctx.progress(
        2,
        format!("{} pairs; fetching base weights", source.pairs.len()),
    );
    let base_dir = local_weights(ctx, &weights_model).await?;
    ctx.check()?;

    let job = cliptune_train::Job {
        base: base_dir,
        base_name: weights_model.id.clone(),
        source,
        config: parsed.config,
        warnings: parsed.warnings,
        runs_root: ctx.env.work_dir.join("train").join(&model.id),
        device: ctx.env.device.device(),
        resume: true,
        decode_threads: ctx.env.config.decode_threads(),
    };
    let (epochs_tx, mut epochs_rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = {
        let platform = platform.clone();
        let (model_id, dataset_id) = (model.id.clone(), dataset_id.clone());
        tokio::spawn(async move {
            while let Some(record) = epochs_rx.recv().await {
                let samples = epoch_samples(&model_id, &dataset_id, &record);
                if let Err(e) = platform.publish_metrics(&samples).await {
                    tracing::warn!(model = %model_id, error = %e, "metric samples not stored");
                }
            }
        })
    };
    let cancel = ctx.cancel_flag();
    let node = ctx.clone();
    let last_stages = Arc::new(std::sync::Mutex::new(None::<Stages>));
    let stages_seen = last_stages.clone();
    let outcome = ctx
        .env
        .device
        .run_long(move |dev| {
            // Stage seconds already added to /metrics for this epoch (progress carries the
            // epoch's totals so far).
            let mut counted = (0usize, [0.0f64; 3]);
            let mut observer = |event: Event<'_>| match event {
                Event::Progress(p) => {
                    if let Some(rate) = p.samples_per_sec {
                        node.env.metrics.set_training_rate(rate);
                    }
                    if let Some(stages) = &p.stages {
                        if counted.0 != p.epoch {
                            counted = (p.epoch, [0.0; 3]);
                        }
                        for (i, (name, stage)) in Stages::NAMES.iter().zip(stages.all()).enumerate()
                        {
                            let delta = stage.seconds - counted.1[i];
                            node.env.metrics.add_train_stage(name, delta.max(0.0));
                            counted.1[i] = stage.seconds;
                        }
                        *last_stages.lock().expect("stages") = Some(*stages);
                    }
                    node.progress(progress_percent(p.phase, p.percent), describe(p));
                    // Let embedding batches that wait for the device through between steps.
                    dev.serve_pending();
                }
                Event::Epoch(record) => {
                    let _ = epochs_tx.send(record.clone());
                }
                Event::Warning(w) => tracing::info!(execution = %node.execution_id, "{w}"),
            };
            cliptune_train::run(job, &mut observer, &cancel)
        })
        .await?;
    let _ = publisher.await;
    let outcome = outcome?;
    ctx.env.metrics.set_training_rate(0.0);
    let report = &outcome.report;
    ctx.env
        .metrics
        .add_training_samples((report.data.train * report.epochs_run) as u64);

    ctx.progress(97, "uploading the trained weights");
    let baseline = report.history.first().map(|r| r.metrics);
    let summary = json!({
        "baseline_metrics": baseline,
        "final_metrics": report.final_metrics,
        "best_epoch": report.best_epoch,
        "epochs_run": report.epochs_run,
        "stopped_early": report.stopped_early,
        "seconds": report.seconds,
        "train_pairs": report.data.train,
        "validation_pairs": report.data.validation,
        "skipped_pairs": report.data.bad.len(),
        "device": report.device,
    });
    let model = super::store_weights(
        &*platform,
        &model.id,
        &outcome.model_dir,
        ModelStatus::Trained,
        |m| set_path(&mut m.metadata, &["cliptune", "training"], summary),
    )
    .await?;
    ctx.progress(100, format!("trained: best epoch {}", report.best_epoch));
    let samples_per_second = report
        .history
        .iter()
        .filter_map(|r| r.samples_per_sec)
        .fold(None, |acc: Option<(f64, usize)>, r| {
            Some(acc.map_or((r, 1), |(s, n)| (s + r, n + 1)))
        })
        .map(|(s, n)| s / n as f64);
    Ok(json!({
        "model": {"model_id": model.id},
        "metrics": {"baseline": baseline, "final": report.final_metrics},
        "best_epoch": report.best_epoch,
        "epochs_run": report.epochs_run,
        "stopped_early": report.stopped_early,
        "seconds": report.seconds,
        "samples_per_second": samples_per_second,
        "pairs": {"train": report.data.train, "validation": report.data.validation, "skipped": report.data.bad},
        "warnings": report.warnings,
        // The last epoch's stages: where training's time went, and the bottleneck.
        "stages": *stages_seen.lock().expect("stages"),
    }))
}

/// The training pairs of a dataset: the items each subset's filter selects, tagged with
/// that subset, images read through the platform when the trainer decodes them. Items
/// without an image or a caption are listed in `bad`. Must run inside a tokio runtime,
/// which must outlive the training that reads the images.
pub async fn dataset_source(
    platform: &Arc<dyn Platform>,
    dataset_id: &str,
    subsets: &Subsets,
    check: &(dyn Fn() -> Result<()> + Sync),
) -> Result<Source> {
    let fetcher: Arc<dyn ImageFetcher> = Arc::new(PlatformFetcher {
        platform: platform.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let mut source = Source::default();
    for (subset, filter) in [
        ("train", &subsets.train),
        ("validation", &subsets.validation),
    ] {
        let items = platform.all_items(dataset_id, Some(filter.clone())).await?;
        for item in items {
            check()?;
            match pair_of(&**platform, &item, subset, &fetcher).await {
                Ok(pair) => source.pairs.push(pair),
                Err(reason) => source.bad.push(BadPair {
                    id: item.id.clone(),
                    reason,
                }),
            }
        }
    }
    Ok(source)
}

/// The pair an item contributes, or why it cannot.
async fn pair_of(
    platform: &dyn Platform,
    item: &Item,
    subset: &str,
    fetcher: &Arc<dyn ImageFetcher>,
) -> std::result::Result<Pair, String> {
    let resolved = platform.caption(item).await.map_err(|e| e.to_string())?;
    let image = resolved
        .image_item
        .ok_or_else(|| "no image (text items cannot be training pairs)".to_string())?;
    let caption = resolved
        .caption
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| "no caption".to_string())?;
    Ok(Pair {
        id: item.id.clone(),
        image: ImageSource::Fetch {
            key: image.id,
            fetcher: fetcher.clone(),
        },
        caption,
        subset: Some(subset.to_string()),
        label: None,
    })
}

/// Whole-run percent: data checks and the baseline take the first 5%, uploading the last 3%.
fn progress_percent(phase: Phase, train_percent: f64) -> u32 {
    match phase {
        Phase::Checking => 3,
        Phase::Baseline => 5,
        Phase::Training | Phase::Evaluating => (5.0 + 0.9 * train_percent).clamp(5.0, 95.0) as u32,
        Phase::Finishing => 96,
    }
}

fn describe(p: &cliptune_train::Progress) -> String {
    match p.phase {
        Phase::Checking => "checking the training pairs".into(),
        Phase::Baseline => "evaluating the base model".into(),
        Phase::Evaluating => format!("evaluating epoch {}/{}", p.epoch, p.epochs),
        Phase::Finishing => "saving the best epoch's weights".into(),
        Phase::Training => {
            let mut s = format!("epoch {}/{} step {}/{}", p.epoch, p.epochs, p.step, p.steps);
            if let Some(l) = p.loss {
                s.push_str(&format!(" loss {l:.4}"));
            }
            if let Some(r) = p.samples_per_sec {
                s.push_str(&format!(" ({r:.1} samples/s)"));
            }
            if let Some(stages) = &p.stages {
                s.push_str(&format!("; {}", stages.summary()));
            }
            s
        }
    }
}

/// Dataloop-style metric samples for one evaluated epoch (epoch 0 is the base model).
fn epoch_samples(
    model_id: &Id,
    dataset_id: &Id,
    record: &cliptune_train::state::EpochRecord,
) -> Vec<MetricSample> {
    let x = record.epoch as f64;
    let m = &record.metrics;
    let mut out = Vec::new();
    let mut push = |figure: &str, legend: &str, y: f64| {
        out.push(MetricSample {
            model_id: model_id.clone(),
            dataset_id: Some(dataset_id.clone()),
            figure: figure.into(),
            legend: legend.into(),
            data: MetricPoint { x, y },
            created_at: String::new(),
        })
    };
    if let Some(l) = record.train_loss {
        push("loss", "train", l);
    }
    push("loss", "val", m.val_loss);
    push("recall@1", "image-to-text", m.i2t_r1);
    push("recall@1", "text-to-image", m.t2i_r1);
    push("recall@5", "image-to-text", m.i2t_r5);
    push("recall@5", "text-to-image", m.t2i_r5);
    push("caption accuracy", "val", m.caption_accuracy);
    out
}
