//! Compute precision and autocast: one definition for training and inference, so that a
//! query and a stored vector are computed under the same rules, and every flag, config key
//! and setting accepts the same names.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use tch::Device;

/// Compute precision. Weights (and, in training, optimizer state) always stay f32; only
/// the matrix products run lower, inside [`autocast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    Fp32,
    /// Autocast to bfloat16 (CUDA, or CPU).
    Bf16,
    /// Autocast to float16 (CUDA only; training adds dynamic loss scaling).
    Fp16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one spelling table: open_clip's names (`amp`, `amp_bf16`) and torch's dtype names
/// are accepted besides ours, in any case.
impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" | "amp_bf16" => Ok(Precision::Bf16),
            "fp16" | "float16" | "amp" => Ok(Precision::Fp16),
            _ => Err(format!("must be \"fp32\", \"bf16\" or \"fp16\", got {s:?}")),
        }
    }
}

impl Serialize for Precision {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Precision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[allow(unsafe_code)]
mod ffi {
    extern "C" {
        pub fn cliptune_autocast_enter(device: i32, dtype: i32) -> i32;
        pub fn cliptune_autocast_exit(device: i32, prev: i32) -> i32;
    }

    // SAFETY (both): the shim takes plain integers, touches only libtorch's thread-local
    // autocast state and catches every C++ exception.
    pub fn enter(device: i32, dtype: i32) -> i32 {
        unsafe { cliptune_autocast_enter(device, dtype) }
    }

    pub fn exit(device: i32, prev: i32) -> i32 {
        unsafe { cliptune_autocast_exit(device, prev) }
    }
}

/// Runs `f` under autocast to `precision` on `device` (no autocast for fp32).
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    let dtype = match precision {
        Precision::Fp32 => return f(),
        Precision::Fp16 => 0,
        Precision::Bf16 => 1,
    };
    let dev = i32::from(device.is_cuda());
    let prev = ffi::enter(dev, dtype);
    assert!(prev >= 0, "libtorch refused to enable autocast");
    struct Exit(i32, i32);
    impl Drop for Exit {
        fn drop(&mut self) {
            ffi::exit(self.0, self.1);
        }
    }
    let _guard = Exit(dev, prev);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn cpu_bf16_autocast_runs_matmuls_in_bf16_and_restores() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let inside = autocast(Precision::Bf16, Device::Cpu, || a.matmul(&a).kind());
        assert_eq!(inside, Kind::BFloat16);
        assert_eq!(a.matmul(&a).kind(), Kind::Float, "autocast left enabled");
        let nested = autocast(Precision::Bf16, Device::Cpu, || {
            autocast(Precision::Bf16, Device::Cpu, || ());
            a.matmul(&a).kind()
        });
        assert_eq!(nested, Kind::BFloat16);
    }

    #[test]
    fn one_spelling_table_for_every_parser() {
        for (s, p) in [
            ("fp32", Precision::Fp32),
            ("Float32", Precision::Fp32),
            ("bf16", Precision::Bf16),
            ("amp_bf16", Precision::Bf16),
            ("BFLOAT16", Precision::Bf16),
            ("fp16", Precision::Fp16),
            ("amp", Precision::Fp16),
        ] {
            assert_eq!(s.parse::<Precision>(), Ok(p), "{s}");
        }
        let e = "fp8".parse::<Precision>().unwrap_err();
        assert!(e.contains("\"fp8\""), "{e}");
        let json = serde_json::to_string(&Precision::Bf16).unwrap();
        assert_eq!(json, "\"bf16\"");
        assert_eq!(
            serde_json::from_str::<Precision>("\"amp\"").unwrap(),
            Precision::Fp16
        );
        assert!(serde_json::from_str::<Precision>("\"half\"").is_err());
    }
}
