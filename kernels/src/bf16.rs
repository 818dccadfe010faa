//! Batches in bf16 on AVX-512 BF16: a few weight rows are dequantized to
//! f32 (as for the f32 tiles) and rounded to bf16, the activations are
//! rounded to bf16 once per product, and `vdpbf16ps` multiplies
//! [`W`] weight rows by [`X`] activation rows in register tiles,
//! accumulating pairs of products in f32.
//!
//! Why: one `vdpbf16ps` does the multiply-adds of two f32 FMAs
//! (`cargo bench -p tessera-kernels --bench peak`: 2× the f32 rate on this
//! project's AVX-512 machine), and the operands take half the bytes. The
//! price is rounding: each weight and activation keeps 8 significant bits
//! (a relative error of at most 2⁻⁹), where 8-bit activations per block
//! of 32 keep 7 bits of the block's largest value.
//!
//! Rounding is to nearest, ties to even, as [`half::bf16::from_f32`] does
//! for finite values. Each (weight row, activation row) pair is computed
//! by the same operations in the same order whatever the tile it falls
//! in, so a row's result does not depend on its batch.

/// Weight rows per register tile.
pub(crate) const W: usize = 3;
/// Activation rows per register tile: W·X accumulators, W weight vectors
/// and an activation vector fit AVX-512's 32 registers.
pub(crate) const X: usize = 4;
/// Values per step: 32 bf16 in a 512-bit register.
pub(crate) const STEP: usize = 32;

/// Whether this CPU runs the bf16 tiles (AVX-512F, BW and BF16; detected
/// once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` (whole steps of 32 values) rounded to bf16, appended to `out`.
///
/// # Panics
///
/// If the CPU does not run the bf16 tiles, or `x` is not whole steps.
pub(crate) fn round(x: &[f32], out: &mut Vec<u16>) {
    assert!(available(), "this CPU has no AVX-512 BF16");
    assert!(x.len().is_multiple_of(STEP), "bf16 rows are whole 32s");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features were detected above.
    unsafe {
        x86::round(x, out)
    };
}

/// `out[i * n + j] = w[i] · x[j]` for `wr ≤ W` weight rows `w` (`[wr,
/// cols]`) and `n` activation rows `x` (`[n, cols]`), both in bf16.
pub(crate) fn tile(w: &[u16], wr: usize, x: &[u16], n: usize, cols: usize, out: &mut [f32]) {
    assert!(available(), "this CPU has no AVX-512 BF16");
    assert!((1..=W).contains(&wr) && w.len() == wr * cols && cols.is_multiple_of(STEP));
    assert!(x.len() == n * cols && out.len() == wr * n);
    let mut j = 0;
    while j < n {
        let xr = (n - j).min(X);
        let mut sums = [[0f32; X]; W];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features were detected and the shapes checked above.
        unsafe {
            x86::dispatch(w, wr, &x[j * cols..(j + xr) * cols], xr, cols, &mut sums)
        };
        for (i, row) in sums.iter().enumerate().take(wr) {
            out[i * n + j..i * n + j + xr].copy_from_slice(&row[..xr]);
        }
        j += xr;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{STEP, W, X};

    /// # Safety
    ///
    /// AVX-512F, BW and BF16; `x` is whole steps of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn round(x: &[f32], out: &mut Vec<u16>) {
        out.reserve(x.len());
        // SAFETY: each step reads 32 floats within `x` (whole steps) and
        // writes 32 values within the capacity reserved above, all
        // written before `set_len`.
        unsafe {
            let mut dst = out.as_mut_ptr().add(out.len());
            for chunk in x.chunks_exact(STEP) {
                let lo = _mm512_loadu_ps(chunk.as_ptr());
                let hi = _mm512_loadu_ps(chunk.as_ptr().add(16));
                let v = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(dst.cast(), std::mem::transmute::<__m512bh, __m512i>(v));
                dst = dst.add(STEP);
            }
            out.set_len(out.len() + x.len());
        }
    }

    /// # Safety
    ///
    /// AVX-512F, BW and BF16; `w` holds `wr` rows and `x` holds `xr` rows
    /// of `cols` values, `cols` a multiple of 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn dispatch(
        w: &[u16],
        wr: usize,
        x: &[u16],
        xr: usize,
        cols: usize,
        sums: &mut [[f32; X]; W],
    ) {
        macro_rules! by_shape {
            ($($w:literal),*) => {
                match (wr, xr) {
                    $(
                        ($w, 4) => kernel::<$w, 4>(w, x, cols, sums),
                        ($w, 3) => kernel::<$w, 3>(w, x, cols, sums),
                        ($w, 2) => kernel::<$w, 2>(w, x, cols, sums),
                        ($w, _) => kernel::<$w, 1>(w, x, cols, sums),
                    )*
                    _ => unreachable!("a tile is at most {W} weight rows"),
                }
            };
        }
        // SAFETY: as this function's.
        unsafe { by_shape!(1, 2, 3) }
    }

    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512bh {
        // SAFETY: the caller's: 32 values at `p`.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
    }

    #[inline(always)]
    unsafe fn kernel<const WR: usize, const XR: usize>(
        w: &[u16],
        x: &[u16],
        cols: usize,
        sums: &mut [[f32; X]; W],
    ) {
        assert!(w.len() >= WR * cols && x.len() >= XR * cols && cols.is_multiple_of(STEP));
        // SAFETY: every load is of 32 values at k < cols within a row of
        // `cols` (asserted above); the features are the caller's.
        unsafe {
            let (w, x) = (w.as_ptr(), x.as_ptr());
            let mut acc = [[_mm512_setzero_ps(); XR]; WR];
            let mut k = 0;
            while k < cols {
                let wv: [__m512bh; WR] = std::array::from_fn(|i| load(w.add(i * cols + k)));
                for j in 0..XR {
                    let xv = load(x.add(j * cols + k));
                    for (a, w) in acc.iter_mut().zip(&wv) {
                        a[j] = _mm512_dpbf16_ps(a[j], *w, xv);
                    }
                }
                k += STEP;
            }
            for (sums, acc) in sums.iter_mut().zip(&acc) {
                for (s, a) in sums.iter_mut().zip(acc) {
                    *s = _mm512_reduce_add_ps(*a);
                }
            }
        }
    }
}
