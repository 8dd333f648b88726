//! `cliptune search`: the top-k items of a dataset for a text or an image, by cosine with
//! the vectors a model's embedding run stored.

use crate::datasets::{block_on, open_store};
use crate::{models, output, Ctx};
use anyhow::{Context, Result};
use clap::Args;
use cliptune_clip::parse_device;
use cliptune_store::prelude::*;
use cliptune_worker::search::{self, Hit};
use cliptune_worker::WorkerConfig;
use cliptune_worker::{LocalEncoder, Prepared};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

/// Search a dataset with a text or an image: top-k items by cosine similarity, with scores.
///
/// The dataset must have been embedded with the model first (the pipeline's last step,
/// `cliptune embed-dataset`, or `POST /embed {"dataset_id"}`).
///
/// Examples:
///   cliptune search --dataset photos --model clip-ft --text "a dog on a beach"
///   cliptune search --dataset photos --model clip-ft --image query.jpg -k 5 --json
///   cliptune search --dataset photos --model clip-ft --text cat --filter '{"dir": "/pets"}'
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct SearchArgs {
    /// Dataset id or name.
    #[arg(long)]
    dataset: String,
    /// Model id or name (its vectors are searched and it embeds the query).
    #[arg(long)]
    model: String,
    /// A text query.
    #[arg(long, conflicts_with = "image", required_unless_present = "image")]
    text: Option<String>,
    /// An image file as the query.
    #[arg(long)]
    image: Option<PathBuf>,
    /// How many results (1..=1000).
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// DQL filter over the dataset's items, as JSON (e.g. '{"dir": "/cats"}').
    #[arg(long)]
    filter: Option<String>,
    /// Device that embeds the query: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision the query is encoded at: that of the searched vectors, so give the one
    /// `embed-dataset --precision` used (auto: the same rule, bf16 on CUDA and on CPUs with
    /// native bf16, else fp32).
    #[arg(long, default_value = "auto")]
    precision: String,
}

#[derive(Serialize)]
struct Named {
    id: String,
    name: String,
}

#[derive(Serialize)]
struct Timing {
    load_ms: f64,
    embed_ms: f64,
    search_ms: f64,
}

#[derive(Serialize)]
struct SearchOutput {
    model: Named,
    dataset: Named,
    query: Value,
    k: usize,
    results: Vec<Hit>,
    timing: Timing,
}

pub fn run(ctx: &Ctx, args: SearchArgs) -> Result<()> {
    let filter: Option<Value> = match &args.filter {
        None => None,
        Some(f) => {
            Some(serde_json::from_str(f).with_context(|| format!("--filter is not JSON: {f}"))?)
        }
    };
    search::check_query(args.k, filter.as_ref(), Some(&args.dataset))?;
    let image = match &args.image {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let device = parse_device(&args.device)?;
    // One rule for the worker's --embed-precision and this flag: a query and the vectors
    // it is compared with go through the same arithmetic.
    let mut config = WorkerConfig::local(&args.device);
    config.embed_precision = args.precision.clone();
    let precision = config
        .embed_precision(device)
        .map_err(|e| anyhow::anyhow!(e.replace("--embed-precision", "--precision")))?;
    let store = open_store(ctx)?;
    let (model, dataset, set) = block_on(async {
        let model = store.resolve_model(&args.model).await?;
        let dataset = store.resolve_dataset(&args.dataset).await?;
        let set = search::feature_set(&store, &model).await?;
        anyhow::Ok((model, dataset, set))
    })?;

    let t_load = Instant::now();
    let dir = models::resolve(ctx, &model.id)?;
    let prepared = Prepared::open(model.id.clone(), model.name.clone(), dir, false)
        .context("reading the model")?;
    let encoder = LocalEncoder::load(prepared, device, precision)?;
    let load_ms = search::ms_since(t_load);

    let t_embed = Instant::now();
    let (vector, query) = match (&args.text, &image, &args.image) {
        (Some(t), _, _) => (encoder.text(t)?, serde_json::json!({"text": t})),
        (None, Some(bytes), Some(path)) => (
            encoder.image(bytes, &path.display().to_string())?,
            serde_json::json!({"image": path}),
        ),
        _ => anyhow::bail!("give --text or --image"),
    };
    let embed_ms = search::ms_since(t_embed);

    let t_search = Instant::now();
    let results = block_on(search::nearest(
        &store,
        &set,
        vector,
        Some(&dataset.id),
        args.k,
        filter,
    ))?;
    let search_ms = search::ms_since(t_search);

    let out = SearchOutput {
        model: Named {
            id: model.id,
            name: model.name,
        },
        dataset: Named {
            id: dataset.id,
            name: dataset.name,
        },
        query,
        k: args.k,
        results,
        timing: Timing {
            load_ms,
            embed_ms,
            search_ms,
        },
    };
    output::print(ctx, &out, human);
    Ok(())
}

fn human(o: &SearchOutput) -> String {
    if o.results.is_empty() {
        return format!(
            "no results in {} for model {} (embedded items matching the filter: none)",
            o.dataset.name, o.model.name
        );
    }
    let mut s = format!("{:>4}  {:>7}  {:<28}  caption\n", "rank", "score", "item");
    for h in &o.results {
        let name = h.filename.as_deref().unwrap_or(&h.item_id);
        let caption = h.caption.as_deref().unwrap_or("");
        s.push_str(&format!(
            "{:>4}  {:>7.4}  {:<28}  {}\n",
            h.rank, h.score, name, caption
        ));
    }
    s.push_str(&format!(
        "model {}, dataset {}: query embedded in {:.1} ms, searched in {:.1} ms",
        o.model.name, o.dataset.name, o.timing.embed_ms, o.timing.search_ms
    ));
    s
}
