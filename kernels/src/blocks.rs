//! ggml's block layouts, their reference dequantization
//! (`dequantize_row_*` in ggml-quants.c), and the 8-bit activation blocks
//! the kernels multiply them with.

use half::f16;

/// A quantized weight type, in ggml's block layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QType {
    /// 32 values: f16 scale `d`, 32 × i8; `x = d·q`.
    Q8_0,
    /// 32 values: f16 `d`, 16 bytes of nibbles; `x = d·(q − 8)`.
    Q4_0,
    /// 32 values: f16 `d`, f16 min `m`, 16 bytes of nibbles; `x = d·q + m`.
    Q4_1,
    /// 256 values in 8 sub-blocks of 32: f16 `d`, f16 `dmin`, 12 bytes of
    /// 6-bit sub-block scales and mins, 128 bytes of nibbles;
    /// `x = d·sc·q − dmin·m`.
    Q4_K,
    /// 256 values in 16 groups of 16: 128 bytes of low nibbles, 64 bytes
    /// of high 2-bit pairs, 16 × i8 group scales, f16 `d`;
    /// `x = d·sc·(q − 32)`.
    Q6_K,
}

impl QType {
    /// Every type, for tests and listings.
    pub const ALL: [QType; 5] = [
        QType::Q8_0,
        QType::Q4_0,
        QType::Q4_1,
        QType::Q4_K,
        QType::Q6_K,
    ];

    /// Values per block.
    pub const fn block_values(self) -> usize {
        match self {
            QType::Q8_0 | QType::Q4_0 | QType::Q4_1 => 32,
            QType::Q4_K | QType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QType::Q8_0 => 34,
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q4_K => 144,
            QType::Q6_K => 210,
        }
    }

    /// Bytes of a row of `cols` values (`cols` a multiple of the block).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_values() * self.block_bytes()
    }
}

impl std::fmt::Display for QType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QType::Q8_0 => "Q8_0",
            QType::Q4_0 => "Q4_0",
            QType::Q4_1 => "Q4_1",
            QType::Q4_K => "Q4_K",
            QType::Q6_K => "Q6_K",
        })
    }
}

pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K block.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantize whole blocks of `ty` in `data` to f32, appending to `out`.
///
/// # Panics
///
/// If `data` is not a whole number of blocks.
pub fn dequantize(ty: QType, data: &[u8], out: &mut Vec<f32>) {
    let size = ty.block_bytes();
    assert!(
        data.len().is_multiple_of(size),
        "{ty} data must be whole {size}-byte blocks, got {} bytes",
        data.len()
    );
    out.reserve(data.len() / size * ty.block_values());
    for b in data.chunks_exact(size) {
        match ty {
            QType::Q8_0 => {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
            QType::Q4_0 => {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| (f32::from(q & 0xF) - 8.0) * d));
                out.extend(qs.iter().map(|q| (f32::from(q >> 4) - 8.0) * d));
            }
            QType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| f32::from(q & 0xF) * d + m));
                out.extend(qs.iter().map(|q| f32::from(q >> 4) * d + m));
            }
            QType::Q4_K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                for (j, q) in b[16..144].chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
                    out.extend(q.iter().map(|q| d1 * f32::from(q & 0xF) - m1));
                    out.extend(q.iter().map(|q| d2 * f32::from(q >> 4) - m2));
                }
            }
            QType::Q6_K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                let mut y = [0f32; 256];
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let sc = &sc[8 * half..];
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, high: u8| f32::from(((low | (high << 4)) as i8) - 32);
                        let s = |k: usize| d * f32::from(sc[is + k] as i8);
                        y[l] = s(0) * q(ql[l] & 0xF, qh[l] & 3);
                        y[l + 32] = s(2) * q(ql[l + 32] & 0xF, (qh[l] >> 2) & 3);
                        y[l + 64] = s(4) * q(ql[l] >> 4, (qh[l] >> 4) & 3);
                        y[l + 96] = s(6) * q(ql[l + 32] >> 4, (qh[l] >> 6) & 3);
                    }
                }
                out.extend_from_slice(&y);
            }
        }
    }
}

/// Quantize `x` (a multiple of 32 values) to Q8_0 blocks, as ggml's
/// `quantize_row_q8_0_ref` does: for weights loaded from f32/f16 files
/// with `--quantize q8_0`.
///
/// # Panics
///
/// If `x.len()` is not a multiple of 32.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(32), "Q8_0 takes whole blocks of 32");
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// 32 activations quantized to i8 with one f32 scale, and the sum of the
/// quantized values (for the offset of Q4_0 and the min of Q4_1).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8x32 {
    pub qs: [i8; 32],
    pub d: f32,
    pub sum: i32,
}

/// 256 activations quantized to i8 with one f32 scale, and the sums of
/// each 16 (for the mins of Q4_K and the offset of Q6_K).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8x256 {
    pub qs: [i8; 256],
    pub d: f32,
    pub bsums: [i16; 16],
}

/// One row of activations quantized to 8 bits in the blocks a weight type
/// multiplies with: 32 values per block for Q8_0, Q4_0 and Q4_1, 256 for
/// the K-quants.
#[derive(Debug, Clone)]
pub struct Q8Row(pub(crate) Q8Blocks);

#[derive(Debug, Clone)]
pub(crate) enum Q8Blocks {
    /// Blocks of 32.
    B32(Vec<Q8x32>),
    /// Blocks of 256.
    B256(Vec<Q8x256>),
}

/// `d` and the reciprocal that maps `block` onto −127..=127.
fn scale(block: &[f32]) -> (f32, f32) {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

impl Q8Row {
    /// Quantize `x` for a product with `ty` weights.
    ///
    /// # Panics
    ///
    /// If `x.len()` is not a multiple of `ty`'s block.
    pub fn quantize(x: &[f32], ty: QType) -> Q8Row {
        let n = ty.block_values();
        assert!(
            x.len().is_multiple_of(n),
            "{} activations are not whole {ty} blocks of {n}",
            x.len()
        );
        Q8Row(if n == 32 {
            Q8Blocks::B32(
                x.chunks_exact(32)
                    .map(|block| {
                        let (d, id) = scale(block);
                        let mut qs = [0i8; 32];
                        for (q, v) in qs.iter_mut().zip(block) {
                            *q = (v * id).round() as i8;
                        }
                        let sum = qs.iter().map(|&q| i32::from(q)).sum();
                        Q8x32 { qs, d, sum }
                    })
                    .collect(),
            )
        } else {
            Q8Blocks::B256(
                x.chunks_exact(256)
                    .map(|block| {
                        let (d, id) = scale(block);
                        let mut qs = [0i8; 256];
                        for (q, v) in qs.iter_mut().zip(block) {
                            *q = (v * id).round() as i8;
                        }
                        let mut bsums = [0i16; 16];
                        for (s, g) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
                            *s = g.iter().map(|&q| i16::from(q)).sum();
                        }
                        Q8x256 { qs, d, bsums }
                    })
                    .collect(),
            )
        })
    }

    /// The values it stands for, for tests.
    pub fn dequantize(&self) -> Vec<f32> {
        match &self.0 {
            Q8Blocks::B32(blocks) => blocks
                .iter()
                .flat_map(|b| b.qs.iter().map(move |&q| f32::from(q) * b.d))
                .collect(),
            Q8Blocks::B256(blocks) => blocks
                .iter()
                .flat_map(|b| b.qs.iter().map(move |&q| f32::from(q) * b.d))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn deq(ty: QType, b: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        dequantize(ty, b, &mut out);
        out
    }

    #[test]
    fn q8_0_is_scale_times_int() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = deq(QType::Q8_0, &b);
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
    }

    #[test]
    fn q4_0_and_q4_1_nibbles() {
        let mut b = f16_bytes(2.0).to_vec();
        b.extend([0x1F; 16]); // low nibble 15, high nibble 1
        let y = deq(QType::Q4_0, &b);
        assert_eq!((y[0], y[16]), ((15.0 - 8.0) * 2.0, (1.0 - 8.0) * 2.0));

        let mut b = f16_bytes(0.25).to_vec();
        b.extend(f16_bytes(-1.0));
        b.extend([0x3A; 16]); // low 10, high 3
        let y = deq(QType::Q4_1, &b);
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
        let y = deq(QType::Q4_K, &b);
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
        let y = deq(QType::Q6_K, &b);
        // q1 = 1 | 0<<4 = 1 → (1 - 32) with scale sc[0] = 1.
        assert_eq!(y[0], 0.5 * 1.0 * (1.0 - 32.0));
        // q4 = 2 | 3<<4 = 50 → 18 with scale sc[6] = 7.
        assert_eq!(y[96], 0.5 * 7.0 * 18.0);
        // Second half uses scales 8.. : q2 = 1 | 1<<4 = 17 → -15, sc[8+2] = 11.
        assert_eq!(y[128 + 32], 0.5 * 11.0 * -15.0);
    }

    #[test]
    fn q8_0_weights_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let y = deq(QType::Q8_0, &quantize_q8_0(&x));
        let step = 3.0 / 127.0;
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= step * 0.5 + 3e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn activations_keep_block_sums() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) / 7.0).collect();
        let Q8Blocks::B256(blocks) = Q8Row::quantize(&x, QType::Q6_K).0 else {
            panic!("K-quants take blocks of 256")
        };
        let b = &blocks[0];
        for (g, s) in b.bsums.iter().enumerate() {
            let want: i16 = b.qs[16 * g..16 * (g + 1)]
                .iter()
                .map(|&q| i16::from(q))
                .sum();
            assert_eq!(*s, want);
        }
        let Q8Blocks::B32(blocks) = Q8Row::quantize(&x, QType::Q4_1).0 else {
            panic!("Q4_1 takes blocks of 32")
        };
        assert_eq!(blocks.len(), 8);
        assert_eq!(
            blocks[3].sum,
            blocks[3].qs.iter().map(|&q| i32::from(q)).sum::<i32>()
        );
    }
}
