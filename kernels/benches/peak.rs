//! The arithmetic ceiling of this CPU for a batched decode step: how many
//! multiply-adds a second each candidate inner loop can retire on every
//! core at once, with its operands already in registers (no loads, no
//! unpacking, no horizontal sums: an upper bound on any kernel built on
//! it), and what that allows for SmolLM2-135M.
//!
//! The candidates are the instructions a quantized batch can run on:
//! - f32 FMA (what the engine's batch tiles run, `tile.rs`);
//! - bf16 pair dot products (`vdpbf16ps`, AVX-512 BF16): weights
//!   dequantized to bf16 per tile, activations in bf16;
//! - 8-bit integer dot products (`vpdpbusd`, AVX-512 VNNI) alone, which
//!   only a format without per-block float scales could run back to back;
//! - the same with what a 32-value block with a float scale (Q4_0, Q4_1,
//!   Q8_0) needs at the least: each block's integer sum converted to f32
//!   and multiplied into an f32 accumulator by the product of the weight
//!   block's and the activation block's scales (the `tile8` kernel's
//!   inner loop), and without that product (one scale per activation
//!   row, which would cost accuracy).
//!
//! Each loop's inputs change every round and differ between its chains,
//! so that the compiler can neither hoist nor share the work.
//!
//! `cargo bench -p tessera-kernels --bench peak`; `TESSERA_PEAK_THREADS`
//! sets the threads (default: every core).

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Multiply-adds of one SmolLM2-135M token through every matrix: 30
/// layers of q, k, v, o (576×576, 576×192 twice, 576×576), gate, up,
/// down (576×1536 three times), and the tied 49152×576 output head.
const MACS_PER_TOKEN: f64 =
    (30 * (576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3) + 49152 * 576) as f64;

/// Independent accumulators per loop: enough to cover every latency.
const CHAINS: usize = 12;
/// Inner iterations per timed call.
const ROUNDS: u64 = 1 << 20;

struct Candidate {
    name: &'static str,
    /// Multiply-adds one round retires.
    macs_per_round: u64,
    run: fn(u64) -> f32,
    available: fn() -> bool,
}

fn main() {
    let threads = std::env::var("TESSERA_PEAK_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("{threads} threads, {MACS_PER_TOKEN:.0} multiply-adds a token");
    println!(
        "{:<44} {:>12} {:>16}",
        "inner loop", "GMAC/s", "tokens/s ceiling"
    );
    for c in candidates() {
        if !(c.available)() {
            println!("{:<44} {:>12}", c.name, "not on this CPU");
            continue;
        }
        // Warm up (clocks, caches), then time a fixed amount of work on
        // every thread at once.
        let _ = (c.run)(ROUNDS / 8);
        let rounds = calibrate(c.run);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| black_box((c.run)(rounds)));
            }
        });
        let secs = start.elapsed().as_secs_f64();
        let macs = (c.macs_per_round * rounds * threads as u64) as f64 / secs;
        println!(
            "{:<44} {:>12.1} {:>16.0}",
            c.name,
            macs / 1e9,
            macs / MACS_PER_TOKEN
        );
    }
}

/// Rounds that take about a second on one thread.
fn calibrate(run: fn(u64) -> f32) -> u64 {
    let start = Instant::now();
    black_box(run(ROUNDS));
    let once = start.elapsed().max(Duration::from_micros(1));
    (ROUNDS as f64 * (1.0 / once.as_secs_f64())).max(ROUNDS as f64) as u64
}

#[cfg(target_arch = "x86_64")]
fn candidates() -> Vec<Candidate> {
    use x86::*;
    vec![
        Candidate {
            name: "f32 FMA, 256-bit (vfmadd231ps ymm)",
            macs_per_round: (CHAINS * 8) as u64,
            run: |n| unsafe { fma256(n) },
            available: || is_x86_feature_detected!("fma"),
        },
        Candidate {
            name: "f32 FMA, 512-bit (vfmadd231ps zmm)",
            macs_per_round: (CHAINS * 16) as u64,
            run: |n| unsafe { fma512(n) },
            available: || is_x86_feature_detected!("avx512f"),
        },
        Candidate {
            name: "bf16 pairs, 512-bit (vdpbf16ps zmm)",
            macs_per_round: (CHAINS * 32) as u64,
            run: |n| unsafe { bf16_512(n) },
            available: || is_x86_feature_detected!("avx512bf16"),
        },
        Candidate {
            name: "int8 alone (vpdpbusd zmm)",
            macs_per_round: (CHAINS * 64) as u64,
            run: |n| unsafe { vnni512(n) },
            available: has_vnni512,
        },
        Candidate {
            name: "int8, block scales (vpdpbusd, cvt, mul, fma)",
            macs_per_round: (CHAINS * 64) as u64,
            run: |n| unsafe { vnni512_scaled::<true>(n) },
            available: has_vnni512,
        },
        Candidate {
            name: "int8, row scales (vpdpbusd, cvt, fma)",
            macs_per_round: (CHAINS * 64) as u64,
            run: |n| unsafe { vnni512_scaled::<false>(n) },
            available: has_vnni512,
        },
    ]
}

#[cfg(target_arch = "x86_64")]
fn has_vnni512() -> bool {
    is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw")
}

#[cfg(not(target_arch = "x86_64"))]
fn candidates() -> Vec<Candidate> {
    Vec::new()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    use super::CHAINS;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(n: u64) -> f32 {
        let a = _mm256_set1_ps(black_box(1.000_001));
        let b = _mm256_set1_ps(black_box(0.999_999));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..n {
            for c in &mut acc {
                *c = _mm256_fmadd_ps(a, b, *c);
            }
        }
        let mut s = _mm256_setzero_ps();
        for c in acc {
            s = _mm256_add_ps(s, c);
        }
        _mm256_cvtss_f32(s)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(n: u64) -> f32 {
        let a = _mm512_set1_ps(black_box(1.000_001));
        let b = _mm512_set1_ps(black_box(0.999_999));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..n {
            for c in &mut acc {
                *c = _mm512_fmadd_ps(a, b, *c);
            }
        }
        let mut s = _mm512_setzero_ps();
        for c in acc {
            s = _mm512_add_ps(s, c);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_512(n: u64) -> f32 {
        let a = _mm512_cvtne2ps_pbh(
            _mm512_set1_ps(black_box(1.0)),
            _mm512_set1_ps(black_box(0.5)),
        );
        let b = _mm512_cvtne2ps_pbh(
            _mm512_set1_ps(black_box(0.25)),
            _mm512_set1_ps(black_box(2.0)),
        );
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..n {
            for c in &mut acc {
                *c = _mm512_dpbf16_ps(*c, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for c in acc {
            s = _mm512_add_ps(s, c);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn vnni512(n: u64) -> f32 {
        let a = _mm512_set1_epi8(black_box(3));
        let b = _mm512_set1_epi8(black_box(-2));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..n {
            for c in &mut acc {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for c in acc {
            s = _mm512_add_epi32(s, c);
        }
        _mm512_reduce_add_epi32(s) as f32
    }

    /// Per block (of 32 values, two blocks a 512-bit register) and pair:
    /// the integer dot product, its conversion to f32, the product of the
    /// two blocks' scales (when `PAIR_SCALE`) and one FMA into the pair's
    /// f32 accumulator.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn vnni512_scaled<const PAIR_SCALE: bool>(n: u64) -> f32 {
        let mut a = _mm512_set1_epi8(black_box(3));
        let step = _mm512_set1_epi8(black_box(1));
        let b: [__m512i; CHAINS] = std::array::from_fn(|c| _mm512_set1_epi8(black_box(c as i8)));
        let mut ws = _mm512_set1_ps(black_box(0.01));
        let tiny = _mm512_set1_ps(black_box(1e-9));
        let xs: [__m512; CHAINS] = std::array::from_fn(|c| _mm512_set1_ps(black_box(c as f32)));
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..n {
            for c in 0..CHAINS {
                let sum = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, a, b[c]));
                let scale = if PAIR_SCALE {
                    _mm512_mul_ps(ws, xs[c])
                } else {
                    xs[c]
                };
                acc[c] = _mm512_fmadd_ps(sum, scale, acc[c]);
            }
            a = _mm512_add_epi8(a, step);
            ws = _mm512_add_ps(ws, tiny);
        }
        let mut s = _mm512_setzero_ps();
        for c in acc {
            s = _mm512_add_ps(s, c);
        }
        _mm512_reduce_add_ps(s)
    }
}
