//! `cliptune datasets ...`, and opening the embedded store for every store-backed command.

use crate::{output, Ctx};
use anyhow::{Context, Result};
use clap::Subcommand;
use cliptune_store::import::{import, ImportOptions, ImportReport};
use cliptune_store::prelude::*;
use cliptune_store::{default_subset_filter, Dataset, LocalStore};
use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DatasetsCommand {
    /// Import captioned images (a folder with captions.jsonl, sidecar .txt captions, or a Dataloop export).
    ///
    /// Re-importing the same folder changes nothing. Bad entries are listed with their line
    /// or file; the import fails without writing anything when more than --max-bad-percent are bad.
    ///
    /// Examples:
    ///   cliptune datasets import ./photos --name photos
    ///   cliptune datasets import ./prompts-export --name prompts --images ./images-export --json
    Import {
        /// Folder to import.
        path: PathBuf,
        /// Dataset name (created when missing; an existing dataset is updated).
        #[arg(long)]
        name: String,
        /// Fail (importing nothing) when more than this percentage of entries is bad.
        #[arg(long, default_value_t = 5.0)]
        max_bad_percent: f64,
        /// For a Dataloop prompt-item export: the export of the images dataset its prompts point at.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Dataset name for --images (default: NAME-images).
        #[arg(long, requires = "images")]
        images_name: Option<String>,
    },
    /// List datasets.
    ///
    /// Example: cliptune datasets list --json
    List,
    /// Show one dataset (by id or name) with its subset counts.
    ///
    /// Example: cliptune datasets show photos
    Show {
        /// Dataset id or name.
        dataset: String,
    },
}

/// Opens the embedded store in `--home`.
pub fn open_store(ctx: &Ctx) -> Result<LocalStore> {
    LocalStore::open(&ctx.home)
        .with_context(|| format!("opening the cliptune store in {}", ctx.home.display()))
}

/// Runs a store future to completion from synchronous CLI code (also when called from
/// inside a tokio runtime, by using a helper thread).
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let run = |fut: F| {
        crate::serve::runtime()
            .expect("the async runtime")
            .block_on(fut)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| run(fut)).join().expect("store thread panicked"))
    } else {
        run(fut)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DatasetView {
    #[serde(flatten)]
    dataset: Dataset,
    train_count: u64,
    validation_count: u64,
}

pub fn run(ctx: &Ctx, cmd: DatasetsCommand) -> Result<()> {
    let store = open_store(ctx)?;
    match cmd {
        DatasetsCommand::Import {
            path,
            name,
            max_bad_percent,
            images,
            images_name,
        } => {
            let options = ImportOptions {
                max_bad_fraction: max_bad_percent / 100.0,
                images,
                images_name,
                ..ImportOptions::new(name)
            };
            let report = block_on(import(&store, &path, &options))
                .with_context(|| format!("importing {}", path.display()))?;
            output::print(ctx, &report, human_report);
        }
        DatasetsCommand::List => {
            let list = block_on(store.list_datasets())?;
            output::print(ctx, &list, |l| {
                if l.is_empty() {
                    return "no datasets (see `cliptune datasets import --help`)".into();
                }
                l.iter()
                    .map(|d| format!("{}  {:>8} items  {}", d.id, d.items_count, d.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        DatasetsCommand::Show { dataset } => {
            let view = block_on(async {
                let d = store.resolve_dataset(&dataset).await?;
                let count = |subset: &str| {
                    let filter = default_subset_filter(subset);
                    let store = &store;
                    let id = d.id.clone();
                    async move {
                        let q = cliptune_store::ItemQuery {
                            filter: Some(filter),
                            page: 0,
                            page_size: 1,
                        };
                        store
                            .query_items(&id, &q)
                            .await
                            .map(|p| p.total_items_count)
                    }
                };
                let train_count = count("train").await?;
                let validation_count = count("validation").await?;
                anyhow::Ok(DatasetView {
                    dataset: d,
                    train_count,
                    validation_count,
                })
            })?;
            output::print(ctx, &view, |v| {
                format!(
                    "{} ({})\nitems: {} (train {}, validation {})\ncreated {}, updated {}",
                    v.dataset.name,
                    v.dataset.id,
                    v.dataset.items_count,
                    v.train_count,
                    v.validation_count,
                    v.dataset.created_at,
                    v.dataset.updated_at
                )
            });
        }
    }
    Ok(())
}

fn human_report(r: &ImportReport) -> String {
    let mut s = format!(
        "imported {} entries into {} ({}) in {:.1}s: {} new, {} updated, {} unchanged",
        r.entries,
        r.dataset.name,
        r.dataset.id,
        r.seconds,
        r.items.created,
        r.items.updated,
        r.items.unchanged
    );
    if let (Some(d), Some(c)) = (&r.images_dataset, &r.images) {
        s.push_str(&format!(
            "\nimages dataset {} ({}): {} new, {} updated, {} unchanged",
            d.name, d.id, c.created, c.updated, c.unchanged
        ));
    }
    if !r.warnings.is_empty() {
        s.push_str(&format!("\nwarning: {} entries:", r.warnings.len()));
        for w in &r.warnings {
            s.push_str(&format!("\n  {}: {}", w.location, w.reason));
        }
    }
    if !r.bad.is_empty() {
        s.push_str(&format!("\nskipped {} bad entries:", r.bad.len()));
        for b in &r.bad {
            s.push_str(&format!("\n  {}: {}", b.location, b.reason));
        }
    }
    s
}
