//! Inference, written once: every path that turns content into vectors goes through here
//! (online `POST /embed` and `POST /search` via the batcher, the dataset embed node,
//! `cliptune search`'s query, `cliptune embed`), so a query and a stored vector are always
//! computed the same way.
//!
//! - [`weights::local`]: the one weights cache (`<work>/models/<id>/`).
//! - [`Prepared`]: a model ready for inference (checkpoint dir, config, input codec); the
//!   vocabulary check lives only in its constructor.
//! - [`Prepared::input`] / [`Prepared::text`] / [`Prepared::image`] and [`read_item`]: the
//!   one input reader (item, bytes or text to an [`Input`]).
//! - [`encode`]: the one forward pass, at a given [`Precision`], and [`rows`].
//! - [`LocalEncoder`]: in-process encoding for the CLI (no device thread).

mod encode;
mod local;
pub mod weights;

pub use cliptune_clip::Precision;
pub use encode::{encode, Rows};
pub use local::LocalEncoder;

use crate::error::{Result, WorkerError};
use cliptune_clip::{ClipConfig, LoadOptions};
use cliptune_prep::Codec;
use cliptune_store::{Item, ItemKind, Platform};
use std::path::PathBuf;

/// A model ready for inference: its local checkpoint and what input preparation needs.
pub struct Prepared {
    pub id: String,
    pub name: String,
    /// Native checkpoint directory (the device thread caches the loaded model by this path).
    pub dir: PathBuf,
    pub config: ClipConfig,
    codec: Codec,
}

impl Prepared {
    /// A model for texts and images; refused when the CLIP tokenizer's ids do not fit its
    /// text vocabulary. `fast_decode`: the dataset node's `--fast-decode`; queries always
    /// decode exactly.
    pub fn new(
        id: String,
        name: String,
        dir: PathBuf,
        config: ClipConfig,
        fast_decode: bool,
    ) -> Result<Self> {
        if (config.text.vocab_size as usize) < cliptune_prep::VOCAB_SIZE {
            return Err(WorkerError::input(
                "model",
                format!(
                    "model {name} has a vocabulary of {} tokens; CLIP's tokenizer needs {}",
                    config.text.vocab_size,
                    cliptune_prep::VOCAB_SIZE
                ),
            ));
        }
        Self::images_only(id, name, dir, config, fast_decode)
    }

    /// A model only images will go through (`cliptune embed --image` of a checkpoint with a
    /// small test vocabulary): no vocabulary check, so [`Prepared::text`] must not be used.
    pub fn images_only(
        id: String,
        name: String,
        dir: PathBuf,
        config: ClipConfig,
        fast_decode: bool,
    ) -> Result<Self> {
        let image_size = u32::try_from(config.vision.image_size)
            .map_err(|_| WorkerError::input("model", "image size out of range"))?;
        let codec = Codec::new(image_size, config.text.context_length as usize)
            .with_fast_decode(fast_decode);
        Ok(Self {
            id,
            name,
            dir,
            config,
            codec,
        })
    }

    /// Reads the checkpoint's config in `dir` (blocking file IO) and prepares it.
    pub fn open(id: String, name: String, dir: PathBuf, fast_decode: bool) -> Result<Self> {
        let config = cliptune_clip::checkpoint::inspect(&dir, &LoadOptions::default())?.config;
        Self::new(id, name, dir, config, fast_decode)
    }

    /// A text as the model's input: tokenized, cut to the context length, without padding.
    pub fn text(&self, text: &str) -> Input {
        let mut ids = self.codec.tokens(text);
        // Padding is 0 and the last real token is EOT (non-zero), so this keeps every real token.
        while ids.len() > 1 && ids.last() == Some(&0) {
            ids.pop();
        }
        Input::Text(ids)
    }

    /// An image file's bytes as the model's input, or why they are not a usable image.
    pub fn image(&self, bytes: &[u8], name: &str) -> std::result::Result<Input, String> {
        self.codec.image(bytes, name).map(Input::Image)
    }

    /// Raw content as the model's input; `name` labels image errors.
    pub fn input(&self, raw: Raw, name: &str) -> std::result::Result<Input, String> {
        match raw {
            Raw::Image(bytes) => self.image(&bytes, name),
            Raw::Text(text) => Ok(self.text(&text)),
        }
    }

    /// What one input costs a batch: a text its tokens, an image its patches (what the
    /// transformer's work grows with).
    pub fn cost(&self, input: &Input) -> usize {
        match input {
            Input::Text(ids) => ids.len().max(1),
            Input::Image(_) => {
                let g = self.config.grid().max(1) as usize;
                g * g
            }
        }
    }
}

/// One input of the model.
pub enum Input {
    /// Token ids from SOT to EOT (no padding).
    Text(Vec<i64>),
    /// `[3, S, S]` normalized pixels.
    Image(Vec<f32>),
}

/// An item's content before preparation.
pub enum Raw {
    Image(Vec<u8>),
    Text(String),
}

/// What an item contributes to embedding: its image, or for text and prompt items their
/// caption's text (as [`cliptune_store::Datasets::caption`] resolves it), or why it has none.
pub async fn read_item(platform: &dyn Platform, item: &Item) -> std::result::Result<Raw, String> {
    match item.kind() {
        ItemKind::Image => platform
            .item_bytes(&item.id)
            .await
            .map(Raw::Image)
            .map_err(|e| e.to_string()),
        ItemKind::Text | ItemKind::Prompt => {
            let resolved = platform.caption(item).await.map_err(|e| e.to_string())?;
            resolved
                .caption
                .filter(|c| !c.trim().is_empty())
                .map(Raw::Text)
                .ok_or_else(|| "no text to embed".to_string())
        }
        ItemKind::Other => Err(format!(
            "cannot embed mimetype {}",
            item.mimetype().unwrap_or("unknown")
        )),
    }
}

/// Inputs split by tower, each tower keeping its inputs' order.
pub struct Split {
    pub images: Vec<Vec<f32>>,
    pub texts: Vec<Vec<i64>>,
    /// Per input, whether it went to the image tower.
    pub is_image: Vec<bool>,
}

impl Split {
    pub fn of(inputs: Vec<Input>) -> Self {
        let mut split = Self {
            images: Vec::new(),
            texts: Vec::new(),
            is_image: Vec::with_capacity(inputs.len()),
        };
        for input in inputs {
            split.is_image.push(matches!(input, Input::Image(_)));
            match input {
                Input::Image(px) => split.images.push(px),
                Input::Text(ids) => split.texts.push(ids),
            }
        }
        split
    }

    /// The towers' vectors back in input order.
    pub fn merge(is_image: &[bool], img: Rows, txt: Rows) -> Rows {
        let (mut img, mut txt) = (img.into_iter(), txt.into_iter());
        is_image
            .iter()
            .map(|&i| if i { img.next() } else { txt.next() }.unwrap_or_default())
            .collect()
    }
}
