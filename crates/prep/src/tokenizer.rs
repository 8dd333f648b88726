//! OpenAI's CLIP tokenizer as open_clip runs it (`open_clip.tokenize`).
//!
//! Pipeline: [`crate::clean::clean`] (ftfy fixes, HTML unescape twice, whitespace collapse,
//! lowercase) -> split with CLIP's pattern -> UTF-8 bytes mapped to GPT-2's printable byte
//! alphabet -> byte-level BPE (the `tokenizers` crate's BPE model, with `</w>` marking the end
//! of each word) -> ids. Sequences for the model are `[SOT] ids [EOT]`, cut to the context
//! length with EOT kept last, padded with 0.

use crate::error::{PrepError, Result};
use rayon::prelude::*;
use regex::Regex;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::Model;

/// `<start_of_text>`.
pub const SOT: i64 = 49406;
/// `<end_of_text>`; the largest id, which is why argmax pooling finds it.
pub const EOT: i64 = 49407;
/// Context length of every OpenAI CLIP.
pub const CONTEXT_LENGTH: usize = 77;
/// 256 byte symbols, the same with `</w>`, 48,894 merges, SOT and EOT.
pub const VOCAB_SIZE: usize = 49408;

/// The first 48,894 merges of OpenAI's `bpe_simple_vocab_16e6.txt` (MIT, see third_party/).
const MERGES: &str = include_str!("../../../third_party/openai-clip/bpe_merges_48894.txt");
const NUM_MERGES: usize = 49152 - 256 - 2;

/// open_clip's special-token spellings: these literal strings in a caption become SOT/EOT.
const SOT_TEXT: &str = "<start_of_text>";
const EOT_TEXT: &str = "<end_of_text>";

/// CLIP's word split. open_clip compiles it with the `regex` module and IGNORECASE. The text
/// is lowercased already, so case-insensitivity only matters through case folding: it lets
/// `'s` match `'ſ` (kept here with `(?i:...)`), and it removes U+0345 (a combining mark whose
/// case variant is the letter iota) from the negated class without adding it to `[\p{L}]`, so
/// Python drops U+0345 altogether. The code point sweep test shows that is the only character
/// where the flag changes a class.
const PATTERN: &str = r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+";

/// Thread-safe; share one (e.g. behind an `Arc` or [`Tokenizer::shared`]).
pub struct Tokenizer {
    bpe: BPE,
    split: Regex,
    /// Byte -> its printable stand-in (GPT-2's `bytes_to_unicode`).
    byte_char: [char; 256],
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").finish_non_exhaustive()
    }
}

/// GPT-2's reversible byte -> character map: printable Latin-1 bytes map to themselves,
/// the rest to U+0100 upwards in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        map[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    map
}

impl Tokenizer {
    /// Builds the tokenizer from the embedded merges (about 30 ms; reuse it).
    pub fn new() -> Result<Tokenizer> {
        let byte_char = bytes_to_unicode();
        // Vocabulary order defines the ids: bytes (in map order), bytes + </w>, merges, specials.
        let mut vocab = Vocab::default();
        let mut order: Vec<String> = Vec::with_capacity(VOCAB_SIZE);
        let singles = printable_first_order(&byte_char);
        order.extend(singles.iter().map(|c| c.to_string()));
        order.extend(singles.iter().map(|c| format!("{c}</w>")));
        let mut merges = Vec::with_capacity(NUM_MERGES);
        for (i, line) in MERGES.lines().take(NUM_MERGES).enumerate() {
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                PrepError::Tokenizer(format!("merge line {} is not two symbols: {line:?}", i + 1))
            })?;
            order.push(format!("{a}{b}"));
            merges.push((a.to_string(), b.to_string()));
        }
        if merges.len() != NUM_MERGES {
            return Err(PrepError::Tokenizer(format!(
                "expected {NUM_MERGES} merges, found {}",
                merges.len()
            )));
        }
        for (id, token) in order.into_iter().enumerate() {
            vocab.insert(token, id as u32);
        }
        if vocab.len() != VOCAB_SIZE - 2 {
            return Err(PrepError::Tokenizer(format!(
                "vocabulary has {} distinct entries, expected {}",
                vocab.len(),
                VOCAB_SIZE - 2
            )));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".into())
            .cache_capacity(100_000)
            .build()
            .map_err(|e| PrepError::Tokenizer(e.to_string()))?;
        let split = Regex::new(PATTERN).map_err(|e| PrepError::Tokenizer(e.to_string()))?;
        Ok(Tokenizer {
            bpe,
            split,
            byte_char,
        })
    }

    /// A process-wide tokenizer built on first use.
    pub fn shared() -> &'static Tokenizer {
        static SHARED: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Tokenizer::new().expect("embedded BPE merges are valid"))
    }

    /// BPE ids of `text` after cleaning, without SOT/EOT and without truncation
    /// (open_clip's `SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let cleaned = crate::clean::clean(text);
        let mut ids = Vec::with_capacity(cleaned.len() / 3 + 2);
        let mut word = String::new();
        for m in self.split.find_iter(&cleaned) {
            let piece = m.as_str();
            match piece {
                SOT_TEXT => ids.push(SOT),
                EOT_TEXT => ids.push(EOT),
                _ => {
                    word.clear();
                    word.extend(piece.bytes().map(|b| self.byte_char[b as usize]));
                    // Every single byte symbol (with and without </w>) is in the vocabulary,
                    // so the model cannot fail or produce an unknown token here.
                    let tokens = self
                        .bpe
                        .tokenize(&word)
                        .expect("byte-level BPE covers every byte");
                    ids.extend(tokens.iter().map(|t| i64::from(t.id)));
                }
            }
        }
        ids
    }

    /// `[SOT] + encode(text) + [EOT]`, cut to `context_length` keeping EOT last, padded with 0.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<i64> {
        let mut row = vec![0i64; context_length];
        self.fill_row(text, &mut row);
        row
    }

    /// Row-major `[texts.len(), context_length]` ids, tokenized in parallel.
    pub fn tokenize_batch(
        &self,
        texts: &[impl AsRef<str> + Sync],
        context_length: usize,
    ) -> Vec<i64> {
        let mut out = vec![0i64; texts.len() * context_length];
        if context_length == 0 {
            return out;
        }
        out.par_chunks_mut(context_length)
            .zip(texts.par_iter())
            .for_each(|(row, text)| self.fill_row(text.as_ref(), row));
        out
    }

    fn fill_row(&self, text: &str, row: &mut [i64]) {
        let n = row.len();
        if n == 0 {
            return;
        }
        let ids = self.encode(text);
        row[0] = SOT;
        let body = ids.len().min(n.saturating_sub(1));
        row[1..=body].copy_from_slice(&ids[..body]);
        let eot_at = (body + 1).min(n - 1);
        row[eot_at] = EOT;
    }
}

/// The byte symbols in OpenAI's vocabulary order: `bytes_to_unicode().values()` iterates the
/// printable bytes first (in byte order), then the remapped ones.
fn printable_first_order(byte_char: &[char; 256]) -> Vec<char> {
    let mut printable: Vec<char> = Vec::with_capacity(256);
    let mut rest: Vec<char> = Vec::new();
    for (b, &c) in byte_char.iter().enumerate() {
        if c as usize == b {
            printable.push(c);
        } else {
            rest.push(c);
        }
    }
    printable.extend(rest);
    printable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let t = Tokenizer::shared();
        // "a photo of a cat" with open_clip: [49406, 320, 1125, 539, 320, 2368, 49407].
        assert_eq!(
            &t.tokenize("a photo of a cat", 77)[..8],
            &[49406, 320, 1125, 539, 320, 2368, 49407, 0]
        );
    }

    #[test]
    fn truncation_keeps_eot_last() {
        let t = Tokenizer::shared();
        let row = t.tokenize(&"cat ".repeat(200), 77);
        assert_eq!(row.len(), 77);
        assert_eq!(row[0], SOT);
        assert_eq!(row[76], EOT);
        assert!(row[1..76].iter().all(|&i| i == 2368));
        let tiny = t.tokenize("a cat", 2);
        assert_eq!(tiny, vec![SOT, EOT]);
        assert_eq!(t.tokenize("a cat", 1), vec![EOT]);
    }

    #[test]
    fn batch_matches_single() {
        let t = Tokenizer::shared();
        let texts = ["a dog", "", "<end_of_text> x", "Ünïcødé ✨"];
        let batch = t.tokenize_batch(&texts, 16);
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(
                &batch[i * 16..(i + 1) * 16],
                t.tokenize(text, 16).as_slice()
            );
        }
    }
}
