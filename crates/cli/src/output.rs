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
