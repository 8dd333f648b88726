//! Printing results and errors the same way in every command.

use crate::Ctx;
use serde::Serialize;

/// Prints `value` as JSON with `--json`, else the text `human` renders.
pub fn print<T: Serialize>(ctx: &Ctx, value: &T, human: impl FnOnce(&T) -> String) {
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializable output")
        );
    } else {
        println!("{}", human(value));
    }
}

/// Reports an error (as `{"error": ...}` on stdout with `--json`) and exits with status 1.
pub fn fail(ctx: &Ctx, err: &anyhow::Error) -> ! {
    let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    if ctx.json {
        println!("{}", serde_json::json!({ "error": chain.join(": ") }));
    }
    eprintln!("error: {}", chain.join(": "));
    std::process::exit(1);
}

/// A 0-100% bar on stderr for long work (only when stderr is a terminal and not `--json`).
pub fn percent_bar(ctx: &Ctx) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!ctx.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos:>3}% {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar
    })
}
