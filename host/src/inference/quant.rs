//! Dequantization of GGUF tensor data to f32: F32, F16 and BF16 here,
//! Q4_0, Q4_1, Q8_0, Q4_K and Q6_K by [`tessera_kernels::dequantize`]
//! (ggml's `dequantize_row_*`). Other types are refused by name.

use half::{bf16, f16};

use tessera_kernels::QType;

use super::gguf::TensorType;

/// Why data cannot be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The tensor type has no dequantizer here.
    #[error(
        "tensor type {0} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)"
    )]
    Unsupported(TensorType),
    /// The byte count does not match the element count.
    #[error("{ty} data for {elements} elements must be {expected} bytes, got {actual}")]
    Size {
        /// The type.
        ty: TensorType,
        /// Elements asked for.
        elements: usize,
        /// Bytes that many elements take.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize `elements` values of type `ty` from `data`.
pub fn dequantize(ty: TensorType, data: &[u8], elements: usize) -> Result<Vec<f32>, QuantError> {
    let (per_block, block_bytes) = ty.block_layout().ok_or(QuantError::Unsupported(ty))?;
    let (per_block, block_bytes) = (per_block as usize, block_bytes as usize);
    let expected = elements.div_ceil(per_block) * block_bytes;
    if data.len() != expected || !elements.is_multiple_of(per_block) {
        return Err(QuantError::Size {
            ty,
            elements,
            expected,
            actual: data.len(),
        });
    }
    let mut out = Vec::with_capacity(elements);
    match ty {
        TensorType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        TensorType::F16 => out.extend(data.chunks_exact(2).map(|c| f16_at(c, 0))),
        TensorType::BF16 => out.extend(
            data.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        other => {
            let ty = match other {
                TensorType::Q4_0 => QType::Q4_0,
                TensorType::Q4_1 => QType::Q4_1,
                TensorType::Q8_0 => QType::Q8_0,
                TensorType::Q4K => QType::Q4_K,
                TensorType::Q6K => QType::Q6_K,
                other => return Err(QuantError::Unsupported(other)),
            };
            debug_assert_eq!(
                (ty.block_values(), ty.block_bytes()),
                (per_block, block_bytes)
            );
            tessera_kernels::dequantize(ty, data, &mut out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_and_quantized_blocks() {
        let mut b = f16::from_f32(-1.5).to_le_bytes().to_vec();
        b.extend(bf16::from_f32(0.25).to_le_bytes());
        assert_eq!(dequantize(TensorType::F16, &b[..2], 1).unwrap(), [-1.5]);
        assert_eq!(dequantize(TensorType::BF16, &b[2..], 1).unwrap(), [0.25]);
        // The block types go to tessera-kernels (tested there).
        let mut q = f16::from_f32(0.5).to_le_bytes().to_vec();
        q.extend([2u8; 32]);
        assert_eq!(dequantize(TensorType::Q8_0, &q, 32).unwrap(), [1.0; 32]);
    }

    #[test]
    fn wrong_sizes_and_types_are_refused() {
        let err = dequantize(TensorType::Q8_0, &[0; 33], 32).unwrap_err();
        assert!(
            err.to_string().contains("must be 34 bytes, got 33"),
            "{err}"
        );
        let err = dequantize(TensorType::Q5K, &[0; 176], 256).unwrap_err();
        assert!(err.to_string().contains("Q5K is not supported"), "{err}");
    }
}
