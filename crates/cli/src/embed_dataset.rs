//! `cliptune embed-dataset`: the embed node over a whole dataset, in this process.
//!
//! It runs as an execution of the `embed` function, exactly as a pipeline or `POST /embed`
//! would, so it is resumable the same way: a rerun (also after `kill -9`) embeds only the
//! items without a vector. A rerun after a kill waits for the execution the killed process
//! left behind (the worker re-queues it on start) instead of adding a second one.

use crate::serve::runtime;
use crate::{output, Ctx};
use anyhow::{Context, Result};
use clap::Args;
use cliptune_store::{dql, ExecutionStatus, LocalStore, Platform};
use cliptune_worker::{Function, Worker, WorkerConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit status when the execution ran and did not succeed.
const EXIT_FAILED: i32 = 2;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cliptune embed-dataset --dataset photos --model clip-ft\n  \
    cliptune embed-dataset --dataset photos --filter '{\"dir\": \"/cats\"}' --json\n\n\
Without --model the dataset is embedded with the pipeline variable \"Newest CLIP model\".\n\
Items that already have a vector for the model are skipped, so rerunning (also after a kill) \
embeds only what is missing. Unreadable items are listed, not fatal.")]
pub struct EmbedDatasetArgs {
    /// Dataset id or name.
    #[arg(long)]
    dataset: String,
    /// Model id or name (default: the "Newest CLIP model" pipeline variable).
    #[arg(long)]
    model: Option<String>,
    /// DQL filter JSON selecting the items (a bare filter or a query body with "filter").
    #[arg(long)]
    filter: Option<String>,
    /// Items per device batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// auto (bf16 on CUDA and on CPUs with native bf16, i.e. AVX512-BF16; else fp32),
    /// fp32 (exact), bf16 or fp16 (CUDA only).
    #[arg(long, default_value = "auto")]
    precision: String,
    /// libtorch intra-op threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    torch_threads: usize,
    /// Decode JPEGs at least twice the model's input size at reduced scale (faster; pixels
    /// no longer PIL's exactly, vectors within cosine 0.9999 on average; docs/preprocessing.md).
    #[arg(long)]
    fast_decode: bool,
    /// Threads decoding images, at once with reads, the device and writes (0: every core
    /// this process may use less one for the device thread, at least 1).
    #[arg(long, default_value_t = 0)]
    decode_threads: usize,
}

pub fn run(ctx: &Ctx, args: EmbedDatasetArgs) -> Result<()> {
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let mut input = json!({"dataset": {"dataset_id": args.dataset}});
    if let Some(m) = &args.model {
        input["model"] = json!({"model_id": m});
    }
    if let Some(f) = &args.filter {
        let v: Value =
            serde_json::from_str(f).with_context(|| format!("--filter is not JSON: {f}"))?;
        input["filter"] = dql::filter_from_body(&v);
    }
    let store: Arc<dyn Platform> = Arc::new(LocalStore::open(&ctx.home)?);
    let mut config = WorkerConfig::local(&args.device);
    config.embed_batch_size = args.batch_size;
    config.embed_precision = args.precision.clone();
    config.torch_threads = args.torch_threads;
    config.fast_decode = args.fast_decode;
    config.decode_threads = args.decode_threads;
    let started = Instant::now();
    let execution = runtime()?.block_on(async {
        // Unknown names fail here, before an execution exists.
        store.resolve_dataset(&args.dataset).await.map_err(|e| {
            anyhow::anyhow!("{e} (`cliptune datasets list` shows this store's datasets)")
        })?;
        if let Some(m) = &args.model {
            store.resolve_model(m).await.map_err(|e| {
                anyhow::anyhow!("{e} (`cliptune models list` shows this store's models)")
            })?;
        }
        let (worker, recovery) =
            Worker::start_recovering(store.clone(), config, ctx.home.clone()).await?;
        // A killed run of the same command left its execution behind: the worker re-queued
        // it, so wait for that one.
        let mut resumed = None;
        for id in &recovery.requeued {
            let e = worker.get(id).await?;
            if e.function_name == Function::Embed.as_str() && e.input == input {
                resumed = Some(e.id);
            }
        }
        let id = match resumed {
            Some(id) => {
                if !ctx.json {
                    eprintln!("resuming execution {id} left by an interrupted run");
                }
                id
            }
            None => {
                worker
                    .submit(Function::Embed, input.clone(), None)
                    .await?
                    .id
            }
        };
        let bar = output::percent_bar(ctx);
        let waiting = worker.wait(&id);
        tokio::pin!(waiting);
        let mut last_line = Instant::now();
        let done = loop {
            tokio::select! {
                done = &mut waiting => break done?,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    let Ok(e) = worker.get(&id).await else { continue };
                    let status = &e.latest_status;
                    let msg = status.message.clone().unwrap_or_default();
                    if let Some(bar) = &bar {
                        bar.set_position(u64::from(status.percent_complete));
                        bar.set_message(msg);
                    } else if !ctx.json && last_line.elapsed() >= Duration::from_secs(10) {
                        last_line = Instant::now();
                        eprintln!("{:>3}% {msg}", status.percent_complete);
                    }
                }
            }
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        worker.shutdown().await;
        anyhow::Ok(done)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let out = &execution.output;
    let embedded = out["embedded"].as_u64().unwrap_or(0);
    let summary = json!({
        "execution_id": execution.id,
        "status": execution.status.as_str(),
        "message": execution.latest_status.message,
        "error": execution.latest_status.error,
        "model_id": out["model"]["model_id"],
        "feature_set_id": out["feature_set_id"],
        "precision": out["precision"],
        "items": out["items"],
        "embedded": out["embedded"],
        "already_embedded": out["already_embedded"],
        "failed": out["failed"],
        "stages": out["stages"],
        "decode_threads": out["stages"]["decode_threads"],
        "seconds": (seconds * 100.0).round() / 100.0,
        "items_per_s": (embedded as f64 / seconds.max(1e-9) * 10.0).round() / 10.0,
    });
    output::print(ctx, &summary, human);
    if execution.status != ExecutionStatus::Success {
        std::process::exit(EXIT_FAILED);
    }
    Ok(())
}

fn human(s: &Value) -> String {
    if s["status"] != "success" {
        return format!(
            "embedding {} ended {}: {}",
            s["execution_id"].as_str().unwrap_or("?"),
            s["status"].as_str().unwrap_or("?"),
            s["error"].as_str().or(s["message"].as_str()).unwrap_or("")
        );
    }
    let failed = s["failed"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "{} embedded, {} already embedded, {} failed in {:.1} s ({} items/s, {}) into feature set {}",
        s["embedded"],
        s["already_embedded"],
        failed.len(),
        s["seconds"].as_f64().unwrap_or(0.0),
        s["items_per_s"],
        s["precision"].as_str().unwrap_or("?"),
        s["feature_set_id"].as_str().unwrap_or("?"),
    );
    if let Some(stages) = s["stages"].as_object() {
        let line: Vec<String> = ["read", "decode", "device", "write"]
            .iter()
            .map(|k| {
                format!(
                    "{k} {:.1} s ({}/s)",
                    stages[*k]["seconds"].as_f64().unwrap_or(0.0),
                    stages[*k]["items_per_s"]
                )
            })
            .collect();
        out.push_str(&format!(
            "\nstages: {} on {} decode threads; bottleneck: {}",
            line.join(", "),
            stages["decode_threads"],
            stages["bottleneck"].as_str().unwrap_or("?")
        ));
    }
    for f in failed.iter().take(10) {
        out.push_str(&format!(
            "\n  {}: {}",
            f["item_id"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("?")
        ));
    }
    if failed.len() > 10 {
        out.push_str(&format!(
            "\n  ... and {} more (--json lists all)",
            failed.len() - 10
        ));
    }
    out
}
