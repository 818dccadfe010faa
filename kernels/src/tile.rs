//! Batches with f32 activations: a few weight rows are dequantized to f32
//! at a time (into a buffer that stays in L1) and multiplied by every
//! activation row in register tiles, [`W`] weight rows by [`X`]
//! activation rows, one vector accumulator per pair (512-bit registers
//! where the CPU has AVX-512, else AVX2's 256).
//!
//! Why: with many rows (a batch of sequences, a prompt's prefill) the
//! integer kernels spend most of their time re-scaling each 32-value
//! block for each row; here a block is unpacked once for the whole batch
//! and the inner loop is loads and FMAs only. The activations are not
//! rounded at all, so a product is the f32 product of the dequantized
//! weights.
//!
//! Each (weight row, activation row) pair is computed by the same
//! operations in the same order whatever the tile it falls in: one
//! accumulator of `LANES` floats over the columns, left to right, then
//! the same horizontal sum. A row's result does not depend on its batch.

use crate::blocks::QType;
use crate::dot::Isa;

/// Weight rows per register tile.
pub(crate) const W: usize = 3;
/// Activation rows per register tile: W·X accumulators, W weight vectors
/// and one activation vector fit AVX2's 16 registers.
pub(crate) const X: usize = 4;

/// `out[i * n + j] = w[i] · x[j]` for `wr ≤ W` weight rows `w` (`[wr,
/// cols]`, f32) and `n` activation rows `x` (`[n, cols]`).
pub(crate) fn tile(
    isa: Isa,
    w: &[f32],
    wr: usize,
    x: &[f32],
    n: usize,
    cols: usize,
    out: &mut [f32],
) {
    debug_assert!((1..=W).contains(&wr) && w.len() == wr * cols);
    debug_assert!(x.len() == n * cols && out.len() == wr * n);
    debug_assert!(cols.is_multiple_of(8));
    let mut j = 0;
    while j < n {
        let xr = (n - j).min(X);
        let xs = &x[j * cols..(j + xr) * cols];
        let mut sums = [[0f32; X]; W];
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni if x86::has_avx512f() && cols.is_multiple_of(16) => {
                // SAFETY: AVX-512F was detected (and AVX-512 VNNI implies
                // the rest of x86-64-v4 on every CPU that has it); the
                // shapes are checked above.
                unsafe { x86::dispatch512(w, wr, xs, xr, cols, &mut sums) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => {
                // SAFETY: every x86 `Isa` includes AVX2 and FMA, and the
                // caller checked it is available; the shapes are checked
                // above (and the kernel indexes within them).
                unsafe { x86::dispatch(w, wr, xs, xr, cols, &mut sums) }
            }
            _ => scalar(w, wr, xs, xr, cols, &mut sums),
        }
        for (i, row) in sums.iter().enumerate().take(wr) {
            out[i * n + j..i * n + j + xr].copy_from_slice(&row[..xr]);
        }
        j += xr;
    }
}

/// Dequantize whole blocks of `ty` to f32, appending to `out`: the values
/// of [`crate::dequantize`], bit for bit, with SIMD for the 32-value types
/// on x86 (unpacking is most of a batch's cost once the products are
/// cheap).
pub(crate) fn dequantize(isa: Isa, ty: QType, data: &[u8], out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && matches!(ty, QType::Q8_0 | QType::Q4_0 | QType::Q4_1) {
        // SAFETY: every x86 `Isa` but `Scalar` includes AVX2 and F16C,
        // and the caller checked it is available.
        unsafe { x86::dequantize(ty, data, out) };
        return;
    }
    let _ = isa;
    crate::blocks::dequantize(ty, data, out);
}

/// The portable path: eight lanes, as AVX2's, without FMA.
fn scalar(w: &[f32], wr: usize, x: &[f32], xr: usize, cols: usize, sums: &mut [[f32; X]; W]) {
    for (i, w) in w.chunks_exact(cols).take(wr).enumerate() {
        for (j, x) in x.chunks_exact(cols).take(xr).enumerate() {
            let mut acc = [0f32; 8];
            for (w, x) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += w[l] * x[l];
                }
            }
            sums[i][j] =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{W, X};
    use crate::blocks::QType;
    use crate::dot::x86::{f16, hsum};

    /// # Safety
    ///
    /// AVX2 and F16C; `ty` is Q8_0, Q4_0 or Q4_1.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn dequantize(ty: QType, data: &[u8], out: &mut Vec<f32>) {
        let size = ty.block_bytes();
        assert!(
            data.len().is_multiple_of(size),
            "{ty} data must be whole {size}-byte blocks, got {} bytes",
            data.len()
        );
        let blocks = data.len() / size;
        out.reserve(blocks * 32);
        // SAFETY: each block's reads are within `data` (whole blocks,
        // asserted); the writes are the 32 values per block reserved
        // above, all written before `set_len`.
        unsafe {
            let mut dst = out.as_mut_ptr().add(out.len());
            for b in data.chunks_exact(size) {
                match ty {
                    QType::Q8_0 => {
                        let d = _mm256_set1_ps(f16(b, 0));
                        for i in 0..4 {
                            let q = _mm_loadl_epi64(b.as_ptr().add(2 + 8 * i).cast());
                            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                            _mm256_storeu_ps(dst.add(8 * i), _mm256_mul_ps(v, d));
                        }
                    }
                    QType::Q4_0 | QType::Q4_1 => {
                        let offset = if ty == QType::Q4_0 { 2 } else { 4 };
                        let d = f16(b, 0);
                        let q = _mm_loadu_si128(b.as_ptr().add(offset).cast());
                        let m4 = _mm_set1_epi8(0x0F);
                        let lo = _mm_and_si128(q, m4);
                        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m4);
                        let d = _mm256_set1_ps(d);
                        let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
                        for (i, part) in parts.into_iter().enumerate() {
                            let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
                            let v = if ty == QType::Q4_0 {
                                _mm256_mul_ps(_mm256_sub_ps(v, _mm256_set1_ps(8.0)), d)
                            } else {
                                _mm256_add_ps(_mm256_mul_ps(v, d), _mm256_set1_ps(f16(b, 2)))
                            };
                            _mm256_storeu_ps(dst.add(8 * i), v);
                        }
                    }
                    QType::Q4_K | QType::Q6_K => unreachable!("dequantized by the portable path"),
                }
                dst = dst.add(32);
            }
            out.set_len(out.len() + blocks * 32);
        }
    }

    /// Whether the CPU has AVX-512F (detected once).
    pub(super) fn has_avx512f() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }

    /// `kernel::<wr, xr>` for the tile's actual shape.
    macro_rules! by_shape {
        ($kernel:ident, $wr:expr, $xr:expr, $args:tt) => {
            match ($wr, $xr) {
                (3, 4) => $kernel::<3, 4> $args,
                (3, 3) => $kernel::<3, 3> $args,
                (3, 2) => $kernel::<3, 2> $args,
                (3, _) => $kernel::<3, 1> $args,
                (2, 4) => $kernel::<2, 4> $args,
                (2, 3) => $kernel::<2, 3> $args,
                (2, 2) => $kernel::<2, 2> $args,
                (2, _) => $kernel::<2, 1> $args,
                (_, 4) => $kernel::<1, 4> $args,
                (_, 3) => $kernel::<1, 3> $args,
                (_, 2) => $kernel::<1, 2> $args,
                (_, _) => $kernel::<1, 1> $args,
            }
        };
    }

    /// # Safety
    ///
    /// AVX2 and FMA; `w` holds `wr` rows and `x` holds `xr` rows of
    /// `cols` values, `cols` a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dispatch(
        w: &[f32],
        wr: usize,
        x: &[f32],
        xr: usize,
        cols: usize,
        sums: &mut [[f32; X]; W],
    ) {
        // SAFETY: as this function's.
        unsafe { by_shape!(kernel, wr, xr, (w, x, cols, sums)) }
    }

    /// # Safety
    ///
    /// AVX-512F; `w` holds `wr` rows and `x` holds `xr` rows of `cols`
    /// values, `cols` a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dispatch512(
        w: &[f32],
        wr: usize,
        x: &[f32],
        xr: usize,
        cols: usize,
        sums: &mut [[f32; X]; W],
    ) {
        // SAFETY: as this function's.
        unsafe { by_shape!(kernel512, wr, xr, (w, x, cols, sums)) }
    }

    /// The register-tile kernel for one vector width: `WR × XR`
    /// accumulators of `$lanes` floats over the columns, left to right,
    /// then each reduced to its sum. One definition for both widths, so
    /// that they cannot drift apart.
    macro_rules! tile_kernel {
        ($name:ident, $vec:ty, $lanes:literal, $zero:ident, $load:ident, $fmadd:ident, $sum:path) => {
            #[inline(always)]
            unsafe fn $name<const WR: usize, const XR: usize>(
                w: &[f32],
                x: &[f32],
                cols: usize,
                sums: &mut [[f32; X]; W],
            ) {
                assert!(
                    w.len() >= WR * cols && x.len() >= XR * cols && cols.is_multiple_of($lanes)
                );
                // SAFETY: every load is of `$lanes` floats at k < cols
                // within a row of `cols` (asserted above); the features
                // are the caller's.
                unsafe {
                    let (w, x) = (w.as_ptr(), x.as_ptr());
                    let mut acc = [[$zero(); XR]; WR];
                    let mut k = 0;
                    while k < cols {
                        let wv: [$vec; WR] = std::array::from_fn(|i| $load(w.add(i * cols + k)));
                        for j in 0..XR {
                            let xv = $load(x.add(j * cols + k));
                            for (a, w) in acc.iter_mut().zip(&wv) {
                                a[j] = $fmadd(*w, xv, a[j]);
                            }
                        }
                        k += $lanes;
                    }
                    for (sums, acc) in sums.iter_mut().zip(&acc) {
                        for (s, a) in sums.iter_mut().zip(acc) {
                            *s = $sum(*a);
                        }
                    }
                }
            }
        };
    }

    tile_kernel!(
        kernel,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        hsum
    );
    tile_kernel!(
        kernel512,
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_reduce_add_ps
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_dequantization_is_the_portable_one_bit_for_bit() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for ty in QType::ALL {
            let mut data = Vec::new();
            for block in 0..40 {
                let start = data.len();
                for _ in 0..ty.block_bytes() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    data.push(state as u8);
                }
                // Finite f16 scales (and Q4_1's min) in front.
                let scale = half::f16::from_f32(0.001 * (block as f32 + 1.0));
                data[start..start + 2].copy_from_slice(&scale.to_le_bytes());
                if ty == QType::Q4_1 {
                    let min = half::f16::from_f32(-0.05 * block as f32);
                    data[start + 2..start + 4].copy_from_slice(&min.to_le_bytes());
                }
            }
            let mut expected = Vec::new();
            crate::blocks::dequantize(ty, &data, &mut expected);
            for &isa in Isa::available() {
                let mut got = vec![7.0];
                dequantize(isa, ty, &data, &mut got);
                assert_eq!(got[0], 7.0, "appends");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got[1..]), bits(&expected), "{ty} on {}", isa.name());
            }
        }
    }
}
