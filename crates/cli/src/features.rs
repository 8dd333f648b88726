//! `cliptune features export`: a model's vectors of a dataset in clip-retrieval's layout.
//!
//! ```text
//! OUT/img_emb/img_emb_0.npy         image items' vectors, one row per item
//! OUT/metadata/metadata_0.jsonl     one line per img_emb row, same order
//! OUT/text_emb/text_emb_0.npy       text and prompt items' vectors (when there are any)
//! OUT/text_metadata/metadata_0.jsonl
//! OUT/export.json                   model, dataset, dimension, dtype, counts
//! ```
//! clip-retrieval writes float16 `.npy` with aligned Parquet metadata (`image_path`,
//! `caption`, ...); here the metadata is JSON lines with the same column names plus the
//! item and dataset ids (`pandas.read_json(path, lines=True)` reads it). Items are read page
//! by page and rows are streamed to disk, so memory stays flat for any dataset size.

use crate::datasets::{block_on, open_store};
use crate::{output, Ctx};
use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use cliptune_store::prelude::*;
use cliptune_store::{ItemKind, ItemQuery, LocalStore, StoreError};
use serde::Serialize;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum FeaturesCommand {
    /// Export a model's vectors of a dataset as .npy plus JSON-lines metadata (clip-retrieval's layout).
    ///
    /// Items without a vector for the model (not embedded yet, or unreadable) are counted
    /// and left out.
    ///
    /// Examples:
    ///   cliptune features export --model clip-ft --dataset photos --out ./photos-emb
    ///   cliptune features export --model clip-ft --dataset photos --out ./emb --dtype float32 --filter '{"dir": "/cats"}' --json
    #[command(verbatim_doc_comment)]
    Export {
        /// Model id or name.
        #[arg(long)]
        model: String,
        /// Dataset id or name.
        #[arg(long)]
        dataset: String,
        /// Output folder (created; existing export files in it are replaced).
        #[arg(long)]
        out: PathBuf,
        /// DQL filter over the dataset's items, as JSON.
        #[arg(long)]
        filter: Option<String>,
        /// Element type of the .npy files (clip-retrieval writes float16).
        #[arg(long, value_enum, default_value_t = Dtype::Float16)]
        dtype: Dtype,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float16,
    Float32,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::Float16 => "<f2",
            Dtype::Float32 => "<f4",
        }
    }
}

#[derive(Serialize)]
struct Part {
    embeddings: String,
    metadata: String,
    rows: u64,
}

#[derive(Serialize)]
struct ExportReport {
    out: String,
    model: Value,
    dataset: Value,
    dim: u32,
    dtype: Dtype,
    image: Option<Part>,
    text: Option<Part>,
    /// Items matching the filter that have no vector for this model.
    missing: u64,
    items: u64,
}

pub fn run(ctx: &Ctx, cmd: FeaturesCommand) -> Result<()> {
    match cmd {
        FeaturesCommand::Export {
            model,
            dataset,
            out,
            filter,
            dtype,
        } => {
            let filter: Option<Value> = match filter {
                None => None,
                Some(f) => Some(
                    serde_json::from_str(&f)
                        .with_context(|| format!("--filter is not JSON: {f}"))?,
                ),
            };
            let store = open_store(ctx)?;
            let report = block_on(export(&store, &model, &dataset, &out, filter, dtype))?;
            output::print(ctx, &report, |r| {
                let part = |p: &Option<Part>, what: &str| match p {
                    Some(p) => format!("{} {what} vectors -> {}\n", p.rows, p.embeddings),
                    None => String::new(),
                };
                format!(
                    "{}{}{} of {} items had no vector for the model\nexport: {}",
                    part(&r.image, "image"),
                    part(&r.text, "text"),
                    r.missing,
                    r.items,
                    Path::new(&r.out).join("export.json").display()
                )
            });
            Ok(())
        }
    }
}

/// Rows of one modality: vectors streamed to a raw file, metadata to JSON lines.
struct Writer {
    raw_path: PathBuf,
    raw: BufWriter<File>,
    meta: BufWriter<File>,
    npy_path: PathBuf,
    meta_path: PathBuf,
    rows: u64,
    dtype: Dtype,
}

impl Writer {
    fn new(
        out: &Path,
        emb_dir: &str,
        emb_name: &str,
        meta_dir: &str,
        dtype: Dtype,
    ) -> Result<Self> {
        for d in [emb_dir, meta_dir] {
            std::fs::create_dir_all(out.join(d))
                .with_context(|| format!("creating {}", out.join(d).display()))?;
        }
        let npy_path = out.join(emb_dir).join(format!("{emb_name}_0.npy"));
        let meta_path = out.join(meta_dir).join("metadata_0.jsonl");
        let raw_path = out.join(emb_dir).join(format!(".{emb_name}_0.rows.tmp"));
        let create =
            |p: &Path| File::create(p).with_context(|| format!("creating {}", p.display()));
        Ok(Self {
            raw: BufWriter::new(create(&raw_path)?),
            meta: BufWriter::new(create(&meta_path)?),
            raw_path,
            npy_path,
            meta_path,
            rows: 0,
            dtype,
        })
    }

    fn push(&mut self, v: &[f32], meta: &Value) -> Result<()> {
        match self.dtype {
            Dtype::Float32 => {
                for x in v {
                    self.raw.write_all(&x.to_le_bytes())?;
                }
            }
            Dtype::Float16 => {
                for x in v {
                    self.raw.write_all(&half::f16::from_f32(*x).to_le_bytes())?;
                }
            }
        }
        serde_json::to_writer(&mut self.meta, meta)?;
        self.meta.write_all(b"\n")?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the .npy (header, then the streamed rows) and removes the raw file.
    fn finish(mut self, dim: u32) -> Result<Part> {
        self.raw.flush()?;
        self.meta.flush()?;
        drop(self.raw);
        let mut npy = BufWriter::new(
            File::create(&self.npy_path)
                .with_context(|| format!("creating {}", self.npy_path.display()))?,
        );
        npy.write_all(&npy_header(self.dtype, self.rows, dim))?;
        let mut raw = File::open(&self.raw_path)?;
        raw.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = raw.read(&mut buf)?;
            if n == 0 {
                break;
            }
            npy.write_all(&buf[..n])?;
        }
        npy.flush()?;
        std::fs::remove_file(&self.raw_path)?;
        Ok(Part {
            embeddings: self.npy_path.display().to_string(),
            metadata: self.meta_path.display().to_string(),
            rows: self.rows,
        })
    }
}

/// NumPy format 1.0 header of a C-order `[rows, dim]` array.
fn npy_header(dtype: Dtype, rows: u64, dim: u32) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}",
        dtype.descr()
    );
    // Magic, version and length take 10 bytes; the whole header is padded with spaces to a
    // multiple of 64 and ends in a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

async fn export(
    store: &LocalStore,
    model: &str,
    dataset: &str,
    out: &Path,
    filter: Option<Value>,
    dtype: Dtype,
) -> Result<ExportReport> {
    let model = store.resolve_model(model).await?;
    let dataset = store.resolve_dataset(dataset).await?;
    let set = cliptune_worker::search::feature_set(store, &model).await?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // A previous export into the same folder must not leave a part this one does not write.
    for stale in [
        "img_emb/img_emb_0.npy",
        "metadata/metadata_0.jsonl",
        "text_emb/text_emb_0.npy",
        "text_metadata/metadata_0.jsonl",
    ] {
        let p = out.join(stale);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("replacing {}", p.display()))?;
        }
    }
    let mut image: Option<Writer> = None;
    let mut text: Option<Writer> = None;
    let (mut missing, mut items) = (0u64, 0u64);
    let mut query = ItemQuery {
        filter,
        page: 0,
        page_size: 1000,
    };
    loop {
        let page = store
            .query_items(&dataset.id, &query)
            .await
            .map_err(|e| match e {
                StoreError::Invalid { .. } => anyhow::anyhow!("--filter: {e}"),
                e => e.into(),
            })?;
        let more = page.has_next_page && !page.items.is_empty();
        for item in page.items {
            items += 1;
            let v = match store.get_vector(&set.id, &item.id).await {
                Ok(v) => v.value,
                Err(StoreError::NotFound { .. }) => {
                    missing += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if v.len() != set.size as usize {
                bail!(
                    "vector of item {} has {} values, the feature set {}",
                    item.id,
                    v.len(),
                    set.size
                );
            }
            let kind = item.kind();
            let caption = match kind {
                ItemKind::Image => item.own_caption().map(String::from),
                _ => store.caption(&item).await.ok().and_then(|c| c.caption),
            };
            let meta = json!({
                "image_path": item.filename,
                "caption": caption,
                "item_id": item.id,
                "dataset_id": item.dataset_id,
                "name": item.name,
                "mimetype": item.mimetype(),
            });
            let w = if kind == ItemKind::Image {
                if image.is_none() {
                    image = Some(Writer::new(out, "img_emb", "img_emb", "metadata", dtype)?);
                }
                image.as_mut()
            } else {
                if text.is_none() {
                    text = Some(Writer::new(
                        out,
                        "text_emb",
                        "text_emb",
                        "text_metadata",
                        dtype,
                    )?);
                }
                text.as_mut()
            };
            w.expect("writer was just created").push(&v, &meta)?;
        }
        if !more {
            break;
        }
        query.page += 1;
    }
    let image = image.map(|w| w.finish(set.size)).transpose()?;
    let text = text.map(|w| w.finish(set.size)).transpose()?;
    let report = ExportReport {
        out: out.display().to_string(),
        model: json!({"id": model.id, "name": model.name}),
        dataset: json!({"id": dataset.id, "name": dataset.name}),
        dim: set.size,
        dtype,
        image,
        text,
        missing,
        items,
    };
    let path = out.join("export.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(report)
}
