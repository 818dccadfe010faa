//! A quantized weight matrix and its product with rows of activations.

use bytes::Bytes;
use rayon::prelude::*;

use crate::bf16;
use crate::blocks::{Q8Blocks, Q8Row, QType};
use crate::dot::{Isa, dot};
use crate::tile;
use crate::wide::{self, Q16Row};

/// Why bytes cannot be a [`QMatrix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QMatrixError {
    /// A row is not whole blocks.
    #[error("{ty} rows hold whole blocks of {block} values; {cols} columns are not")]
    Columns {
        /// The type.
        ty: QType,
        /// Its block.
        block: usize,
        /// Columns asked for.
        cols: usize,
    },
    /// The bytes do not match the shape.
    #[error("a {rows}×{cols} {ty} matrix is {expected} bytes, got {actual}")]
    Size {
        /// The type.
        ty: QType,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes that shape takes.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

/// A `[rows, cols]` weight matrix kept in its quantized blocks, row-major
/// (a GGUF tensor's layout: each output row is `cols / block` blocks).
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: QType,
    rows: usize,
    cols: usize,
    data: Bytes,
}

/// Output rows per parallel task: enough work to pay for the hand-off.
const MIN_ROWS_PER_TASK: usize = 16;

impl QMatrix {
    /// `data` (owned, or a slice of a memory-mapped file) as a `[rows,
    /// cols]` matrix of `ty` blocks.
    pub fn new(ty: QType, rows: usize, cols: usize, data: Bytes) -> Result<QMatrix, QMatrixError> {
        let block = ty.block_values();
        if !cols.is_multiple_of(block) {
            return Err(QMatrixError::Columns { ty, block, cols });
        }
        let expected = rows.saturating_mul(ty.row_bytes(cols));
        if data.len() != expected {
            return Err(QMatrixError::Size {
                ty,
                rows,
                cols,
                expected,
                actual: data.len(),
            });
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// The block type.
    pub fn qtype(&self) -> QType {
        self.ty
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weights.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The blocks of output row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.ty.row_bytes(self.cols);
        &self.data[r * n..(r + 1) * n]
    }

    /// The whole matrix as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        crate::blocks::dequantize(self.ty, &self.data, &mut out);
        out
    }

    /// Quantize activation rows (`x` is `[n, cols]`) for this matrix's
    /// type; a result serves every matrix of the same type and width.
    pub fn quantize_input(&self, x: &[f32]) -> Vec<Q8Row> {
        assert!(
            x.len().is_multiple_of(self.cols),
            "{} activations are not rows of {}",
            x.len(),
            self.cols
        );
        x.chunks_exact(self.cols)
            .map(|row| Q8Row::quantize(row, self.ty))
            .collect()
    }

    /// `out = x · selfᵀ`: `x` is `[n, cols]`, `out` is `[n, rows]`, with
    /// 16-bit activations ([`matmul_i16`](Self::matmul_i16)) on the
    /// fastest instruction set this CPU has, split over the current rayon
    /// pool.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) {
        self.matmul_i16(x, out, Isa::best());
    }

    /// `out = x · selfᵀ` with the activations quantized per 32 values to
    /// 16 bits (see [`Q16Row`]): within 1/65534 of each block's largest
    /// activation of the f32 product, and a row's result does not depend
    /// on the other rows.
    pub fn matmul_i16(&self, x: &[f32], out: &mut [f32], isa: Isa) {
        check_isa(isa);
        assert!(
            x.len().is_multiple_of(self.cols),
            "{} activations are not rows of {}",
            x.len(),
            self.cols
        );
        let rows: Vec<Q16Row> = x.chunks_exact(self.cols).map(Q16Row::quantize).collect();
        self.matmul_wide(&rows, out, isa);
    }

    /// [`matmul_i16`](Self::matmul_i16) of activations quantized already.
    pub fn matmul_wide(&self, x: &[Q16Row], out: &mut [f32], isa: Isa) {
        check_isa(isa);
        for row in x {
            assert_eq!(
                row.qs.len(),
                self.cols,
                "an activation row is not {} wide",
                self.cols
            );
        }
        let rows: Vec<&Q16Row> = x.iter().collect();
        self.par_rows(rows.len(), out, |r, column| {
            let w = self.row(r);
            for (xs, o) in rows.chunks(wide::ROWS).zip(column.chunks_mut(wide::ROWS)) {
                wide::dot_rows(isa, self.ty, w, xs, o);
            }
        });
    }

    /// `out = x · selfᵀ` with the activations quantized per block to 8
    /// bits and integer dot products (llama.cpp's scheme): fewer
    /// instructions, less accurate (see the crate docs).
    pub fn matmul_int8(&self, x: &[f32], out: &mut [f32]) {
        let xq = self.quantize_input(x);
        self.matmul_quantized(&xq, out, Isa::best());
    }

    /// [`matmul_int8`](Self::matmul_int8) of activations quantized already
    /// (by [`quantize_input`](Self::quantize_input) of a matrix of the
    /// same type and width), on `isa`.
    ///
    /// # Panics
    ///
    /// If `isa` is not available on this CPU, or the shapes do not match.
    pub fn matmul_quantized(&self, x: &[Q8Row], out: &mut [f32], isa: Isa) {
        check_isa(isa);
        let blocks = self.cols / self.ty.block_values();
        for row in x {
            let fits = match &row.0 {
                Q8Blocks::B32(b) => self.ty.block_values() == 32 && b.len() == blocks,
                Q8Blocks::B256(b) => self.ty.block_values() == 256 && b.len() == blocks,
            };
            assert!(fits, "activations are not quantized for {self:?}");
        }
        self.par_rows(x.len(), out, |r, column| {
            let w = self.row(r);
            for (o, x) in column.iter_mut().zip(x) {
                *o = dot(isa, self.ty, w, x);
            }
        });
    }

    /// `out = x · selfᵀ` with f32 activations, for batches and prompts:
    /// [`W`](tile::W) weight rows at a time are dequantized to f32 and
    /// multiplied by every activation row in register tiles (see the
    /// `tile` module), split over the current rayon pool. The result is
    /// the f32 product of the dequantized weights up to f32 rounding, and
    /// a row's result does not depend on the other rows.
    ///
    /// # Panics
    ///
    /// If `isa` is not available on this CPU, or the shapes do not match.
    pub fn matmul_f32(&self, x: &[f32], out: &mut [f32], isa: Isa) {
        check_isa(isa);
        let n = self.activation_rows(x, out);
        self.par_groups(n, tile::W, out, |w: &mut Vec<f32>, blocks, out| {
            w.clear();
            tile::dequantize(isa, self.ty, blocks, w);
            tile::tile(isa, w, out.len() / n, x, n, self.cols, out);
        });
    }

    /// `out = x · selfᵀ` in bf16 register tiles (see the `bf16` module):
    /// [`matmul_f32`](Self::matmul_f32)'s scheme with the weights and the
    /// activations rounded to bf16 and twice the multiply-adds per
    /// instruction; a row's result does not depend on the other rows.
    ///
    /// # Panics
    ///
    /// If this CPU has no AVX-512 BF16 ([`bf16_available`]), or the shapes
    /// do not match.
    pub fn matmul_bf16(&self, x: &[f32], out: &mut [f32]) {
        assert!(bf16::available(), "this CPU has no AVX-512 BF16");
        let n = self.activation_rows(x, out);
        let mut xb = Vec::with_capacity(x.len());
        bf16::round(x, &mut xb);
        let isa = Isa::best();
        self.par_groups(
            n,
            bf16::W,
            out,
            |(w, wb): &mut (Vec<f32>, Vec<u16>), blocks, out| {
                w.clear();
                wb.clear();
                tile::dequantize(isa, self.ty, blocks, w);
                bf16::round(w, wb);
                bf16::tile(wb, out.len() / n, &xb, n, self.cols, out);
            },
        );
    }

    /// Rows of `x` (`[n, cols]`), checking that `out` is `[n, rows]`.
    fn activation_rows(&self, x: &[f32], out: &[f32]) -> usize {
        let (rows, cols) = (self.rows, self.cols);
        assert!(
            x.len().is_multiple_of(cols),
            "{} activations are not rows of {cols}",
            x.len()
        );
        let n = x.len() / cols;
        assert_eq!(out.len(), n * rows, "the output must be [{n}, {rows}]");
        n
    }

    /// Split the output rows over the pool in groups of `group` weight
    /// rows: `f(scratch, blocks, part)` gets a group's blocks (at most
    /// `group` whole rows) and its `[wr, n]` part of the output, with a
    /// scratch value its task made once. The parts are transposed to
    /// `out` (`[n, rows]`) at the end.
    fn par_groups<S: Default>(
        &self,
        n: usize,
        group: usize,
        out: &mut [f32],
        f: impl Fn(&mut S, &[u8], &mut [f32]) + Sync,
    ) {
        let rows = self.rows;
        if n == 0 {
            return;
        }
        let tasks = rayon::current_num_threads() * 4;
        let per_task = rows
            .div_ceil(tasks)
            .max(MIN_ROWS_PER_TASK)
            .next_multiple_of(group);
        let row_bytes = self.ty.row_bytes(self.cols);
        let mut transposed = vec![0f32; rows * n];
        transposed
            .par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(task, part)| {
                let mut scratch = S::default();
                for (g, part) in part.chunks_mut(group * n).enumerate() {
                    let first = task * per_task + g * group;
                    let wr = part.len() / n;
                    let blocks = &self.data[first * row_bytes..(first + wr) * row_bytes];
                    f(&mut scratch, blocks, part);
                }
            });
        transpose(&transposed, n, rows, out);
    }

    /// Split the output rows over the pool: `f(r, column)` fills output
    /// row `r` for each of the `n` inputs. Each task computes its rows
    /// for every input while the weights are in cache, into `[rows, n]`,
    /// transposed to `out` (`[n, rows]`) at the end.
    fn par_rows(&self, n: usize, out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
        let rows = self.rows;
        assert_eq!(out.len(), n * rows, "the output must be [{n}, {rows}]");
        if n == 0 {
            return;
        }
        let tasks = rayon::current_num_threads() * 4;
        let per_task = rows.div_ceil(tasks).max(MIN_ROWS_PER_TASK);
        if n == 1 {
            out.par_chunks_mut(per_task)
                .enumerate()
                .for_each(|(task, out)| {
                    for (i, o) in out.chunks_exact_mut(1).enumerate() {
                        f(task * per_task + i, o);
                    }
                });
            return;
        }
        let mut transposed = vec![0f32; rows * n];
        transposed
            .par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(task, out)| {
                for (i, column) in out.chunks_exact_mut(n).enumerate() {
                    f(task * per_task + i, column);
                }
            });
        transpose(&transposed, n, rows, out);
    }
}

/// `out` (`[n, rows]`) from `transposed` (`[rows, n]`).
fn transpose(transposed: &[f32], n: usize, rows: usize, out: &mut [f32]) {
    if n == 1 {
        out.copy_from_slice(transposed);
        return;
    }
    for (r, column) in transposed.chunks_exact(n).enumerate() {
        for (t, v) in column.iter().enumerate() {
            out[t * rows + r] = *v;
        }
    }
}

/// Whether this CPU runs [`QMatrix::matmul_bf16`] (AVX-512 BF16).
pub fn bf16_available() -> bool {
    bf16::available()
}

fn check_isa(isa: Isa) {
    assert!(
        Isa::available().contains(&isa),
        "{} is not available on this CPU",
        isa.name()
    );
}
