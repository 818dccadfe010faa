//! Every kernel on every instruction set this CPU has, against the f32
//! product of the dequantized weights: for each quant type, odd shapes
//! (one row, rows that do not fill a task, several activation rows).

use bytes::Bytes;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_kernels::{Isa, Q8Row, QMatrix, QType, quantize_q8_0};

/// Random but valid blocks: scales of a realistic size, every other byte
/// random.
fn random_blocks(ty: QType, blocks: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * ty.block_bytes());
    let half = |rng: &mut StdRng, lo: f32, hi: f32| {
        let v: f32 = rng.random_range(lo..hi);
        f16::from_f32(v).to_le_bytes()
    };
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..ty.block_bytes()).map(|_| rng.random()).collect();
        match ty {
            QType::Q8_0 | QType::Q4_0 => b[0..2].copy_from_slice(&half(rng, 0.001, 0.05)),
            QType::Q4_1 => {
                b[0..2].copy_from_slice(&half(rng, 0.001, 0.05));
                b[2..4].copy_from_slice(&half(rng, -0.4, 0.0));
            }
            QType::Q4_K => {
                b[0..2].copy_from_slice(&half(rng, 0.0005, 0.005));
                b[2..4].copy_from_slice(&half(rng, 0.0005, 0.01));
            }
            QType::Q6_K => b[208..210].copy_from_slice(&half(rng, 0.0001, 0.002)),
        }
        out.extend(b);
    }
    out
}

/// Activations like a residual stream's: mostly small, a few large.
fn activations(len: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v: f32 = rng.random_range(-1.0..1.0);
            if i % 97 == 5 { v * 20.0 } else { v }
        })
        .collect()
}

/// `x · wᵀ` in f64.
fn reference(w: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let n = x.len() / cols;
    let mut out = vec![0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            out[t * rows + r] = (0..cols)
                .map(|c| f64::from(w[r * cols + c]) * f64::from(x[t * cols + c]))
                .sum();
        }
    }
    out
}

fn check(ty: QType, rows: usize, cols: usize, n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let blocks = rows * cols / ty.block_values();
    let m = QMatrix::new(
        ty,
        rows,
        cols,
        Bytes::from(random_blocks(ty, blocks, &mut rng)),
    )
    .unwrap();
    let w = m.dequantize();
    let x = activations(n * cols, &mut rng);
    let xq = m.quantize_input(&x);
    let x_hat: Vec<f32> = xq.iter().flat_map(Q8Row::dequantize).collect();

    // The kernels compute W · x̂ exactly in integers, then scale in f32.
    let exact = reference(&w, &x_hat, rows, cols);
    // |W · (x − x̂)| is at most Σ|w|·(d/2) per block.
    let abs: Vec<f64> = {
        let wa: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        reference(&wa, &xa, rows, cols)
    };
    let f32_product = reference(&w, &x, rows, cols);
    // Rounding moves each activation by at most half its block's step, so
    // W·x and W·x̂ differ by at most Σ|w|·|x − x̂|.
    let step = |i: usize| {
        let block = ty.block_values();
        let start = i / block * block;
        x[start..start + block]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            / 127.0
    };
    let error: Vec<f32> = x.iter().zip(&x_hat).map(|(a, b)| (a - b).abs()).collect();
    for (i, e) in error.iter().enumerate() {
        assert!(*e <= step(i) * 0.5 * 1.0001, "activation {i} moved {e}");
    }
    let wa: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let rounding = reference(&wa, &error, rows, cols);
    let abs_exact = {
        let wa: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        reference(&wa, &xa, rows, cols)
    };
    for &isa in Isa::available() {
        // 16-bit activations: W · x̂16 exactly, and within the rounding
        // of x̂16 of W · x.
        let x16: Vec<tessera_kernels::Q16Row> = x
            .chunks_exact(cols)
            .map(tessera_kernels::Q16Row::quantize)
            .collect();
        let x16_hat: Vec<f32> = x16.iter().flat_map(|r| r.dequantize()).collect();
        let exact16 = reference(&w, &x16_hat, rows, cols);
        let error16: Vec<f32> = x.iter().zip(&x16_hat).map(|(a, b)| (a - b).abs()).collect();
        for (i, e) in error16.iter().enumerate() {
            assert!(
                *e <= step(i) * 127.0 / 32767.0 * 0.51,
                "activation {i} moved {e}"
            );
        }
        let rounding16 = reference(&wa, &error16, rows, cols);
        let mut out = vec![0f32; n * rows];
        m.matmul_wide(&x16, &mut out, isa);
        for i in 0..n * rows {
            let got = f64::from(out[i]);
            let tol = 2e-6 * abs_exact[i] + 1e-6;
            assert!(
                (got - exact16[i]).abs() <= tol,
                "{ty} {rows}x{cols} n={n} i16 on {}: output {i} is {got}, W·x̂ is {}",
                isa.name(),
                exact16[i]
            );
            let bound = rounding16[i] * 1.02 + 2e-6 * abs_exact[i] + 1e-6;
            assert!(
                (got - f32_product[i]).abs() <= bound,
                "{ty} {rows}x{cols} n={n} i16 on {}: output {i} is {got}, W·x is {}",
                isa.name(),
                f32_product[i]
            );
        }
        for t in 0..n {
            let mut alone = vec![0f32; rows];
            m.matmul_wide(&x16[t..t + 1], &mut alone, isa);
            assert_eq!(
                alone,
                out[t * rows..(t + 1) * rows],
                "{ty} i16 row {t} on {}",
                isa.name()
            );
        }

        // f32 activations on dequantized tiles: W · x up to f32 rounding
        // (at most ~cols/8 · 2⁻²⁴ of Σ|w·x| for eight-lane sums), and the same
        // bits for a row alone as in its batch.
        let mut out = vec![0f32; n * rows];
        m.matmul_f32(&x, &mut out, isa);
        for i in 0..n * rows {
            let got = f64::from(out[i]);
            let tol = 2e-5 * abs_exact[i] + 1e-6;
            assert!(
                (got - f32_product[i]).abs() <= tol,
                "{ty} {rows}x{cols} n={n} f32 on {}: output {i} is {got}, W·x is {}",
                isa.name(),
                f32_product[i]
            );
        }
        for t in 0..n {
            let mut alone = vec![0f32; rows];
            m.matmul_f32(&x[t * cols..(t + 1) * cols], &mut alone, isa);
            assert_eq!(
                alone,
                out[t * rows..(t + 1) * rows],
                "{ty} f32 row {t} on {}",
                isa.name()
            );
        }

        if isa == Isa::best() {
            check_bf16(&m, &w, &x, n, &abs_exact, &f32_product);
        }

        let mut out = vec![0f32; n * rows];
        m.matmul_quantized(&xq, &mut out, isa);
        for i in 0..n * rows {
            let got = f64::from(out[i]);
            let tol = 1e-5 * abs[i] + 1e-5;
            assert!(
                (got - exact[i]).abs() <= tol,
                "{ty} {rows}x{cols} n={n} on {}: output {i} is {got}, W·x̂ is {}",
                isa.name(),
                exact[i]
            );
            // Against the f32 weights times the unquantized activations:
            // within what the activations' rounding can move it.
            let bound = rounding[i] * 1.0001 + 1e-4;
            assert!(
                (got - f32_product[i]).abs() <= bound,
                "{ty} {rows}x{cols} n={n} on {}: output {i} is {got}, W·x is {} (bound {bound})",
                isa.name(),
                f32_product[i]
            );
        }
    }
}

/// bf16 tiles, where the CPU has them: the product of the weights and
/// activations rounded to bf16 (by the `half` crate) up to f32 summation,
/// within the rounding's reach of the f32 product, and the same bits for a
/// row alone as in its batch.
fn check_bf16(m: &QMatrix, w: &[f32], x: &[f32], n: usize, abs: &[f64], f32_product: &[f64]) {
    if !tessera_kernels::bf16_available() {
        return;
    }
    let (rows, cols) = (m.rows(), m.cols());
    let round = |v: &f32| half::bf16::from_f32(*v).to_f32();
    let wb: Vec<f32> = w.iter().map(round).collect();
    let xb: Vec<f32> = x.iter().map(round).collect();
    let exact = reference(&wb, &xb, rows, cols);
    let mut out = vec![0f32; n * rows];
    m.matmul_bf16(x, &mut out);
    for i in 0..n * rows {
        let got = f64::from(out[i]);
        let tol = 2e-5 * abs[i] + 1e-6;
        assert!(
            (got - exact[i]).abs() <= tol,
            "{} {rows}x{cols} n={n} bf16: output {i} is {got}, Wb·xb is {}",
            m.qtype(),
            exact[i]
        );
        // Each rounded product is within 2⁻⁸ of the exact one.
        let bound = abs[i] * (2f64.powi(-8) * 1.01) + tol;
        assert!(
            (got - f32_product[i]).abs() <= bound,
            "{} {rows}x{cols} n={n} bf16: output {i} is {got}, W·x is {}",
            m.qtype(),
            f32_product[i]
        );
    }
    for t in 0..n {
        let mut alone = vec![0f32; rows];
        m.matmul_bf16(&x[t * cols..(t + 1) * cols], &mut alone);
        assert_eq!(alone, out[t * rows..(t + 1) * rows], "bf16 row {t}");
    }
}

#[test]
fn every_type_agrees_with_the_dequantized_product_on_every_isa() {
    println!(
        "instruction sets: {:?}, bf16 tiles: {}",
        Isa::available()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>(),
        tessera_kernels::bf16_available()
    );
    for (i, ty) in QType::ALL.into_iter().enumerate() {
        let block = ty.block_values();
        let seed = i as u64 * 100;
        check(ty, 1, block, 1, seed);
        check(ty, 7, 3 * block, 1, seed + 1);
        check(ty, 33, 2 * block, 3, seed + 2);
        check(ty, 100, 5 * block, 8, seed + 3);
        // Four rows per weight block, then one left over.
        check(ty, 20, 4 * block, 5, seed + 4);
        // Rows and activations that do not fill a tile, several steps.
        check(ty, 13, 6 * block, 9, seed + 5);
    }
}

#[test]
fn model_shapes_agree() {
    // SmolLM2-135M's projections: 576 wide, MLP 1536 (Q4_1 and Q8_0 in
    // its GGUF files); K-quants need widths that are multiples of 256.
    check(QType::Q4_1, 1536, 576, 1, 7);
    check(QType::Q8_0, 576, 1536, 2, 8);
    check(QType::Q4_K, 512, 768, 2, 9);
    check(QType::Q6_K, 256, 1024, 1, 10);
}

#[test]
fn q8_0_weights_from_f32_multiply_like_the_f32_weights() {
    let mut rng = StdRng::seed_from_u64(11);
    let (rows, cols) = (40, 96);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-0.1f32..0.1))
        .collect();
    let m = QMatrix::new(QType::Q8_0, rows, cols, Bytes::from(quantize_q8_0(&w))).unwrap();
    let x = activations(cols, &mut rng);
    let mut out = vec![0f32; rows];
    m.matmul(&x, &mut out);
    let want = reference(&w, &x, rows, cols);
    let scale: f64 = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (got, want) in out.iter().zip(&want) {
        assert!(
            (f64::from(*got) - want).abs() <= 0.02 * scale,
            "{got} vs {want}"
        );
    }
}

#[test]
fn bad_shapes_are_refused_by_name() {
    let err = QMatrix::new(QType::Q4_K, 1, 100, Bytes::new()).unwrap_err();
    assert!(err.to_string().contains("whole blocks of 256"), "{err}");
    let err = QMatrix::new(QType::Q4_1, 2, 64, Bytes::from(vec![0u8; 79])).unwrap_err();
    assert_eq!(err.to_string(), "a 2×64 Q4_1 matrix is 80 bytes, got 79");
}
