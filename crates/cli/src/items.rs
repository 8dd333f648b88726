//! `cliptune items ...`

use crate::datasets::{block_on, open_store};
use crate::{output, Ctx};
use anyhow::{Context, Result};
use clap::Subcommand;
use cliptune_store::prelude::*;
use cliptune_store::{dql, Item, ItemKind, ItemQuery};
use serde::Serialize;
use serde_json::Value;

#[derive(Subcommand)]
pub enum ItemsCommand {
    /// List the items of a dataset, optionally filtered with DQL (default: not hidden, type file).
    ///
    /// Examples:
    ///   cliptune items list --dataset photos
    ///   cliptune items list --dataset photos --filter '{"metadata.system.tags.train": true}' --json
    ///   cliptune items list --dataset photos --filter '{"filename": "/cats/*.jpg"}'
    List {
        /// Dataset id or name.
        #[arg(long)]
        dataset: String,
        /// DQL filter JSON (a bare filter or a whole query body with "filter").
        #[arg(long)]
        filter: Option<String>,
        /// Stop after this many items (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
}

/// One listed item: the stored item plus its resolved caption.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ItemView {
    id: String,
    name: String,
    filename: String,
    dataset_id: String,
    kind: ItemKind,
    /// Caption as training resolves it (description, metadata.system.description, or a
    /// prompt item's free-text annotation).
    caption: Option<String>,
    /// For prompt items: the image item the caption describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    image_item_id: Option<String>,
    hidden: bool,
    metadata: Value,
}

pub fn run(ctx: &Ctx, cmd: ItemsCommand) -> Result<()> {
    let ItemsCommand::List {
        dataset,
        filter,
        limit,
    } = cmd;
    let filter = filter
        .map(|f| {
            serde_json::from_str::<Value>(&f)
                .map(|v| dql::filter_from_body(&v))
                .with_context(|| format!("--filter is not JSON: {f}"))
        })
        .transpose()?;
    let store = open_store(ctx)?;
    let views = block_on(async {
        let ds = store.resolve_dataset(&dataset).await?;
        let mut query = ItemQuery {
            filter,
            ..ItemQuery::default()
        };
        let mut items: Vec<Item> = Vec::new();
        loop {
            let page = store.query_items(&ds.id, &query).await?;
            let more = page.has_next_page;
            items.extend(page.items);
            if !more || (limit > 0 && items.len() >= limit) {
                break;
            }
            query.page += 1;
        }
        if limit > 0 {
            items.truncate(limit);
        }
        let mut views = Vec::with_capacity(items.len());
        for item in items {
            // A prompt whose image is gone still lists, without a caption.
            let resolved = store.caption(&item).await.ok();
            let image_item_id = resolved
                .as_ref()
                .and_then(|r| r.image_item.as_ref())
                .map(|i| i.id.clone())
                .filter(|id| *id != item.id);
            views.push(ItemView {
                kind: item.kind(),
                caption: resolved.and_then(|r| r.caption),
                image_item_id,
                id: item.id,
                name: item.name,
                filename: item.filename,
                dataset_id: item.dataset_id,
                hidden: item.hidden,
                metadata: item.metadata,
            });
        }
        anyhow::Ok(views)
    })?;
    output::print(ctx, &views, |v| {
        if v.is_empty() {
            return "no items match".into();
        }
        v.iter()
            .map(|i| {
                format!(
                    "{}  {}  {}",
                    i.id,
                    i.filename,
                    i.caption.as_deref().unwrap_or("(no caption)")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
