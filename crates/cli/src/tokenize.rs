//! `cliptune tokenize`: CLIP token ids exactly as open_clip's tokenizer gives them.

use crate::{output, Ctx};
use anyhow::{bail, Context, Result};
use clap::Args;
use cliptune_prep::{Tokenizer, CONTEXT_LENGTH};
use std::io::BufRead;

/// Print the token ids of each text, padded to the context length.
///
/// Example: cliptune tokenize "a photo of a cat" "a dog" --json
/// Example: cat captions.txt | cliptune tokenize -
#[derive(Args)]
pub struct TokenizeArgs {
    /// Texts to tokenize; `-` reads one text per line from standard input.
    #[arg(required = true)]
    texts: Vec<String>,
    /// Ids per text: [SOT] text [EOT] cut to this length (EOT kept last), padded with 0.
    #[arg(long, default_value_t = CONTEXT_LENGTH)]
    context_length: usize,
}

pub fn run(ctx: &Ctx, args: TokenizeArgs) -> Result<()> {
    if args.context_length == 0 {
        bail!("--context-length must be at least 1");
    }
    let mut texts = Vec::new();
    for t in args.texts {
        if t == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.context("reading texts from standard input")?;
                texts.push(line.strip_suffix('\r').map(str::to_string).unwrap_or(line));
            }
        } else {
            texts.push(t);
        }
    }
    let n = args.context_length;
    let ids = Tokenizer::shared().tokenize_batch(&texts, n);
    let rows: Vec<&[i64]> = ids.chunks(n).collect();
    output::print(ctx, &rows, |rows| {
        rows.iter()
            .map(|r| r.iter().map(i64::to_string).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
