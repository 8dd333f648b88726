use crate::{ClipError, Result};
use tch::Device;

/// Parses a device name: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto`
/// (the first CUDA device when one is usable, else the CPU).
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" | "gpu" => cuda(0, &name),
        _ => match name.strip_prefix("cuda:") {
            Some(n) => cuda(
                n.parse().map_err(|_| ClipError::Device(name.clone()))?,
                &name,
            ),
            None => Err(ClipError::Device(name)),
        },
    }
}

fn cuda(index: usize, name: &str) -> Result<Device> {
    let count = tch::Cuda::device_count() as usize;
    if index >= count {
        return Err(ClipError::Device(format!(
            "{name} (this build sees {count} CUDA device(s){})",
            if tch::Cuda::is_available() {
                ""
            } else {
                "; a CUDA build needs `make setup CUDA=1`"
            }
        )));
    }
    Ok(Device::Cuda(index))
}

/// Whether this CPU multiplies bf16 natively (AVX512-BF16; every CPU with AMX has it too):
/// there bf16 matrix products run at 2-3x the f32 rate (docs/search.md), so inference
/// defaults to bf16.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The name `parse_device` accepts for a device.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        assert!(matches!(parse_device("tpu"), Err(ClipError::Device(_))));
        assert!(matches!(parse_device("cuda:x"), Err(ClipError::Device(_))));
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(parse_device("cuda:0").is_err());
        }
    }
}
