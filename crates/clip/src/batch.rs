//! Input batches as tensors.

use crate::error::{ClipError, Result};
use tch::{Device, Kind, Tensor};

/// Preprocessed images (`3 x S x S` values each, CHW) as one `[N, 3, S, S]` f32 CPU tensor,
/// written in place: the pixels are copied once, not concatenated into a buffer that is then
/// copied again (600 KB an image at 224 px, on the thread that feeds the device). tch has
/// no safe way to write a slice into an existing tensor, hence the one unsafe block.
#[allow(unsafe_code)]
pub fn pixel_batch<P: AsRef<[f32]>>(images: &[P], image_size: i64) -> Result<Tensor> {
    let per = 3 * image_size.max(0) as usize * image_size.max(0) as usize;
    if let Some((i, v)) = images
        .iter()
        .enumerate()
        .find(|(_, v)| v.as_ref().len() != per)
    {
        return Err(ClipError::Config(format!(
            "image {i} has {} values, a {image_size} px model takes {per}",
            v.as_ref().len()
        )));
    }
    let t = Tensor::empty(
        [images.len() as i64, 3, image_size, image_size],
        (Kind::Float, Device::Cpu),
    );
    if per > 0 && !images.is_empty() {
        // SAFETY: `t` is a new contiguous CPU f32 tensor of exactly `images.len() * per`
        // values that nothing else refers to yet; the slice ends with this block.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, images.len() * per) };
        for (d, v) in dst.chunks_exact_mut(per).zip(images) {
            d.copy_from_slice(v.as_ref());
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_land_in_order_and_wrong_sizes_are_refused() {
        let a: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let b: Vec<f32> = (100..112).map(|v| v as f32).collect();
        let t = pixel_batch(&[a.clone(), b.clone()], 2).unwrap();
        assert_eq!(t.size(), [2, 3, 2, 2]);
        let back = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        assert_eq!(back, [a.clone(), b].concat());
        let err = pixel_batch(&[a, vec![0.0; 5]], 2).unwrap_err();
        assert!(err.to_string().contains("image 1 has 5 values"), "{err}");
        assert_eq!(
            pixel_batch::<Vec<f32>>(&[], 2).unwrap().size(),
            [0, 3, 2, 2]
        );
    }
}
