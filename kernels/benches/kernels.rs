//! The kernels on SmolLM2-135M's shapes (random weights, the layout of
//! its Q4_1 GGUF): every projection of one decode step (30 layers of
//! q, k, v, o, gate, up, down, then the tied output head), per
//! instruction set on one thread, and on the rayon pool at batch 1, 2, 4,
//! 8 and 32 rows with 8-bit, 16-bit and f32 activations, and bf16 tiles
//! where the CPU has AVX-512 BF16 (the engine uses 16 bits below four rows
//! and f32 or, with `--batch-precision bf16`, bf16 tiles from there).
//! `cargo bench -p tessera-kernels`; `RAYON_NUM_THREADS` sets the pool.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera_kernels::{Isa, Q16Row, QMatrix, QType};

const LAYERS: usize = 30;
const HIDDEN: usize = 576;
const KV: usize = 192;
const FFN: usize = 1536;
const VOCAB: usize = 49152;

fn matrix(ty: QType, rows: usize, cols: usize, seed: u64) -> QMatrix {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let blocks = rows * cols / ty.block_values();
    let mut data = Vec::with_capacity(blocks * ty.block_bytes());
    for _ in 0..blocks {
        let start = data.len();
        for _ in 0..ty.block_bytes() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.push(state as u8);
        }
        // A small positive f16 scale (and min) in front.
        data[start..start + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        if ty == QType::Q4_1 {
            data[start + 2..start + 4].copy_from_slice(&half::f16::from_f32(-0.08).to_le_bytes());
        }
    }
    QMatrix::new(ty, rows, cols, Bytes::from(data)).expect("shape")
}

/// Every matrix of one decode step: `(matrix, input width)`.
fn model(ty: QType) -> Vec<QMatrix> {
    let mut all = Vec::new();
    for l in 0..LAYERS as u64 {
        let s = l * 16;
        all.push(matrix(ty, HIDDEN, HIDDEN, s));
        all.push(matrix(ty, KV, HIDDEN, s + 1));
        all.push(matrix(ty, KV, HIDDEN, s + 2));
        all.push(matrix(ty, HIDDEN, HIDDEN, s + 3));
        all.push(matrix(ty, FFN, HIDDEN, s + 4));
        all.push(matrix(ty, FFN, HIDDEN, s + 5));
        all.push(matrix(ty, HIDDEN, FFN, s + 6));
    }
    all.push(matrix(QType::Q8_0, VOCAB, HIDDEN, 999));
    all
}

fn step(model: &[QMatrix], n: usize, isa: Isa) {
    for m in model {
        let x = vec![0.5f32; n * m.cols()];
        let xq = m.quantize_input(&x);
        let mut out = vec![0f32; n * m.rows()];
        m.matmul_quantized(&xq, &mut out, isa);
        black_box(&out);
    }
}

/// The same step with 16-bit activations, the engine's default.
fn step_i16(model: &[QMatrix], n: usize, isa: Isa) {
    for m in model {
        let x = vec![0.5f32; n * m.cols()];
        let xq: Vec<Q16Row> = x.chunks_exact(m.cols()).map(Q16Row::quantize).collect();
        let mut out = vec![0f32; n * m.rows()];
        m.matmul_wide(&xq, &mut out, isa);
        black_box(&out);
    }
}

/// The same step with f32 activations on dequantized tiles.
fn step_f32(model: &[QMatrix], n: usize, isa: Isa) {
    for m in model {
        let x = vec![0.5f32; n * m.cols()];
        let mut out = vec![0f32; n * m.rows()];
        m.matmul_f32(&x, &mut out, isa);
        black_box(&out);
    }
}

/// The same step in bf16 tiles.
fn step_bf16(model: &[QMatrix], n: usize) {
    for m in model {
        let x = vec![0.5f32; n * m.cols()];
        let mut out = vec![0f32; n * m.rows()];
        m.matmul_bf16(&x, &mut out);
        black_box(&out);
    }
}

fn decode_step(c: &mut Criterion) {
    let model = model(QType::Q4_1);
    let bytes: usize = model.iter().map(QMatrix::bytes).sum();
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut group = c.benchmark_group("decode step (SmolLM2 Q4_1 shapes)");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(bytes as u64));
    for &isa in Isa::available() {
        group.bench_function(format!("{} 1 thread n=1", isa.name()), |b| {
            b.iter(|| single.install(|| step(&model, 1, isa)))
        });
    }
    for n in [1, 2, 4, 8, 32] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{} pool n={n}", Isa::best().name()), |b| {
            b.iter(|| step(&model, n, Isa::best()))
        });
        group.bench_function(format!("{} i16 pool n={n}", Isa::best().name()), |b| {
            b.iter(|| step_i16(&model, n, Isa::best()))
        });
        group.bench_function(format!("{} f32 pool n={n}", Isa::best().name()), |b| {
            b.iter(|| step_f32(&model, n, Isa::best()))
        });
        if tessera_kernels::bf16_available() {
            group.bench_function(format!("bf16 pool n={n}"), |b| {
                b.iter(|| step_bf16(&model, n))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
