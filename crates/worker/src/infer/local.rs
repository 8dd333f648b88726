//! In-process inference for the CLI: no server, no device thread.

use super::{encode, Input, Prepared, Rows, Split};
use crate::error::{Result, WorkerError};
use cliptune_clip::{Clip, Precision};

/// Inputs per forward pass: bounds memory on large inputs.
const BATCH: usize = 32;

/// Encodes in the calling thread with a loaded model, at one precision: for a search query
/// that is the precision the searched vectors were made with, so both go through the same
/// arithmetic.
pub struct LocalEncoder {
    clip: Clip,
    model: Prepared,
    precision: Precision,
}

impl LocalEncoder {
    pub fn load(model: Prepared, device: tch::Device, precision: Precision) -> Result<Self> {
        let clip = cliptune_clip::checkpoint::load(&model.dir, device, &Default::default())?;
        Ok(Self {
            clip,
            model,
            precision,
        })
    }

    pub fn model(&self) -> &Prepared {
        &self.model
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The L2-normalized vector of a text.
    pub fn text(&self, text: &str) -> Result<Vec<f32>> {
        self.one(self.model.text(text))
    }

    /// The L2-normalized vector of an image file's bytes.
    pub fn image(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
        let input = self
            .model
            .image(bytes, name)
            .map_err(|e| WorkerError::input("image", format!("{name}: {e}")))?;
        self.one(input)
    }

    /// Vectors of `inputs` in their order, `BATCH` at a time (normalized unless `normalize`
    /// is false: `cliptune embed --raw`).
    pub fn embed(&self, inputs: Vec<Input>, normalize: bool) -> Result<Rows> {
        let mut out = Vec::with_capacity(inputs.len());
        let mut inputs = inputs.into_iter().peekable();
        while inputs.peek().is_some() {
            let chunk: Vec<Input> = inputs.by_ref().take(BATCH).collect();
            let Split {
                images,
                texts,
                is_image,
            } = Split::of(chunk);
            let (img, txt) = encode(&self.clip, self.precision, images, texts, normalize)?;
            out.extend(Split::merge(&is_image, img, txt));
        }
        Ok(out)
    }

    fn one(&self, input: Input) -> Result<Vec<f32>> {
        self.embed(vec![input], true)?
            .pop()
            .ok_or_else(|| WorkerError::Internal("the model returned no vector".into()))
    }
}
