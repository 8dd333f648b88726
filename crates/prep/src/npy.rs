//! Minimal `.npy` (NumPy format 1.0) reading and writing for little-endian C-order arrays:
//! enough to hand tensors to NumPy and to read reference tensors in tests.

use crate::error::{PrepError, Result};

/// Element types this module reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    U8,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F16 => "<f2",
            Dtype::U8 => "|u1",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
            Dtype::U8 => 1,
        }
    }
}

/// Serialises an `f32` array of `shape` as `.npy` bytes.
pub fn to_npy_f32(data: &[f32], shape: &[usize]) -> Result<Vec<u8>> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(PrepError::Npy {
            name: "<output>".into(),
            reason: format!("shape {shape:?} needs {n} values, got {}", data.len()),
        });
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_txt}, }}",
        Dtype::F32.descr()
    );
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64
    // and ending in a newline, as the format requires.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// A parsed `.npy` array, converted to `f32`.
#[derive(Debug, Clone)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: Vec<f32>,
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Parses `.npy` bytes holding little-endian `f4`, `f2` or `u1` in C order.
pub fn from_npy(bytes: &[u8], name: &str) -> Result<NpyArray> {
    let bad = |reason: String| PrepError::Npy {
        name: name.to_string(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header".into()))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[i..].trim_start())
    };
    let descr = field("descr").ok_or_else(|| bad("no descr".into()))?;
    let dtype = [Dtype::F32, Dtype::F16, Dtype::U8]
        .into_iter()
        .find(|d| descr.starts_with(&format!("'{}'", d.descr())))
        .ok_or_else(|| bad(format!("unsupported dtype in {header}")))?;
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad("Fortran order is not supported".into()));
    }
    let shape_txt = field("shape").ok_or_else(|| bad("no shape".into()))?;
    let close = shape_txt.find(')').ok_or_else(|| bad("bad shape".into()))?;
    let shape: Vec<usize> = shape_txt[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(format!("bad dimension {s:?}"))))
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    if body.len() != n * dtype.size() {
        return Err(bad(format!(
            "{} data bytes for shape {shape:?} of {}",
            body.len(),
            dtype.descr()
        )));
    }
    let data = match dtype {
        Dtype::F32 => body
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => body
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        Dtype::U8 => body.iter().map(|&b| f32::from(b)).collect(),
    };
    Ok(NpyArray { shape, dtype, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = to_npy_f32(&data, &[2, 3, 4]).unwrap();
        assert_eq!((bytes.len() - data.len() * 4) % 64, 0);
        let back = from_npy(&bytes, "t").unwrap();
        assert_eq!(back.shape, vec![2, 3, 4]);
        assert_eq!(back.data, data);
        assert!(to_npy_f32(&data, &[5]).is_err());
        assert!(from_npy(b"nope", "t").is_err());
    }

    #[test]
    fn f16_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    }
}
