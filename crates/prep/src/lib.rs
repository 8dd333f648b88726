//! CLIP's tokenizer and image preprocessing, identical to the reference Python
//! implementations (open_clip's tokenizer; OpenAI's PIL + torchvision transform), as plain
//! `Vec<i64>` / `Vec<f32>` buffers so that any crate can use them without libtorch.
//!
//! ```no_run
//! use cliptune_prep::{Preprocessor, Tokenizer};
//! let ids = Tokenizer::shared().tokenize("a photo of a cat", 77); // [77]
//! let pixels = Preprocessor::new(224).from_path("cat.jpg".as_ref())?; // [3, 224, 224]
//! # Ok::<(), cliptune_prep::PrepError>(())
//! ```
//! See docs/preprocessing.md for the exact rules and what is (not) reproduced.

pub mod clean;
mod codec;
mod decode;
mod error;
mod jpeg;
pub mod npy;
mod preprocess;
mod resample;
mod tables;
pub mod tokenizer;

pub use codec::Codec;
pub use error::{PrepError, Result};
pub use jpeg::scale_denom as jpeg_scale_denom;
pub use preprocess::{Preprocessor, DEFAULT_MAX_PIXELS, MEAN, STD};
pub use tokenizer::{Tokenizer, CONTEXT_LENGTH, EOT, SOT, VOCAB_SIZE};
