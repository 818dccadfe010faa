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

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_is_scale_times_int() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize(TensorType::Q8_0, &b, 32).unwrap();
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
    }

    #[test]
    fn q4_0_and_q4_1_nibbles() {
        let mut b = f16_bytes(2.0).to_vec();
        b.extend([0x1F; 16]); // low nibble 15, high nibble 1
        let y = dequantize(TensorType::Q4_0, &b, 32).unwrap();
        assert_eq!((y[0], y[16]), ((15.0 - 8.0) * 2.0, (1.0 - 8.0) * 2.0));

        let mut b = f16_bytes(0.25).to_vec();
        b.extend(f16_bytes(-1.0));
        b.extend([0x3A; 16]); // low 10, high 3
        let y = dequantize(TensorType::Q4_1, &b, 32).unwrap();
        assert_eq!((y[0], y[31]), (10.0 * 0.25 - 1.0, 3.0 * 0.25 - 1.0));
    }

    #[test]
    fn q4_k_uses_sub_block_scales_and_mins() {
        let mut b = f16_bytes(1.0).to_vec();
        b.extend(f16_bytes(0.5));
        // Sub-blocks 0..4: scale 2, min 4; 4..8: scale 3 | 0, min 1 | 0.
        let mut scales = [0u8; 12];
        scales[..4].fill(2);
        scales[4..8].fill(4);
        scales[8..12].fill(0x13); // low nibble scale 3, high nibble min 1
        b.extend(scales);
        b.extend([0x21; 128]); // low nibble 1, high nibble 2
        let y = dequantize(TensorType::Q4K, &b, 256).unwrap();
        assert_eq!(y[0], 2.0 * 1.0 - 0.5 * 4.0); // sub-block 0, low nibble
        assert_eq!(y[32], 2.0 * 2.0 - 0.5 * 4.0); // sub-block 1, high nibble
        assert_eq!(y[255], 3.0 * 2.0 - 0.5 * 1.0); // sub-block 7, high nibble
    }

    #[test]
    fn q6_k_six_bit_values() {
        let mut b = vec![0u8; 210];
        b[..128].fill(0x21); // ql: low 1, high 2
        b[128..192].fill(0b11_10_01_00); // qh: 0, 1, 2, 3 for q1..q4
        for (i, s) in b[192..208].iter_mut().enumerate() {
            *s = (i as i8 + 1) as u8;
        }
        b[208..210].copy_from_slice(&f16_bytes(0.5));
        let y = dequantize(TensorType::Q6K, &b, 256).unwrap();
        // q1 = 1 | 0<<4 = 1 → (1 - 32) with scale sc[0] = 1.
        assert_eq!(y[0], 0.5 * 1.0 * (1.0 - 32.0));
        // q4 = 2 | 3<<4 = 50 → 18 with scale sc[6] = 7.
        assert_eq!(y[96], 0.5 * 7.0 * 18.0);
        // Second half uses scales 8.. : q2 = 1 | 1<<4 = 17 → -15, sc[8+2] = 11.
        assert_eq!(y[128 + 32], 0.5 * 11.0 * -15.0);
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
