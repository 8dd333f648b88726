//! Token ids vs open_clip's tokenizer on the fixtures that
//! `scripts/reference/prep_reference.py tokens|sweep` generated with the Python reference.

use cliptune_prep::{Tokenizer, CONTEXT_LENGTH};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/prep")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|i| i.as_i64().expect("id"))
        .collect()
}

#[test]
fn corpus_matches_open_clip() {
    let doc = fixture("tokens.json");
    let texts: Vec<String> = doc["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let rows = doc["ids"].as_array().unwrap();
    assert!(texts.len() >= 2000, "corpus too small: {}", texts.len());
    assert_eq!(texts.len(), rows.len());
    // Captions whose cleaning depends on ftfy's mojibake heuristic, which is not ported.
    let skip: Vec<usize> = doc["mojibake_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect();
    assert!(
        skip.len() * 100 < texts.len(),
        "too many skipped: {}",
        skip.len()
    );

    let tok = Tokenizer::shared();
    let batch = tok.tokenize_batch(&texts, CONTEXT_LENGTH);
    let mut failures = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        if skip.contains(&i) {
            continue;
        }
        let mut want = ids(&rows[i]);
        want.resize(CONTEXT_LENGTH, 0);
        let got = &batch[i * CONTEXT_LENGTH..(i + 1) * CONTEXT_LENGTH];
        if got != want.as_slice() {
            failures.push(format!("#{i} {text:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} captions differ:\n{}",
        failures.len(),
        texts.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Unpadded, untruncated encodings of a subset.
    for (i, want) in doc["encoded"].as_array().unwrap().iter().enumerate() {
        if !skip.contains(&i) {
            assert_eq!(
                tok.encode(&texts[i]),
                ids(want),
                "encode #{i} {:?}",
                texts[i]
            );
        }
    }
}

fn fnv1a(mut h: u64, ids: impl IntoIterator<Item = u32>) -> u64 {
    for id in ids {
        for b in id.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001B3);
        }
    }
    h
}

/// Every code point, in a small context, tokenized as open_clip does (hashed per block of 256).
#[test]
fn every_code_point_matches_open_clip() {
    let doc = fixture("sweep.json");
    let blocks = doc["blocks"].as_object().unwrap();
    // Code points unassigned in the reference's Unicode version, or touched by ftfy's
    // mojibake repair (see prep_reference.py sweep); everything else must match.
    let skipped: Vec<(u32, u32)> = doc["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32))
        .collect();
    let is_skipped = |cp: u32| {
        let i = skipped.partition_point(|&(_, last)| last < cp);
        i < skipped.len() && skipped[i].0 <= cp
    };
    let assigned_skips: u32 = skipped.iter().map(|(a, b)| b - a + 1).sum();
    assert!(
        assigned_skips < 0x110000 - 0x800,
        "the sweep must test something"
    );
    let tok = Tokenizer::shared();
    let mut bad = Vec::new();
    for (key, want) in blocks {
        let block = u32::from_str_radix(key, 16).unwrap();
        let mut h = 0xCBF29CE484222325u64;
        for cp in block * 256..block * 256 + 256 {
            if is_skipped(cp) {
                continue;
            }
            let c = char::from_u32(cp).expect("no surrogate blocks in the fixture");
            let text = format!("{c}a{c}1{c}.{c} {c}{c}");
            let ids = tok.encode(&text);
            h = fnv1a(h, ids.iter().map(|&i| i as u32).chain([u32::MAX]));
        }
        if format!("{h:016x}") != want.as_str().unwrap() {
            bad.push(block);
        }
    }
    assert!(
        bad.is_empty(),
        "{} blocks differ: {:x?}",
        bad.len(),
        &bad[..bad.len().min(60)]
    );
}
