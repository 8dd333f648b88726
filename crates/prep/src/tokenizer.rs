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

/// Bytes at the end of a cleaned prefix whose words may read differently in the whole text
/// (see [`Tokenizer::encode_prefix`]); longer than any HTML entity or combining sequence.
pub const CUT_MARGIN: usize = 256;

/// The largest char boundary at or below `at`.
fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

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
            self.push_piece(m.as_str(), &mut word, &mut ids);
        }
        ids
    }

    /// `encode(text)` cut to its first `max` ids, at a cost that grows with `max` instead of
    /// with `text` (a 16 MB caption costs what a short one does).
    ///
    /// Cleaning and splitting are local, so a prefix of the text yields the same leading ids
    /// as the whole, except near the cut: a word, an HTML entity or a combining sequence cut
    /// in two. Ids of words ending in the last [`CUT_MARGIN`] bytes of the cleaned prefix are
    /// not trusted; the prefix grows fourfold until the trusted ids suffice or it is the whole
    /// text. One effect reaches further back: ftfy stops unescaping HTML for a line (segment)
    /// that contains `<` anywhere, so when the rest of the cut line holds one, a `<` is put
    /// after the cut, inside the untrusted margin, to give the prefix the same rule. A
    /// terminal escape sequence longer than the margin that straddles the cut is the one
    /// construct where the result could differ from the whole text's.
    pub fn encode_prefix(&self, text: &str, max: usize) -> Vec<i64> {
        let mut take = (max * 16).max(1024);
        let mut word = String::new();
        loop {
            if take >= text.len() {
                let mut ids = self.encode(text);
                ids.truncate(max);
                return ids;
            }
            let cut = floor_char_boundary(text, take);
            let mut prefix = std::borrow::Cow::Borrowed(&text[..cut]);
            let line_rest = &text[cut..];
            let line_rest = &line_rest[..line_rest.find('\n').unwrap_or(line_rest.len())];
            if line_rest.contains('<') {
                prefix.to_mut().push_str(" <");
            }
            let cleaned = crate::clean::clean(&prefix);
            let trusted = cleaned.len().saturating_sub(CUT_MARGIN);
            let mut ids = Vec::with_capacity(max);
            for m in self.split.find_iter(&cleaned) {
                if m.end() > trusted {
                    break;
                }
                self.push_piece(m.as_str(), &mut word, &mut ids);
                if ids.len() >= max {
                    ids.truncate(max);
                    return ids;
                }
            }
            take = take.saturating_mul(4);
        }
    }

    /// The ids of one piece of CLIP's split.
    fn push_piece(&self, piece: &str, word: &mut String, ids: &mut Vec<i64>) {
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
                    .tokenize(word)
                    .expect("byte-level BPE covers every byte");
                ids.extend(tokens.iter().map(|t| i64::from(t.id)));
            }
        }
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
        let ids = self.encode_prefix(text, n - 1);
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

    /// `encode_prefix` equals the whole text's ids cut to `max`, on texts built from what
    /// acts across a cut: long words, entities, `<`, newlines, combining marks, ligatures,
    /// whitespace runs, escapes, SOT/EOT spellings.
    #[test]
    fn prefix_encoding_matches_the_whole_text() {
        let t = Tokenizer::shared();
        let pieces = [
            "cat",
            "photograph",
            "&amp;",
            "&lt;",
            "&amp;lt;",
            "<",
            "\n",
            "   ",
            "e\u{301}",
            "\u{fb01}sh",
            "Ｆｕｌｌ",
            "\u{1b}[31m",
            "\t",
            "2024",
            "'s",
            "✨",
            "<end_of_text>",
            "\u{345}",
            "ΣΑΣ",
            "x&y",
        ];
        let long_word = "abracadabra".repeat(40);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..40 {
            let mut text = String::new();
            while text.len() < 3_000 + case * 500 {
                let r = next();
                if r % 97 == 0 {
                    text.push_str(&long_word);
                } else if r % 89 == 0 {
                    text.push_str(&" ".repeat(700));
                } else {
                    text.push_str(pieces[(r >> 8) as usize % pieces.len()]);
                }
                if r % 3 == 0 {
                    text.push(' ');
                }
            }
            let whole = t.encode(&text);
            for max in [1, 7, 76, 300, 2_000] {
                let want = &whole[..whole.len().min(max)];
                assert_eq!(t.encode_prefix(&text, max), want, "case {case}, max {max}");
            }
        }
        // A huge text: the leading ids are those of the whole, and no more than asked.
        let huge = "a photo of a cat &amp; a dog. ".repeat(500_000);
        assert_eq!(t.encode_prefix(&huge, 76), t.encode(&huge[..4_000])[..76]);
        assert_eq!(t.tokenize(&huge, 77)[76], EOT);
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
