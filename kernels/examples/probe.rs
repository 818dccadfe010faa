use bytes::Bytes;
use std::time::Instant;
use tessera_kernels::{Isa, QMatrix, QType};
fn main() {
    let (rows, cols) = (1536, 576);
    for ty in [QType::Q4_1, QType::Q8_0, QType::Q4_0] {
        let data: Vec<u8> = (0..rows * ty.row_bytes(cols))
            .map(|i| (i * 7 % 251) as u8 & 0x3f)
            .collect();
        let m = QMatrix::new(ty, rows, cols, Bytes::from(data)).unwrap();
        let x = vec![0.3f32; cols];
        let xq = m.quantize_input(&x);
        let mut out = vec![0f32; rows];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for &isa in Isa::available() {
            let t = Instant::now();
            let reps = 2000;
            pool.install(|| {
                for _ in 0..reps {
                    m.matmul_i16(&x, &mut out, isa);
                }
            });
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let blocks = rows * cols / 32;
            println!(
                "{ty} i16 {:12} {:8.1} us  {:5.2} GB/s  {:5.1} ns/block",
                isa.name(),
                s * 1e6,
                m.bytes() as f64 / s / 1e9,
                s * 1e9 / blocks as f64
            );
            let t = Instant::now();
            let reps = 2000;
            pool.install(|| {
                for _ in 0..reps {
                    m.matmul_quantized(&xq, &mut out, isa);
                }
            });
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let blocks = rows * cols / 32;
            println!(
                "{ty} {:12} {:8.1} us  {:5.2} GB/s  {:5.1} ns/block",
                isa.name(),
                s * 1e6,
                m.bytes() as f64 / s / 1e9,
                s * 1e9 / blocks as f64
            );
        }
    }
}
