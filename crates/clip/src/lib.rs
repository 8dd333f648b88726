//! The CLIP model in libtorch: architecture configs, the two towers, and checkpoint
//! import. Tensors only: this crate knows nothing of HTTP, storage or training loops.

mod batch;
pub mod checkpoint;
pub mod config;
mod device;
mod error;
pub mod model;
pub mod precision;
mod torch_save;
pub mod weights;

pub use batch::pixel_batch;
pub use checkpoint::{Format, Inspection, LoadOptions};
pub use config::{Activation, ClipConfig, TextConfig, VisionConfig, PRESETS};
pub use device::{cpu_has_native_bf16, device_name, parse_device};
pub use error::{ClipError, Result};
pub use model::{normalize, Clip, LOGIT_SCALE_INIT, LOGIT_SCALE_MAX};
pub use precision::{autocast, Precision};
pub use tch;
pub use weights::resolve_base_model;
