//! A model's inputs from raw content: OpenAI's tokenizer and image preprocessing, sized for
//! one model (its input side and context length). Training and inference share it, so a
//! caption or an image becomes the same numbers everywhere.

use crate::{Preprocessor, Tokenizer};

pub struct Codec {
    tokenizer: &'static Tokenizer,
    preprocessor: Preprocessor,
    image_size: usize,
    context_length: usize,
}

impl Codec {
    /// For a model taking `image_size`-pixel squares and `context_length` tokens.
    pub fn new(image_size: u32, context_length: usize) -> Self {
        Self {
            tokenizer: Tokenizer::shared(),
            preprocessor: Preprocessor::new(image_size),
            image_size: image_size as usize,
            context_length,
        }
    }

    /// JPEGs at least twice the input size decoded at reduced scale (libjpeg-turbo's DCT
    /// scaling; see [`Preprocessor::with_fast_decode`]): faster, and no longer PIL's exact
    /// pixels, so only where asked for.
    pub fn with_fast_decode(mut self, fast: bool) -> Self {
        self.preprocessor = self.preprocessor.with_fast_decode(fast);
        self
    }

    pub fn image_size(&self) -> usize {
        self.image_size
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// `[3, S, S]` normalized pixels, or why the bytes are not a usable image.
    pub fn image(&self, bytes: &[u8], name: &str) -> std::result::Result<Vec<f32>, String> {
        self.preprocessor
            .from_bytes(bytes, name)
            .map_err(|e| e.to_string())
    }

    /// Token ids padded with 0 to the context length (truncated ones end with EOT).
    pub fn tokens(&self, caption: &str) -> Vec<i64> {
        self.tokenizer.tokenize(caption, self.context_length)
    }
}
