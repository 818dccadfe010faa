//! Quantized matrix products on GGUF blocks.
//!
//! Weights stay in the blocks a GGUF file holds them in (Q8_0, Q4_0, Q4_1,
//! Q4_K, Q6_K: ggml's layouts, see [`QType`]); activations are quantized
//! per block to 8 bits ([`Q8Row`]) and each output is a sum of integer dot
//! products scaled by the blocks' factors, as llama.cpp's `vec_dot`
//! kernels compute it. The inner products run on AVX-512 VNNI, AVX-VNNI or
//! AVX2 when the CPU has them (detected once, at run time) and on portable
//! code otherwise; [`Isa::available`] lists what this machine can run and
//! every path is tested against the scalar one and against the f32 product
//! of the dequantized weights.
//!
//! [`QMatrix::matmul`] multiplies `n` activation rows by a weight matrix,
//! splitting output rows over the current rayon pool: a decode step
//! (`n = 1`) reads each weight block once, and a batch reads each block
//! once for all its rows while it is in cache.

mod bf16;
mod blocks;
mod dot;
mod matmul;
mod tile;
mod wide;

pub use blocks::{Q8Row, QType, dequantize, quantize_q8_0};
pub use dot::Isa;
pub use matmul::{QMatrix, QMatrixError, bf16_available};
pub use wide::Q16Row;
