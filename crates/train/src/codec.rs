//! Turns a pair into model inputs: OpenAI's tokenizer and image preprocessing (from
//! `cliptune-prep`), sized for one model.

use crate::Result;
use cliptune_clip::ClipConfig;

pub struct Codec {
    tokenizer: &'static cliptune_prep::Tokenizer,
    preprocessor: cliptune_prep::Preprocessor,
    image_size: usize,
    context_length: usize,
}

impl Codec {
    pub fn new(model: &ClipConfig) -> Result<Self> {
        Ok(Self {
            tokenizer: cliptune_prep::Tokenizer::shared(),
            preprocessor: cliptune_prep::Preprocessor::new(model.vision.image_size as u32),
            image_size: model.vision.image_size as usize,
            context_length: model.text.context_length as usize,
        })
    }

    /// JPEGs at least twice the input size decoded at reduced scale (libjpeg-turbo's DCT
    /// scaling; see `cliptune_prep::Preprocessor::with_fast_decode`): faster, and no longer
    /// PIL's exact pixels, so only where asked for.
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
