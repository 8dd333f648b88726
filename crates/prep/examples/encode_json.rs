//! Debugging aid for tokenizer parity: reads a JSON array of strings on stdin and prints
//! the `encode` ids of each (one JSON array per line), to diff against open_clip.
//!
//! cargo run -p cliptune-prep --example encode_json < texts.json

use std::io::Read;

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).expect("stdin");
    let texts: Vec<String> = serde_json::from_str(&input).expect("a JSON array of strings");
    let tok = cliptune_prep::Tokenizer::shared();
    for t in &texts {
        println!("{}", serde_json::to_string(&tok.encode(t)).expect("ids"));
    }
}
