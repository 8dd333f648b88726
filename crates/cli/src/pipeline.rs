//! `cliptune pipeline ...` (install and run the template on the embedded store) and the
//! hidden `cliptune demo ...` helpers behind `make run`.

use crate::serve::runtime;
use crate::{output, Ctx};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use cliptune_store::prelude::*;
use cliptune_store::{Execution, ExecutionQuery, ExecutionStatus, LocalStore};
use cliptune_worker::{Function, Worker, WorkerConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit status when the run ended but not with success (failed, aborted).
pub const EXIT_RUN_FAILED: i32 = 3;

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Install a pipeline template of an app manifest into the store.
    ///
    /// Without MANIFEST the built-in dataloop.json is used. Installing again is a no-op
    /// that prints the existing pipeline.
    ///
    /// Example: cliptune pipeline install dataloop.json --json
    #[command(verbatim_doc_comment)]
    Install {
        /// App manifest (dataloop.json); default: the one built into this binary.
        manifest: Option<PathBuf>,
        /// Template to install (default: the manifest's first).
        #[arg(long)]
        template: Option<String>,
        /// Install under this pipeline name (default: the template's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Run a pipeline to its end in this process: one execution per node
    /// (create model -> train -> update variable -> embed).
    ///
    /// `--var` values are written into the pipeline's variables first (Model and Dataset
    /// variables accept names; JSON values are parsed). On the first run an empty
    /// "Newest CLIP model" takes the base model's id.
    /// Exit status: 0 success, 1 error before the run, 3 the run ended failed or aborted.
    ///
    /// Example:
    ///   cliptune pipeline execute "CLIP Fine-tuning" \
    ///     --var "Dataset with captions=shapes" --var "Base CLIP model=tiny-base" \
    ///     --var 'Model config={"num_epochs": 3}' --json
    #[command(verbatim_doc_comment)]
    Execute {
        /// Pipeline id or name.
        pipeline: String,
        /// NAME=VALUE, repeatable.
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// Device for training and embedding: cpu, cuda, cuda:N or auto.
        #[arg(long, env = "CLIPTUNE_DEVICE", default_value = "auto")]
        device: String,
        /// Items per embedding batch.
        #[arg(long, default_value_t = 32)]
        embed_batch_size: usize,
    },
    /// List installed pipelines.
    ///
    /// Example: cliptune pipeline list --json
    List,
    /// Show a pipeline: nodes, connections and variables.
    ///
    /// Example: cliptune pipeline show "CLIP Fine-tuning" --json
    Show {
        /// Pipeline id or name.
        pipeline: String,
    },
}

#[derive(Subcommand)]
pub enum DemoCommand {
    /// Draw a captioned image set (coloured shapes) and a tiny architecture into DIR.
    ///
    /// Example: cliptune demo data --out /tmp/shapes --count 300
    Data {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 300)]
        count: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Top matches of a text query among a dataset's vectors of a model.
    ///
    /// Example: cliptune demo query --dataset shapes --text "a red circle" -k 5
    Query {
        /// Model id or name (default: the pipeline's "Newest CLIP model"); its feature set
        /// must exist: run the embed node first.
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        text: String,
        #[arg(short, default_value_t = 5)]
        k: usize,
        #[arg(long, env = "CLIPTUNE_DEVICE", default_value = "auto")]
        device: String,
    },
}

pub fn run(ctx: &Ctx, cmd: PipelineCommand) -> Result<()> {
    match cmd {
        PipelineCommand::Install {
            manifest,
            template,
            name,
        } => {
            let manifest_json = cliptune_worker::read_manifest(manifest.as_deref())?;
            let store = LocalStore::open(&ctx.home)?;
            let installed = runtime()?.block_on(cliptune_worker::install_pipeline(
                &store,
                &manifest_json,
                template.as_deref(),
                name.as_deref(),
            ))?;
            output::print(ctx, &installed, |i| {
                format!(
                    "{} pipeline {:?} ({})",
                    if i.created {
                        "installed"
                    } else {
                        "already installed:"
                    },
                    i.pipeline.name,
                    i.pipeline.id
                )
            });
            Ok(())
        }
        PipelineCommand::Execute {
            pipeline,
            vars,
            device,
            embed_batch_size,
        } => execute(ctx, &pipeline, &vars, &device, embed_batch_size),
        PipelineCommand::List => {
            let store = LocalStore::open(&ctx.home)?;
            let list = runtime()?.block_on(store.list_pipelines())?;
            output::print(ctx, &list, |l| {
                if l.is_empty() {
                    return "no pipelines (install one: cliptune pipeline install)".into();
                }
                l.iter()
                    .map(|p| format!("{}  {}  ({} nodes)", p.id, p.name, p.nodes.len()))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        PipelineCommand::Show { pipeline } => {
            let store = LocalStore::open(&ctx.home)?;
            let p = runtime()?.block_on(store.resolve_pipeline(&pipeline))?;
            output::print(ctx, &p, |p| {
                let mut s = format!("{} ({})\nnodes:", p.name, p.id);
                for n in &p.nodes {
                    s.push_str(&format!(
                        "\n  {} [{} {}]",
                        n["name"].as_str().unwrap_or("?"),
                        n["type"].as_str().unwrap_or("?"),
                        n.pointer("/namespace/functionName")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                    ));
                }
                s.push_str("\nvariables:");
                for v in &p.variables {
                    s.push_str(&format!("\n  {} ({}) = {}", v.name, v.var_type, v.value));
                }
                s
            });
            Ok(())
        }
    }
}

/// `NAME=VALUE` with VALUE parsed as JSON when it is JSON, else a string.
fn parse_var(s: &str) -> Result<(String, Value)> {
    let Some((name, value)) = s.split_once('=') else {
        bail!("--var {s:?}: expected NAME=VALUE");
    };
    let name = name.trim();
    if name.is_empty() {
        bail!("--var {s:?}: empty variable name");
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((name.to_string(), value))
}

fn execute(ctx: &Ctx, name: &str, vars: &[String], device: &str, batch: usize) -> Result<()> {
    let values = vars
        .iter()
        .map(|v| parse_var(v))
        .collect::<Result<Vec<_>>>()?;
    let store: Arc<dyn Platform> = Arc::new(LocalStore::open(&ctx.home)?);
    let mut config = WorkerConfig::local(device);
    config.embed_batch_size = batch;
    let started = Instant::now();
    let (run, nodes) = runtime()?.block_on(async {
        let worker = Worker::start(store.clone(), config, ctx.home.clone()).await?;
        let run = worker.execute_pipeline(name, &values).await?;
        let bar = output::percent_bar(ctx);
        let waiting = worker.wait(&run.id);
        tokio::pin!(waiting);
        let done = loop {
            tokio::select! {
                done = &mut waiting => break done?,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    if let Some(bar) = &bar {
                        if let Ok(nodes) = node_executions(&*store, &run.id).await {
                            if let Some(current) = nodes.last() {
                                bar.set_position(u64::from(current.latest_status.percent_complete));
                                bar.set_message(format!(
                                    "{} (execution {}): {}",
                                    current.function_name,
                                    nodes.len(),
                                    current.latest_status.message.clone().unwrap_or_default()
                                ));
                            }
                        }
                    }
                }
            }
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        worker.shutdown().await;
        let nodes = node_executions(&*store, &run.id).await?;
        anyhow::Ok((done, nodes))
    })?;
    let summary = summarize(&run, &nodes, started.elapsed());
    output::print(ctx, &summary, human_summary);
    if run.status != ExecutionStatus::Success {
        std::process::exit(EXIT_RUN_FAILED);
    }
    Ok(())
}

/// The node executions of a run, oldest first.
async fn node_executions(store: &dyn Platform, run_id: &str) -> Result<Vec<Execution>> {
    let mut list = store
        .list_executions(&ExecutionQuery {
            pipeline_execution_id: Some(run_id.to_string()),
            ..ExecutionQuery::default()
        })
        .await?;
    list.reverse();
    Ok(list)
}

/// What a person (and the demo script) wants to know about a run.
fn summarize(run: &Execution, nodes: &[Execution], took: Duration) -> Value {
    let by_function = |f: &str| nodes.iter().find(|n| n.function_name == f);
    let out = |f: &str| {
        by_function(f)
            .map(|n| n.output.clone())
            .unwrap_or(Value::Null)
    };
    let train = out("train");
    let update = out("update-variable");
    // The embedding branch runs as several executions; the run's output sums them up.
    let embed = run.output["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["function"] == Function::EmbedItems.as_str())
        .map_or(Value::Null, |n| n["output"].clone());
    json!({
        "execution_id": run.id,
        "pipeline": run.output.get("pipeline").cloned().unwrap_or(Value::Null),
        "status": run.status.as_str(),
        "error": run.latest_status.error,
        "seconds": took.as_secs_f64(),
        "nodes": nodes.iter().map(|n| json!({
            "function": n.function_name,
            "node_id": n.pipeline.as_ref().and_then(|p| p.node_id.clone()),
            "execution_id": n.id,
            "status": n.status.as_str(),
            "message": n.latest_status.message,
            "error": n.latest_status.error,
        })).collect::<Vec<_>>(),
        "new_model": out("create-model").pointer("/new_model/model_id").cloned().unwrap_or(Value::Null),
        "newest_model": {
            "variable": update.get("variable").cloned().unwrap_or(json!("Newest CLIP model")),
            "old": update.get("old_value").cloned().unwrap_or(Value::Null),
            "new": update.get("new_value").cloned().unwrap_or(Value::Null),
        },
        "metrics": train.get("metrics").cloned().unwrap_or(Value::Null),
        "training": {
            "best_epoch": train.get("best_epoch").cloned().unwrap_or(Value::Null),
            "epochs_run": train.get("epochs_run").cloned().unwrap_or(Value::Null),
            "seconds": train.get("seconds").cloned().unwrap_or(Value::Null),
            "samples_per_second": train.get("samples_per_second").cloned().unwrap_or(Value::Null),
            "pairs": train.get("pairs").cloned().unwrap_or(Value::Null),
        },
        "embedding": embed,
    })
}

fn human_summary(s: &Value) -> String {
    let mut out = format!(
        "pipeline run {} ended {} in {:.1} s\n",
        s["execution_id"].as_str().unwrap_or("?"),
        s["status"].as_str().unwrap_or("?"),
        s["seconds"].as_f64().unwrap_or(0.0)
    );
    for n in s["nodes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<16} {:<10} {}\n",
            n["function"].as_str().unwrap_or("?"),
            n["status"].as_str().unwrap_or("?"),
            n["error"]
                .as_str()
                .or(n["message"].as_str())
                .unwrap_or_default()
        ));
    }
    if let Some(e) = s["error"].as_str() {
        out.push_str(&format!("error: {e}\n"));
    }
    out.push_str(&format!("new model: {}\n", show(&s["new_model"])));
    out.push_str(&format!(
        "{:?}: {} -> {}\n",
        s["newest_model"]["variable"]
            .as_str()
            .unwrap_or("Newest CLIP model"),
        show(&s["newest_model"]["old"]),
        show(&s["newest_model"]["new"])
    ));
    let (base, fine) = (&s["metrics"]["baseline"], &s["metrics"]["final"]);
    if base.is_object() && fine.is_object() {
        out.push_str("validation metrics    baseline  fine-tuned\n");
        for key in [
            "val_loss",
            "i2t_r1",
            "i2t_r5",
            "t2i_r1",
            "t2i_r5",
            "caption_accuracy",
        ] {
            out.push_str(&format!(
                "  {key:<18} {:>9.4} {:>11.4}\n",
                base[key].as_f64().unwrap_or(f64::NAN),
                fine[key].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    if let Some(n) = s["embedding"]["embedded"].as_u64() {
        out.push_str(&format!(
            "embedded {n} items ({} already embedded, {} failed) into feature set {}\n",
            s["embedding"]["already_embedded"].as_u64().unwrap_or(0),
            s["embedding"]["failed"].as_array().map_or(0, Vec::len),
            s["embedding"]["feature_set_id"].as_str().unwrap_or("?")
        ));
    }
    out.trim_end().to_string()
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn demo(ctx: &Ctx, cmd: DemoCommand) -> Result<()> {
    match cmd {
        DemoCommand::Data {
            out,
            count,
            size,
            seed,
        } => {
            let made = cliptune_worker::demo::write_dataset(&out, count, size, seed)?;
            let arch = out.join("arch.json");
            std::fs::write(
                &arch,
                serde_json::to_vec_pretty(&cliptune_worker::demo::tiny_architecture())?,
            )
            .with_context(|| format!("writing {}", arch.display()))?;
            output::print(ctx, &made, |m| {
                format!(
                    "{} images ({} train, {} validation, {} distinct captions) in {}; architecture {}",
                    m.images,
                    m.train,
                    m.validation,
                    m.captions,
                    m.dir,
                    arch.display()
                )
            });
            Ok(())
        }
        DemoCommand::Query {
            model,
            dataset,
            text,
            k,
            device,
        } => {
            let store: Arc<dyn Platform> = Arc::new(LocalStore::open(&ctx.home)?);
            let hits = runtime()?.block_on(async {
                let worker = Worker::start_inference(
                    store.clone(),
                    WorkerConfig::local(&device),
                    ctx.home.clone(),
                )
                .await?;
                let (model, found) = cliptune_worker::search::search_text(
                    &worker,
                    model.as_deref(),
                    &text,
                    Some(&dataset),
                    k,
                )
                .await?;
                let hits: Vec<Value> = found
                    .into_iter()
                    .map(|h| {
                        json!({
                            "item_id": h.item_id,
                            "filename": h.filename,
                            "caption": h.caption,
                            "score": h.score,
                        })
                    })
                    .collect();
                worker.shutdown().await;
                anyhow::Ok(json!({"model_id": model.id, "text": text, "matches": hits}))
            })?;
            output::print(ctx, &hits, |h| {
                let mut s = format!("top matches for {:?}:", h["text"].as_str().unwrap_or(""));
                for (i, m) in h["matches"].as_array().into_iter().flatten().enumerate() {
                    s.push_str(&format!(
                        "\n  {}. {:.3}  {}  {}",
                        i + 1,
                        m["score"].as_f64().unwrap_or(0.0),
                        m["caption"].as_str().unwrap_or("(no caption)"),
                        m["filename"].as_str().unwrap_or("")
                    ));
                }
                s
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_parse_json_or_string() {
        assert_eq!(parse_var("a=b").unwrap(), ("a".into(), json!("b")));
        assert_eq!(
            parse_var("Model config={\"num_epochs\": 2}").unwrap().1,
            json!({"num_epochs": 2})
        );
        assert_eq!(parse_var("x=a=b").unwrap().1, json!("a=b"));
        assert!(parse_var("novalue").is_err());
        assert!(parse_var("=3").is_err());
    }
}
