//! `cliptune`: fine-tune CLIP on captioned images and search with it.
//!
//! Each command group lives in its own module; `main` only parses and dispatches.
//! Exit codes: 0 success, 1 failure, 2 usage error (clap).

mod datasets;
mod embed;
mod embed_dataset;
mod features;
mod items;
mod models;
mod output;
mod pipeline;
mod preprocess;
mod search;
mod serve;
mod tokenize;
mod train;
mod variables;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cliptune",
    version,
    about = "Fine-tune CLIP on your captioned images and search with it"
)]
struct Cli {
    /// Data directory of the embedded store (models, datasets, vectors).
    #[arg(long, global = true, env = "CLIPTUNE_HOME")]
    home: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, import and create models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Import, list and show datasets of captioned images.
    #[command(subcommand)]
    Datasets(datasets::DatasetsCommand),
    /// List the items of a dataset (with DQL filters).
    #[command(subcommand)]
    Items(items::ItemsCommand),
    /// Read and set pipeline variables.
    #[command(subcommand)]
    Variables(variables::VariablesCommand),
    /// Fine-tune a model on captioned images.
    Train(train::TrainArgs),
    /// Evaluate a model on captioned images.
    Eval(train::EvalArgs),
    /// Print CLIP token ids of texts (open_clip's tokenizer).
    ///
    /// Example: cliptune tokenize "a photo of a cat" --json; or: cliptune tokenize - < captions.txt
    Tokenize(tokenize::TokenizeArgs),
    /// Write the preprocessed tensor of an image to .npy.
    ///
    /// Example: cliptune preprocess --image cat.jpg --size 224 --out cat.npy
    Preprocess(preprocess::PreprocessArgs),
    /// Print text and image embeddings.
    ///
    /// Example: cliptune embed --model ./clip-vit-base-patch32 --text "a cat" --image cat.jpg --json
    Embed(embed::EmbedArgs),
    /// Embed a dataset's items into the model's feature set (the embed node), resumably.
    ///
    /// Example: cliptune embed-dataset --dataset photos --model clip-ft
    EmbedDataset(embed_dataset::EmbedDatasetArgs),
    /// Serve the pipeline nodes, executions and pipelines over HTTP.
    Serve(serve::ServeArgs),
    /// Search a dataset with a text or an image (top-k items by cosine, with scores).
    ///
    /// Example: cliptune search --dataset photos --model clip-ft --text "a dog on a beach" -k 5
    Search(search::SearchArgs),
    /// Export a model's vectors of a dataset (clip-retrieval's layout).
    #[command(subcommand)]
    Features(features::FeaturesCommand),
    /// Install and run the fine-tuning pipeline template.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCommand),
    /// Helpers of `make run`: a generated image set and a text query.
    #[command(subcommand, hide = true)]
    Demo(pipeline::DemoCommand),
}

/// What every command gets besides its own arguments.
pub struct Ctx {
    pub home: PathBuf,
    pub json: bool,
}

fn default_home() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    data.unwrap_or_else(|| PathBuf::from(".")).join("cliptune")
}

/// A command writing into a closed pipe (`cliptune items list --json | head`) ends as other
/// Unix tools do: quietly, killed by SIGPIPE (status 141 in the shell). Rust starts with
/// SIGPIPE ignored, which turns such a write into a panic inside `println!`. `serve` keeps
/// it ignored: a client hanging up must be an error on that socket, not the end of the
/// server.
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: restores a signal's default disposition; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Keeps freed memory in the process instead of handing it back to the kernel at once.
/// Decoding and embedding allocate large buffers all the time (0.9 MB a decoded 640x480
/// JPEG, 38 MB a batch of 64 images at 224 px, inside libtorch too); with glibc's defaults
/// many of them are fresh mmaps or trimmed heap, paid again in page faults and zeroing:
/// 0.7 s of system time in a 3 s embedding of 1,000 JPEGs on 2 cores, and 10-20% of the
/// rate (docs/preprocessing.md, "Feeding the device on every core"). Blocks under 64 MB now
/// come from the heap, and up to 256 MB of it stays reserved once freed. glibc's own
/// `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` variables still win when set.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (env, param, value) in [
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 64 << 20),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 256 << 20),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: mallopt only adjusts allocator parameters; called before any thread
            // of ours exists.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        default_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLIPTUNE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let ctx = Ctx {
        home: cli.home.unwrap_or_else(default_home),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Models(cmd) => models::run(&ctx, cmd),
        Command::Tokenize(args) => tokenize::run(&ctx, args),
        Command::Preprocess(args) => preprocess::run(&ctx, args),
        Command::Embed(args) => embed::run(&ctx, args),
        Command::EmbedDataset(args) => embed_dataset::run(&ctx, args),
        Command::Serve(args) => serve::run(&ctx, args),
        Command::Search(args) => search::run(&ctx, args),
        Command::Features(cmd) => features::run(&ctx, cmd),
        Command::Pipeline(cmd) => pipeline::run(&ctx, cmd),
        Command::Demo(cmd) => pipeline::demo(&ctx, cmd),
        Command::Datasets(cmd) => datasets::run(&ctx, cmd),
        Command::Items(cmd) => items::run(&ctx, cmd),
        Command::Variables(cmd) => variables::run(&ctx, cmd),
        Command::Train(args) => train::train(&ctx, args),
        Command::Eval(args) => train::eval(&ctx, args),
    };
    if let Err(err) = result {
        output::fail(&ctx, &err);
    }
}
