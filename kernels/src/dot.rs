//! Dot products of one weight row (GGUF blocks) with one row of 8-bit
//! activations, per instruction set.
//!
//! Every product is a sum over blocks of `d_w · d_a · Σ q_w·q_a` plus the
//! block's offset or minimum times `d_a · Σ q_a`; the integer sums are the
//! same on every path, so the paths differ only in the order of their f32
//! additions. The x86 paths multiply unsigned weight nibbles by signed
//! activations 32 bytes at a time: AVX2 with `vpmaddubsw` + `vpmaddwd`
//! (llama.cpp's kernels), AVX-512 VNNI and AVX-VNNI with `vpdpbusd`.

use crate::blocks::{Q8Blocks, Q8Row, Q8x32, Q8x256, QType, f16_at, scale_min_k4};

/// An instruction set the kernels can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust: any CPU.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64-v3).
    Avx2,
    /// AVX2 with the 256-bit VNNI dot product (`avxvnni`).
    AvxVnni,
    /// AVX-512 VNNI on 256-bit registers (`avx512vnni` + `avx512vl`).
    Avx512Vnni,
}

impl Isa {
    /// Every path this CPU can run, portable first (detected once).
    pub fn available() -> &'static [Isa] {
        static AVAILABLE: std::sync::OnceLock<Vec<Isa>> = std::sync::OnceLock::new();
        AVAILABLE.get_or_init(detect)
    }

    /// The fastest path this CPU can run.
    pub fn best() -> Isa {
        // VNNI's single instruction beats AVX2's pair; either VNNI
        // encoding runs the same 256-bit operation.
        [Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2]
            .into_iter()
            .find(|isa| Isa::available().contains(isa))
            .unwrap_or(Isa::Scalar)
    }

    /// A name for logs and bench output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

fn detect() -> Vec<Isa> {
    {
        let mut isas = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            if avx2 {
                isas.push(Isa::Avx2);
                if std::arch::is_x86_feature_detected!("avxvnni") {
                    isas.push(Isa::AvxVnni);
                }
                if std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    isas.push(Isa::Avx512Vnni);
                }
            }
        }
        isas
    }
}

/// The dot product of the weight row `w` (whole `ty` blocks) with `a`.
///
/// # Panics
///
/// If `a` is not quantized for `ty`, has fewer blocks than `w`, or `isa`
/// is not available on this CPU.
pub(crate) fn dot(isa: Isa, ty: QType, w: &[u8], a: &Q8Row) -> f32 {
    let blocks = w.len() / ty.block_bytes();
    match (&a.0, ty) {
        (Q8Blocks::B32(a), QType::Q8_0 | QType::Q4_0 | QType::Q4_1) => {
            let a = &a[..blocks];
            match isa {
                Isa::Scalar => scalar::dot32(ty, w, a),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => {
                    // SAFETY: the CPU has the features `isa` names: every
                    // caller checked it against `Isa::available`.
                    unsafe { x86::dot32(isa, ty, w, a) }
                }
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("{isa:?} is never available here"),
            }
        }
        (Q8Blocks::B256(a), QType::Q4_K | QType::Q6_K) => {
            let a = &a[..blocks];
            match isa {
                Isa::Scalar => scalar::dot256(ty, w, a),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => {
                    // SAFETY: as above.
                    unsafe { x86::dot256(isa, ty, w, a) }
                }
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("{isa:?} is never available here"),
            }
        }
        _ => panic!("activations are not quantized for {ty}"),
    }
}

mod scalar {
    use super::*;

    fn sum_products(w: impl Iterator<Item = i32>, a: &[i8]) -> i32 {
        w.zip(a).map(|(w, &a)| w * i32::from(a)).sum()
    }

    pub(super) fn dot32(ty: QType, w: &[u8], a: &[Q8x32]) -> f32 {
        let mut sum = 0f32;
        for (b, a) in w.chunks_exact(ty.block_bytes()).zip(a) {
            sum += match ty {
                QType::Q8_0 => {
                    let q = b[2..34].iter().map(|&q| i32::from(q as i8));
                    f16_at(b, 0) * a.d * sum_products(q, &a.qs) as f32
                }
                QType::Q4_0 => {
                    let qs = &b[2..18];
                    let q = qs.iter().map(|q| i32::from(q & 0xF));
                    let q = q.chain(qs.iter().map(|q| i32::from(q >> 4)));
                    f16_at(b, 0) * a.d * (sum_products(q, &a.qs) - 8 * a.sum) as f32
                }
                QType::Q4_1 => {
                    let qs = &b[4..20];
                    let q = qs.iter().map(|q| i32::from(q & 0xF));
                    let q = q.chain(qs.iter().map(|q| i32::from(q >> 4)));
                    f16_at(b, 0) * a.d * sum_products(q, &a.qs) as f32
                        + f16_at(b, 2) * a.d * a.sum as f32
                }
                _ => unreachable!("{ty} has blocks of 256"),
            };
        }
        sum
    }

    pub(super) fn dot256(ty: QType, w: &[u8], a: &[Q8x256]) -> f32 {
        let mut sum = 0f32;
        for (b, a) in w.chunks_exact(ty.block_bytes()).zip(a) {
            sum += match ty {
                QType::Q4_K => {
                    let scales = &b[4..16];
                    let (mut sumi, mut mins) = (0i32, 0i32);
                    for (c, q) in b[16..144].chunks_exact(32).enumerate() {
                        for (j, shift) in [(2 * c, 0), (2 * c + 1, 4)] {
                            let (sc, m) = scale_min_k4(j, scales);
                            let q = q.iter().map(|q| i32::from((q >> shift) & 0xF));
                            sumi += i32::from(sc) * sum_products(q, &a.qs[32 * j..]);
                            let bsum = i32::from(a.bsums[2 * j]) + i32::from(a.bsums[2 * j + 1]);
                            mins += i32::from(m) * bsum;
                        }
                    }
                    a.d * (f16_at(b, 0) * sumi as f32 - f16_at(b, 2) * mins as f32)
                }
                QType::Q6_K => {
                    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                    let mut sumi = 0i32;
                    for half in 0..2 {
                        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                        let a = &a.qs[128 * half..];
                        for l in 0..32 {
                            let q = [
                                (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                                (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                            ];
                            for (k, q) in q.into_iter().enumerate() {
                                let s = i32::from(sc[8 * half + 2 * k + l / 16] as i8);
                                sumi += s * (i32::from(q) - 32) * i32::from(a[32 * k + l]);
                            }
                        }
                    }
                    f16_at(b, 208) * a.d * sumi as f32
                }
                _ => unreachable!("{ty} has blocks of 32"),
            };
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// `u8 × i8` products of 32 bytes summed per 4 into 8 × i32, the low
    /// 16 bytes' lanes scaled by `lo` and the high 16 bytes' by `hi`.
    trait Udot {
        unsafe fn udot(u: __m256i, s: __m256i, lo: i32, hi: i32) -> __m256i;
    }

    struct Avx2;
    struct AvxVnni;
    struct Avx512Vnni;

    impl Udot for Avx2 {
        #[inline(always)]
        unsafe fn udot(u: __m256i, s: __m256i, lo: i32, hi: i32) -> __m256i {
            // SAFETY: only called from functions compiled for AVX2.
            unsafe {
                let scale = _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16));
                _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale)
            }
        }
    }

    impl Udot for AvxVnni {
        #[inline(always)]
        unsafe fn udot(u: __m256i, s: __m256i, lo: i32, hi: i32) -> __m256i {
            // SAFETY: only called from functions compiled for AVX-VNNI.
            unsafe {
                let p = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
                scale(p, lo, hi)
            }
        }
    }

    impl Udot for Avx512Vnni {
        #[inline(always)]
        unsafe fn udot(u: __m256i, s: __m256i, lo: i32, hi: i32) -> __m256i {
            // SAFETY: only called from functions compiled for AVX-512 VNNI.
            unsafe {
                let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
                scale(p, lo, hi)
            }
        }
    }

    #[inline(always)]
    unsafe fn scale(p: __m256i, lo: i32, hi: i32) -> __m256i {
        // SAFETY: AVX2, as every caller.
        unsafe {
            if lo == 1 && hi == 1 {
                p
            } else {
                _mm256_mullo_epi32(p, _mm256_set_m128i(_mm_set1_epi32(hi), _mm_set1_epi32(lo)))
            }
        }
    }

    /// The sum of the 8 lanes (shared by the kernels).
    #[inline(always)]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX, as every caller.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
        }
    }

    /// The f16 at `b[i..i + 2]` as f32 (shared by the kernels).
    #[inline(always)]
    pub(crate) unsafe fn f16(b: &[u8], i: usize) -> f32 {
        // SAFETY: F16C, as every caller; `i + 2 <= b.len()` is checked.
        unsafe {
            let bits = u16::from_le_bytes([b[i], b[i + 1]]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }
    }

    /// The 32 nibbles of 16 bytes, low nibbles first.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: `p` points at 16 readable bytes; AVX2.
        unsafe {
            let q = _mm_loadu_si128(p.cast());
            let m = _mm_set1_epi8(0x0F);
            _mm256_set_m128i(
                _mm_and_si128(_mm_srli_epi16::<4>(q), m),
                _mm_and_si128(q, m),
            )
        }
    }

    /// `d` and the second f16 (Q4_1's min) of a block, in one conversion.
    #[inline(always)]
    unsafe fn f16_pair(b: &[u8]) -> (f32, f32) {
        // SAFETY: F16C, as every caller; 4 bytes are checked.
        unsafe {
            let bits = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        }
    }

    /// One block's integer sum `Σ q_w·q_a` (8 lanes), its weight scale,
    /// and what it adds besides (Q4_0's offset, Q4_1's min).
    #[inline(always)]
    unsafe fn block32<U: Udot>(ty: QType, b: &[u8], a: &Q8x32) -> (__m256i, f32, f32) {
        // SAFETY: `b` is one whole block; AVX2 and F16C are the caller's.
        unsafe {
            let s = _mm256_loadu_si256(a.qs.as_ptr().cast());
            match ty {
                QType::Q8_0 => {
                    let q = _mm256_loadu_si256(b.as_ptr().add(2).cast());
                    // |w| · (a with w's sign): unsigned × signed.
                    let p = U::udot(_mm256_sign_epi8(q, q), _mm256_sign_epi8(s, q), 1, 1);
                    (p, f16(b, 0), 0.0)
                }
                QType::Q4_0 => {
                    let d = f16(b, 0);
                    let p = U::udot(nibbles(b.as_ptr().add(2)), s, 1, 1);
                    (p, d, -8.0 * d * a.d * a.sum as f32)
                }
                QType::Q4_1 => {
                    let (d, m) = f16_pair(b);
                    let p = U::udot(nibbles(b.as_ptr().add(4)), s, 1, 1);
                    (p, d, m * a.d * a.sum as f32)
                }
                _ => unreachable!("{ty} has blocks of 256"),
            }
        }
    }

    #[inline(always)]
    unsafe fn dot32_with<U: Udot>(ty: QType, w: &[u8], a: &[Q8x32]) -> f32 {
        // SAFETY: every block read is inside `w` (whole blocks, zipped
        // with `a`); the features are the caller's.
        unsafe {
            let size = ty.block_bytes();
            // Two blocks per step into two accumulators: the additions
            // of one do not wait for the other's.
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (mut extra0, mut extra1) = (0f32, 0f32);
            let pairs = w.chunks_exact(2 * size).zip(a.chunks_exact(2));
            for (b, a) in pairs {
                let ahead = b.as_ptr().wrapping_add(crate::wide::PREFETCH_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                let (p0, d0, e0) = block32::<U>(ty, &b[..size], &a[0]);
                let (p1, d1, e1) = block32::<U>(ty, &b[size..], &a[1]);
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * a[0].d), _mm256_cvtepi32_ps(p0), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * a[1].d), _mm256_cvtepi32_ps(p1), acc1);
                extra0 += e0;
                extra1 += e1;
            }
            let blocks = w.len() / size;
            if blocks % 2 == 1 {
                let last = blocks - 1;
                let (p, d, e) = block32::<U>(ty, &w[last * size..], &a[last]);
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * a[last].d), _mm256_cvtepi32_ps(p), acc0);
                extra0 += e;
            }
            hsum(_mm256_add_ps(acc0, acc1)) + (extra0 + extra1)
        }
    }

    #[inline(always)]
    unsafe fn dot256_with<U: Udot>(ty: QType, w: &[u8], a: &[Q8x256]) -> f32 {
        // SAFETY: as in `dot32_with`: whole blocks of `w`, 256 bytes of
        // each activation block.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(3);
            let mut acc = _mm256_setzero_ps();
            let mut extra = 0f32;
            for (b, a) in w.chunks_exact(ty.block_bytes()).zip(a) {
                let q8 = a.qs.as_ptr();
                let mut sumi = _mm256_setzero_si256();
                let d = match ty {
                    QType::Q4_K => {
                        let scales = &b[4..16];
                        let mut mins = 0i32;
                        for c in 0..4 {
                            let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * c).cast());
                            let lo = _mm256_and_si256(q, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                            let (s1, m1) = scale_min_k4(2 * c, scales);
                            let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                            let (s1, s2) = (i32::from(s1), i32::from(s2));
                            let a_lo = _mm256_loadu_si256(q8.add(64 * c).cast());
                            let a_hi = _mm256_loadu_si256(q8.add(64 * c + 32).cast());
                            sumi = _mm256_add_epi32(sumi, U::udot(lo, a_lo, s1, s1));
                            sumi = _mm256_add_epi32(sumi, U::udot(hi, a_hi, s2, s2));
                            let bs = |j: usize| {
                                i32::from(a.bsums[2 * j]) + i32::from(a.bsums[2 * j + 1])
                            };
                            mins += i32::from(m1) * bs(2 * c) + i32::from(m2) * bs(2 * c + 1);
                        }
                        extra -= f16(b, 2) * a.d * mins as f32;
                        f16(b, 0)
                    }
                    QType::Q6_K => {
                        let sc = &b[192..208];
                        let mut offset = 0i32;
                        for (s, bsum) in sc.iter().zip(&a.bsums) {
                            offset += i32::from(*s as i8) * i32::from(*bsum);
                        }
                        for half in 0..2 {
                            let ql = b.as_ptr().add(64 * half);
                            let l0 = _mm256_loadu_si256(ql.cast());
                            let l1 = _mm256_loadu_si256(ql.add(32).cast());
                            let h = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * half).cast());
                            let high = |shift: i32| {
                                let h = match shift {
                                    0 => h,
                                    2 => _mm256_srli_epi16::<2>(h),
                                    4 => _mm256_srli_epi16::<4>(h),
                                    _ => _mm256_srli_epi16::<6>(h),
                                };
                                _mm256_slli_epi16::<4>(_mm256_and_si256(h, m2))
                            };
                            let q = [
                                _mm256_or_si256(_mm256_and_si256(l0, m4), high(0)),
                                _mm256_or_si256(_mm256_and_si256(l1, m4), high(2)),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                                    high(4),
                                ),
                                _mm256_or_si256(
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                                    high(6),
                                ),
                            ];
                            for (k, q) in q.into_iter().enumerate() {
                                let g = 8 * half + 2 * k;
                                let a = _mm256_loadu_si256(q8.add(128 * half + 32 * k).cast());
                                let (lo, hi) = (i32::from(sc[g] as i8), i32::from(sc[g + 1] as i8));
                                sumi = _mm256_add_epi32(sumi, U::udot(q, a, lo, hi));
                            }
                        }
                        sumi = _mm256_sub_epi32(
                            sumi,
                            _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, 32 * offset),
                        );
                        f16(b, 208)
                    }
                    _ => unreachable!("{ty} has blocks of 32"),
                };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum(acc) + extra
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot32_avx2(ty: QType, w: &[u8], a: &[Q8x32]) -> f32 {
        // SAFETY: compiled for the features `dot32_with` needs.
        unsafe { dot32_with::<Avx2>(ty, w, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn dot32_avxvnni(ty: QType, w: &[u8], a: &[Q8x32]) -> f32 {
        // SAFETY: as above.
        unsafe { dot32_with::<AvxVnni>(ty, w, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn dot32_avx512vnni(ty: QType, w: &[u8], a: &[Q8x32]) -> f32 {
        // SAFETY: as above.
        unsafe { dot32_with::<Avx512Vnni>(ty, w, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot256_avx2(ty: QType, w: &[u8], a: &[Q8x256]) -> f32 {
        // SAFETY: as above.
        unsafe { dot256_with::<Avx2>(ty, w, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn dot256_avxvnni(ty: QType, w: &[u8], a: &[Q8x256]) -> f32 {
        // SAFETY: as above.
        unsafe { dot256_with::<AvxVnni>(ty, w, a) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    unsafe fn dot256_avx512vnni(ty: QType, w: &[u8], a: &[Q8x256]) -> f32 {
        // SAFETY: as above.
        unsafe { dot256_with::<Avx512Vnni>(ty, w, a) }
    }

    /// # Safety
    ///
    /// The CPU must have the features `isa` names.
    pub(super) unsafe fn dot32(isa: Isa, ty: QType, w: &[u8], a: &[Q8x32]) -> f32 {
        // SAFETY: the caller's promise.
        unsafe {
            match isa {
                Isa::Avx2 => dot32_avx2(ty, w, a),
                Isa::AvxVnni => dot32_avxvnni(ty, w, a),
                Isa::Avx512Vnni => dot32_avx512vnni(ty, w, a),
                Isa::Scalar => unreachable!("the scalar path is not x86 code"),
            }
        }
    }

    /// # Safety
    ///
    /// The CPU must have the features `isa` names.
    pub(super) unsafe fn dot256(isa: Isa, ty: QType, w: &[u8], a: &[Q8x256]) -> f32 {
        // SAFETY: the caller's promise.
        unsafe {
            match isa {
                Isa::Avx2 => dot256_avx2(ty, w, a),
                Isa::AvxVnni => dot256_avxvnni(ty, w, a),
                Isa::Avx512Vnni => dot256_avx512vnni(ty, w, a),
                Isa::Scalar => unreachable!("the scalar path is not x86 code"),
            }
        }
    }
}
