//! The one error type of this crate.

/// Everything that can go wrong while tokenizing or preprocessing. Image errors name the
/// file (or whatever name the caller gave the bytes) so that a batch failure is traceable.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    #[error("{name}: cannot read")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: not a supported image (JPEG, PNG, WebP, GIF or BMP)")]
    UnknownFormat { name: String },
    #[error("{name}: corrupt or truncated image: {reason}")]
    Corrupt { name: String, reason: String },
    #[error(
        "{name}: {width}x{height} is {pixels} pixels, over the limit of {limit} \
         (a possible decompression bomb; raise max_pixels if the image is genuine)"
    )]
    TooLarge {
        name: String,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("{name}: image has no pixels ({width}x{height})")]
    Empty {
        name: String,
        width: u32,
        height: u32,
    },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("tokenizer data: {0}")]
    Tokenizer(String),
    #[error("{name}: npy: {reason}")]
    Npy { name: String, reason: String },
}

pub type Result<T, E = PrepError> = std::result::Result<T, E>;
