//! Dot products of one weight row (GGUF blocks) with up to four rows of
//! 16-bit activations: a batch unpacks each weight block once per four
//! sequences.
//!
//! Activations are quantized per 32 values to i16 (`d = max|x| / 32767`,
//! 256 times finer than llama.cpp's 8 bits), weights widened from their
//! blocks to i16, and multiplied with `vpmaddwd`: the integer products are
//! exact, so the result is the f32 product of the dequantized weights with
//! activations that moved by at most 1/65534 of their block's largest
//! value. With 8-bit activations SmolLM2-135M's logits move by ~5% of the
//! largest and its greedy answers change; with 16 bits they do not (see
//! the host's engine tests). Each activation row's additions happen in the
//! same order whatever rows share a call: a row's result does not depend
//! on its batch.

use crate::blocks::{QType, f16_at, scale_min_k4};
use crate::dot::Isa;

/// Activation rows one call takes at most: each unpacked weight block
/// serves this many sequences of a batch. Four keeps the accumulators,
/// the unpacked block and the loads within AVX2's 16 registers.
pub(crate) const ROWS: usize = 4;

/// One row of activations quantized to i16 per 32 values.
#[derive(Debug, Clone)]
pub struct Q16Row {
    pub(crate) qs: Vec<i16>,
    /// Scale per 32 values.
    pub(crate) d: Vec<f32>,
    /// Sum of the quantized values per 32 (for Q4_1's and Q4_K's mins).
    pub(crate) sums: Vec<i32>,
}

impl Q16Row {
    /// Quantize `x` (a multiple of 32 values).
    ///
    /// # Panics
    ///
    /// If `x.len()` is not a multiple of 32.
    pub fn quantize(x: &[f32]) -> Q16Row {
        assert!(
            x.len().is_multiple_of(32),
            "{} activations are not whole blocks of 32",
            x.len()
        );
        let mut qs = Vec::with_capacity(x.len());
        let mut d = Vec::with_capacity(x.len() / 32);
        let mut sums = Vec::with_capacity(x.len() / 32);
        for block in x.chunks_exact(32) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 32767.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let start = qs.len();
            qs.extend(block.iter().map(|v| (v * inverse).round() as i16));
            d.push(scale);
            sums.push(qs[start..].iter().map(|&q| i32::from(q)).sum());
        }
        Q16Row { qs, d, sums }
    }

    /// The values it stands for, for tests.
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(32)
            .zip(&self.d)
            .flat_map(|(q, d)| q.iter().map(move |&q| f32::from(q) * d))
            .collect()
    }
}

/// `out[r] = w · xs[r]` for each activation row (1 to [`ROWS`]).
///
/// The caller checks that `isa` is available and that each row holds as
/// many values as `w`.
pub(crate) fn dot_rows(isa: Isa, ty: QType, w: &[u8], xs: &[&Q16Row], out: &mut [f32]) {
    debug_assert!(!xs.is_empty() && xs.len() <= ROWS && out.len() == xs.len());
    match isa {
        Isa::Scalar => {
            for (o, x) in out.iter_mut().zip(xs) {
                *o = scalar(ty, w, x);
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => {
            // SAFETY: every x86 `Isa` includes AVX2, FMA and F16C, and the
            // caller checked it is available.
            unsafe {
                match xs.len() {
                    1 => x86::dot_rows::<1>(ty, w, xs, out),
                    2 => x86::dot_rows::<2>(ty, w, xs, out),
                    3 => x86::dot_rows::<3>(ty, w, xs, out),
                    _ => x86::dot_rows::<4>(ty, w, xs, out),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("{isa:?} is never available here"),
    }
}

/// Each 32 weights of block `b` as integers, with the float scale and
/// (per 32) min of their dequantization: `w = scale·q − min`, or with two
/// scales for Q6_K's groups of 16. Calls `f(offset in block, q, scales,
/// min)`.
fn for_each_32_scalar(ty: QType, b: &[u8], mut f: impl FnMut(usize, [i32; 32], [f32; 2], f32)) {
    let nibbles = |qs: &[u8], shift: i32| -> [i32; 32] {
        let mut q = [0; 32];
        for (i, &byte) in qs.iter().enumerate() {
            q[i] = i32::from(byte & 0xF) - shift;
            q[i + 16] = i32::from(byte >> 4) - shift;
        }
        q
    };
    match ty {
        QType::Q8_0 => {
            let d = f16_at(b, 0);
            let q = std::array::from_fn(|i| i32::from(b[2 + i] as i8));
            f(0, q, [d, d], 0.0);
        }
        QType::Q4_0 => {
            let d = f16_at(b, 0);
            f(0, nibbles(&b[2..18], 8), [d, d], 0.0);
        }
        QType::Q4_1 => {
            let d = f16_at(b, 0);
            f(0, nibbles(&b[4..20], 0), [d, d], -f16_at(b, 2));
        }
        QType::Q4_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            for (c, q) in b[16..144].chunks_exact(32).enumerate() {
                for (j, shift) in [(2 * c, 0), (2 * c + 1, 4)] {
                    let (sc, m) = scale_min_k4(j, &b[4..16]);
                    let s = d * f32::from(sc);
                    let q = std::array::from_fn(|i| i32::from((q[i] >> shift) & 0xF));
                    f(32 * j, q, [s, s], dmin * f32::from(m));
                }
            }
        }
        QType::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                for k in 0..4 {
                    let q = std::array::from_fn(|l| {
                        let (low, high) = match k {
                            0 => (ql[l] & 0xF, qh[l] & 3),
                            1 => (ql[l + 32] & 0xF, (qh[l] >> 2) & 3),
                            2 => (ql[l] >> 4, (qh[l] >> 4) & 3),
                            _ => (ql[l + 32] >> 4, (qh[l] >> 6) & 3),
                        };
                        i32::from(low | (high << 4)) - 32
                    });
                    let g = 8 * half + 2 * k;
                    let s = |g: usize| d * f32::from(sc[g] as i8);
                    f(128 * half + 32 * k, q, [s(g), s(g + 1)], 0.0);
                }
            }
        }
    }
}

fn scalar(ty: QType, w: &[u8], x: &Q16Row) -> f32 {
    let (values, size) = (ty.block_values(), ty.block_bytes());
    let mut sum = 0f32;
    for (i, b) in w.chunks_exact(size).enumerate() {
        for_each_32_scalar(ty, b, |offset, q, scales, min| {
            let start = i * values + offset;
            let a = &x.qs[start..start + 32];
            let (lo, hi) = (0..16, 16..32);
            let dot =
                |r: std::ops::Range<usize>| -> i32 { r.map(|i| q[i] * i32::from(a[i])).sum() };
            let dx = x.d[start / 32];
            sum += dx * (scales[0] * dot(lo) as f32 + scales[1] * dot(hi) as f32);
            sum -= min * dx * x.sums[start / 32] as f32;
        });
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::PREFETCH_BYTES;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;
    use crate::dot::x86::{f16, hsum};

    /// 32 weights as two vectors of 16 × i16 (values 0..16, 16..32), the
    /// scales of each 16 and the min, for each 32 of block `b`.
    #[inline(always)]
    unsafe fn for_each_32(
        ty: QType,
        b: &[u8],
        mut f: impl FnMut(usize, __m256i, __m256i, [f32; 2], f32),
    ) {
        // SAFETY: `b` is one whole block of `ty` and the reads stay in its
        // layout; AVX2 and F16C are the caller's.
        unsafe {
            let m4 = _mm_set1_epi8(0x0F);
            let nibbles = |p: *const u8, shift: i16| {
                let q = _mm_loadu_si128(p.cast());
                let lo = _mm256_cvtepu8_epi16(_mm_and_si128(q, m4));
                let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(q), m4));
                let s = _mm256_set1_epi16(shift);
                (_mm256_sub_epi16(lo, s), _mm256_sub_epi16(hi, s))
            };
            match ty {
                QType::Q8_0 => {
                    let d = f16(b, 0);
                    let q = _mm256_loadu_si256(b.as_ptr().add(2).cast());
                    let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
                    let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(q));
                    f(0, lo, hi, [d, d], 0.0);
                }
                QType::Q4_0 => {
                    let d = f16(b, 0);
                    let (lo, hi) = nibbles(b.as_ptr().add(2), 8);
                    f(0, lo, hi, [d, d], 0.0);
                }
                QType::Q4_1 => {
                    let d = f16(b, 0);
                    let (lo, hi) = nibbles(b.as_ptr().add(4), 0);
                    f(0, lo, hi, [d, d], -f16(b, 2));
                }
                QType::Q4_K => {
                    let (d, dmin) = (f16(b, 0), f16(b, 2));
                    for c in 0..4 {
                        let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c).cast());
                        let m = _mm256_set1_epi8(0x0F);
                        let low = _mm256_and_si256(q, m);
                        let high = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m);
                        for (j, v) in [(2 * c, low), (2 * c + 1, high)] {
                            let (sc, mn) = scale_min_k4(j, &b[4..16]);
                            let s = d * f32::from(sc);
                            let lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v));
                            let hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v));
                            f(32 * j, lo, hi, [s, s], dmin * f32::from(mn));
                        }
                    }
                }
                QType::Q6_K => {
                    let d = f16(b, 208);
                    let sc = &b[192..208];
                    let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
                    let thirty_two = _mm256_set1_epi16(32);
                    for half in 0..2 {
                        let ql = b.as_ptr().add(64 * half);
                        let l0 = _mm256_loadu_si256(ql.cast());
                        let l1 = _mm256_loadu_si256(ql.add(32).cast());
                        let h = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * half).cast());
                        let high = |h: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(h, m2));
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(l0, m4), high(h)),
                            _mm256_or_si256(
                                _mm256_and_si256(l1, m4),
                                high(_mm256_srli_epi16::<2>(h)),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                                high(_mm256_srli_epi16::<4>(h)),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                                high(_mm256_srli_epi16::<6>(h)),
                            ),
                        ];
                        for (k, q) in q.into_iter().enumerate() {
                            let g = 8 * half + 2 * k;
                            let s = |g: usize| d * f32::from(sc[g] as i8);
                            let lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(q));
                            let hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(q));
                            let lo = _mm256_sub_epi16(lo, thirty_two);
                            let hi = _mm256_sub_epi16(hi, thirty_two);
                            f(128 * half + 32 * k, lo, hi, [s(g), s(g + 1)], 0.0);
                        }
                    }
                }
            }
        }
    }

    /// A 32-value block type, unpacked to two vectors of 16 × i16 (values
    /// 0..16 and 16..32), its scale, and its min (`w = d·q + m`).
    trait Block32 {
        const BYTES: usize;
        const HAS_MIN: bool;
        unsafe fn unpack(b: *const u8) -> (__m256i, __m256i, f32, f32);
    }

    /// How far ahead the weights are prefetched, in bytes (measured on
    /// SmolLM2's decode: 2 KiB 98 tok/s, 4 KiB 105, 8 KiB 103).
    pub(crate) const PREFETCH_BYTES: usize = 4096;

    struct Q8_0;
    struct Q4_0;
    struct Q4_1;

    #[inline(always)]
    unsafe fn f16_ptr(p: *const u8) -> f32 {
        // SAFETY: `p` points at 2 readable bytes; F16C.
        unsafe {
            let bits = p.cast::<u16>().read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }
    }

    #[inline(always)]
    unsafe fn nibbles16(p: *const u8) -> (__m256i, __m256i) {
        // SAFETY: `p` points at 16 readable bytes; AVX2.
        unsafe {
            let q = _mm_loadu_si128(p.cast());
            let m4 = _mm_set1_epi8(0x0F);
            (
                _mm256_cvtepu8_epi16(_mm_and_si128(q, m4)),
                _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(q), m4)),
            )
        }
    }

    impl Block32 for Q8_0 {
        const BYTES: usize = 34;
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn unpack(b: *const u8) -> (__m256i, __m256i, f32, f32) {
            // SAFETY: one whole block at `b`; AVX2 and F16C.
            unsafe {
                let lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(2).cast()));
                let hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(18).cast()));
                (lo, hi, f16_ptr(b), 0.0)
            }
        }
    }

    impl Block32 for Q4_0 {
        const BYTES: usize = 18;
        const HAS_MIN: bool = false;
        #[inline(always)]
        unsafe fn unpack(b: *const u8) -> (__m256i, __m256i, f32, f32) {
            // SAFETY: one whole block at `b`; AVX2 and F16C.
            unsafe {
                let (lo, hi) = nibbles16(b.add(2));
                let eight = _mm256_set1_epi16(8);
                let d = f16_ptr(b);
                (
                    _mm256_sub_epi16(lo, eight),
                    _mm256_sub_epi16(hi, eight),
                    d,
                    0.0,
                )
            }
        }
    }

    impl Block32 for Q4_1 {
        const BYTES: usize = 20;
        const HAS_MIN: bool = true;
        #[inline(always)]
        unsafe fn unpack(b: *const u8) -> (__m256i, __m256i, f32, f32) {
            // SAFETY: one whole block at `b`; AVX2 and F16C.
            unsafe {
                let (lo, hi) = nibbles16(b.add(4));
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(b.cast::<i32>().read_unaligned()));
                (
                    lo,
                    hi,
                    _mm_cvtss_f32(dm),
                    _mm_cvtss_f32(_mm_movehdup_ps(dm)),
                )
            }
        }
    }

    /// Blocks of 32 without closures or a type switch in the loop.
    #[inline(always)]
    unsafe fn dot32<B: Block32, const R: usize>(w: &[u8], xs: &[&Q16Row], out: &mut [f32]) {
        let blocks = w.len() / B::BYTES;
        let x: [&Q16Row; R] = std::array::from_fn(|r| xs[r]);
        for x in x {
            assert!(
                x.qs.len() >= blocks * 32 && x.d.len() >= blocks && x.sums.len() >= blocks,
                "an activation row is too short"
            );
        }
        // SAFETY: block `i` lies inside `w` and values 32i..32i+32 inside
        // each row (checked above); the features are the caller's.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut mins = [0f32; R];
            let base = w.as_ptr();
            for i in 0..blocks {
                // The weights stream from memory once: ask for them ahead
                // (past the row's end is the next row, or harmless).
                _mm_prefetch::<_MM_HINT_T0>(
                    base.wrapping_add(i * B::BYTES + PREFETCH_BYTES).cast(),
                );
                let (lo, hi, d, m) = B::unpack(base.add(i * B::BYTES));
                for r in 0..R {
                    let a = x[r].qs.as_ptr().add(32 * i);
                    let dx = *x[r].d.get_unchecked(i);
                    let p = _mm256_add_epi32(
                        _mm256_madd_epi16(lo, _mm256_loadu_si256(a.cast())),
                        _mm256_madd_epi16(hi, _mm256_loadu_si256(a.add(16).cast())),
                    );
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * dx), acc[r]);
                    if B::HAS_MIN {
                        mins[r] += m * dx * *x[r].sums.get_unchecked(i) as f32;
                    }
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) + mins[r];
            }
        }
    }

    /// # Safety
    ///
    /// The CPU must have AVX2, FMA and F16C; `w` is whole `ty` blocks and
    /// each of the `R` rows of `xs` holds at least as many values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows<const R: usize>(
        ty: QType,
        w: &[u8],
        xs: &[&Q16Row],
        out: &mut [f32],
    ) {
        // SAFETY: the features are this function's; the rest is checked
        // by the callees.
        unsafe {
            match ty {
                QType::Q8_0 => dot32::<Q8_0, R>(w, xs, out),
                QType::Q4_0 => dot32::<Q4_0, R>(w, xs, out),
                QType::Q4_1 => dot32::<Q4_1, R>(w, xs, out),
                QType::Q4_K | QType::Q6_K => dot_rows_k::<R>(ty, w, xs, out),
            }
        }
    }

    /// K-quants: each 32 of a super-block through `for_each_32`.
    #[inline(always)]
    unsafe fn dot_rows_k<const R: usize>(ty: QType, w: &[u8], xs: &[&Q16Row], out: &mut [f32]) {
        let (values, size) = (ty.block_values(), ty.block_bytes());
        let blocks = w.len() / size;
        for x in xs {
            assert!(
                x.qs.len() >= blocks * values,
                "an activation row is too short"
            );
        }
        // SAFETY: the reads stay inside `w`'s blocks and the rows' first
        // `blocks · values` values (checked above).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut mins = [0f32; R];
            for (i, b) in w.chunks_exact(size).enumerate() {
                for_each_32(ty, b, |offset, lo, hi, scales, min| {
                    let start = i * values + offset;
                    for r in 0..R {
                        let x = xs[r];
                        let a = x.qs.as_ptr().add(start);
                        let dx = *x.d.get_unchecked(start / 32);
                        let p_lo = _mm256_madd_epi16(lo, _mm256_loadu_si256(a.cast()));
                        let p_hi = _mm256_madd_epi16(hi, _mm256_loadu_si256(a.add(16).cast()));
                        if scales[0] == scales[1] {
                            let p = _mm256_cvtepi32_ps(_mm256_add_epi32(p_lo, p_hi));
                            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * scales[0]), p, acc[r]);
                        } else {
                            // Q6_K: p_lo holds values 0..16, p_hi 16..32,
                            // each 16 with its own scale.
                            let p = _mm256_cvtepi32_ps(p_lo);
                            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * scales[0]), p, acc[r]);
                            let p = _mm256_cvtepi32_ps(p_hi);
                            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dx * scales[1]), p, acc[r]);
                        }
                        if min != 0.0 {
                            mins[r] += min * dx * *x.sums.get_unchecked(start / 32) as f32;
                        }
                    }
                });
            }
            for r in 0..R {
                out[r] = hsum(acc[r]) - mins[r];
            }
        }
    }
}
