//! Quantized matrices and the integer dot products of the forward pass.
//!
//! Weights keep the GGUF file's quantization (Q4_1 and Q8_0 blocks of 32), unpacked at
//! load into one byte per weight and f32 scales (exactly the f16 values of the file),
//! so the inner loop is a plain 8-bit integer dot product that vectorises. Activations
//! are quantized to 8 bits per block of 32 ([`QuantAct`]). Inside a block the dot
//! product is an integer, the same in any order or vector width; the blocks are then
//! combined in f32 in block order, one fixed sequence of IEEE operations per output
//! (docs/ENGINE.md, "Matrix products").

use crate::gguf::{Gguf, GgufError, TensorType};
use crate::num::{f16_to_f32, round_away, round_f16};
use nc06::simd::{run_on, Isa};
use rayon::prelude::*;

/// Weights and activations are quantized in blocks of this many values.
pub const BLOCK: usize = 32;

/// How a matrix's blocks turn integer sums into values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// w = d * q + m, q in 0..=15 (GGUF Q4_1).
    Q4_1,
    /// w = d * q, q in -128..=127 (GGUF Q8_0).
    Q8_0,
}

/// A `rows` x `cols` weight matrix (row-major: each output's weights together).
pub struct Matrix {
    kind: Kind,
    rows: usize,
    cols: usize,
    /// One byte per weight: Q4_1's 0..=15, or Q8_0's i8 as u8.
    q: Vec<u8>,
    /// Per block: the scale d.
    d: Vec<f32>,
    /// Per block: Q4_1's minimum m (empty for Q8_0).
    m: Vec<f32>,
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

impl Matrix {
    /// The tensor `name` of `rows` x `cols` (GGUF dims `[cols, rows]`), Q4_1 or Q8_0.
    pub fn load(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Matrix, GgufError> {
        let dims = [cols as u64, rows as u64];
        let info = g
            .tensor(name)
            .ok_or_else(|| GgufError::NoTensor(name.into()))?;
        if cols % BLOCK != 0 {
            return Err(GgufError::Tensor {
                name: name.into(),
                why: format!("{cols} columns are not whole blocks of {BLOCK}"),
            });
        }
        // Nothing is allocated before the file is known to hold the tensor's bytes: the
        // sizes come from the file, and the bytes bound them.
        let bytes = g.tensor_bytes(name, info.ty, &dims)?;
        let nb = rows * cols / BLOCK;
        let mut m = Matrix {
            kind: Kind::Q8_0,
            rows,
            cols,
            q: Vec::new(),
            d: Vec::new(),
            m: Vec::new(),
        };
        if matches!(info.ty, TensorType::Q4_1 | TensorType::Q8_0) {
            m.q.reserve(rows * cols);
            m.d.reserve(nb);
        }
        match info.ty {
            TensorType::Q4_1 => {
                let b = bytes;
                m.kind = Kind::Q4_1;
                m.m.reserve(nb);
                for blk in b.chunks_exact(20) {
                    m.d.push(half(blk, 0));
                    m.m.push(half(blk, 2));
                    let qs = &blk[4..20];
                    m.q.extend(qs.iter().map(|&x| x & 15));
                    m.q.extend(qs.iter().map(|&x| x >> 4));
                }
            }
            TensorType::Q8_0 => {
                let b = bytes;
                for blk in b.chunks_exact(34) {
                    m.d.push(half(blk, 0));
                    m.q.extend_from_slice(&blk[2..34]);
                }
            }
            other => {
                return Err(GgufError::Tensor {
                    name: name.into(),
                    why: format!("type {other:?} is not supported (Q4_1 and Q8_0 are)"),
                })
            }
        }
        Ok(m)
    }

    /// Outputs.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r` as f32 (d * q, or d * q + m for Q4_1): a token's embedding.
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let q = &self.q[r * self.cols..(r + 1) * self.cols];
        for (b, (o, q)) in out
            .chunks_exact_mut(BLOCK)
            .zip(q.chunks_exact(BLOCK))
            .enumerate()
        {
            let d = self.d[r * nb + b];
            match self.kind {
                Kind::Q8_0 => o
                    .iter_mut()
                    .zip(q)
                    .for_each(|(o, &q)| *o = d * (q as i8 as f32)),
                Kind::Q4_1 => {
                    let m = self.m[r * nb + b];
                    o.iter_mut()
                        .zip(q)
                        .for_each(|(o, &q)| *o = d * q as f32 + m)
                }
            }
        }
    }

    /// `out[s * rows + r]` = row r · stream s's activations, for rows `r0..r1` only
    /// when `rows` is given (the others are left as they are). Rows are split over
    /// rayon's threads; each output is computed alone, so the split changes nothing.
    pub fn mul(&self, x: &QuantAct, out: &mut [f32], isa: Isa) {
        let n = x.streams;
        debug_assert_eq!(x.cols, self.cols);
        debug_assert!(out.len() >= n * self.rows);
        // Rows per task: enough work to be worth a hand-off, at least 8 tasks.
        let per = (self.rows / 16).clamp(4, 64);
        let mut tmp = vec![0.0f32; self.rows * n];
        tmp.par_chunks_mut(per * n)
            .enumerate()
            .for_each(|(t, chunk)| {
                run_on(
                    isa,
                    #[inline(always)]
                    || self.mul_rows(x, t * per, chunk),
                )
            });
        for (r, row) in tmp.chunks_exact(n).enumerate() {
            for (s, &v) in row.iter().enumerate() {
                out[s * self.rows + r] = v;
            }
        }
    }

    /// Rows `r0..` into `chunk` (`[row][stream]`).
    #[inline(always)]
    fn mul_rows(&self, x: &QuantAct, r0: usize, chunk: &mut [f32]) {
        let n = x.streams;
        let nb = self.cols / BLOCK;
        let mut isum = vec![0i32; nb];
        for (i, outs) in chunk.chunks_exact_mut(n).enumerate() {
            let r = r0 + i;
            let wq = &self.q[r * self.cols..(r + 1) * self.cols];
            let wd = &self.d[r * nb..(r + 1) * nb];
            for (s, o) in outs.iter_mut().enumerate() {
                let aq = &x.q[s * self.cols..(s + 1) * self.cols];
                let (ad, asum) = (&x.d[s * nb..(s + 1) * nb], &x.s[s * nb..(s + 1) * nb]);
                match self.kind {
                    Kind::Q4_1 => {
                        for ((acc, w), a) in isum
                            .iter_mut()
                            .zip(wq.chunks_exact(BLOCK))
                            .zip(aq.chunks_exact(BLOCK))
                        {
                            *acc = dot_u4(w, a);
                        }
                        let wm = &self.m[r * nb..(r + 1) * nb];
                        let mut acc = 0.0f32;
                        for b in 0..nb {
                            acc += (wd[b] * ad[b]) * isum[b] as f32 + wm[b] * asum[b];
                        }
                        *o = acc;
                    }
                    Kind::Q8_0 => {
                        for ((acc, w), a) in isum
                            .iter_mut()
                            .zip(wq.chunks_exact(BLOCK))
                            .zip(aq.chunks_exact(BLOCK))
                        {
                            *acc = dot_i8(w, a);
                        }
                        let mut acc = 0.0f32;
                        for b in 0..nb {
                            acc += (wd[b] * ad[b]) * isum[b] as f32;
                        }
                        *o = acc;
                    }
                }
            }
        }
    }
}

/// Σ w[j] a[j] for 4-bit unsigned weights: an integer, whatever the order.
#[inline(always)]
fn dot_u4(w: &[u8], a: &[i8]) -> i32 {
    w.iter()
        .zip(a)
        .map(|(&w, &a)| w as i16 as i32 * a as i32)
        .sum()
}

/// Σ w[j] a[j] for 8-bit signed weights (stored as u8).
#[inline(always)]
fn dot_i8(w: &[u8], a: &[i8]) -> i32 {
    w.iter()
        .zip(a)
        .map(|(&w, &a)| w as i8 as i32 * a as i32)
        .sum()
}

/// The activations of `streams` vectors of `cols` values, quantized to 8 bits per
/// block of 32: q = round(x / d) with d = max|x| / 127 (ties away from zero), d kept
/// as the nearest f16, and s = d * Σq (as f16) for Q4_1's minimum term.
pub struct QuantAct {
    streams: usize,
    cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl QuantAct {
    /// Room for `streams` vectors of `cols` values.
    pub fn new(streams: usize, cols: usize) -> QuantAct {
        QuantAct {
            streams,
            cols,
            q: vec![0; streams * cols],
            d: vec![0.0; streams * cols / BLOCK],
            s: vec![0.0; streams * cols / BLOCK],
        }
    }

    /// Quantizes `x` (`streams` vectors of `cols`, one after the other).
    pub fn set(&mut self, x: &[f32], isa: Isa) {
        run_on(
            isa,
            #[inline(always)]
            || {
                for ((xb, qb), (d, s)) in x
                    .chunks_exact(BLOCK)
                    .zip(self.q.chunks_exact_mut(BLOCK))
                    .zip(self.d.iter_mut().zip(self.s.iter_mut()))
                {
                    let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
                    let dd = amax / 127.0;
                    let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
                    let mut sum = 0i32;
                    for (q, &v) in qb.iter_mut().zip(xb) {
                        let r = round_away(v * id).clamp(-127.0, 127.0) as i8;
                        *q = r;
                        sum += r as i32;
                    }
                    *d = round_f16(dd);
                    *s = round_f16(dd * sum as f32);
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_dot_products_are_close_to_the_float_ones() {
        let cols = 96;
        let x: Vec<f32> = (0..cols * 2)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let mut a = QuantAct::new(2, cols);
        a.set(&x, Isa::Scalar);
        // One Q8_0 row of weights w = d q with q = (j % 7) - 3 and d = 0.5.
        let m = Matrix {
            kind: Kind::Q8_0,
            rows: 1,
            cols,
            q: (0..cols).map(|j| ((j % 7) as i8 - 3) as u8).collect(),
            d: vec![0.5; cols / BLOCK],
            m: vec![],
        };
        let mut out = vec![0.0; 2];
        m.mul(&a, &mut out, Isa::Scalar);
        for s in 0..2 {
            let want: f32 = (0..cols)
                .map(|j| 0.5 * ((j % 7) as f32 - 3.0) * x[s * cols + j])
                .sum();
            assert!(
                (out[s] - want).abs() < 0.02 * want.abs().max(1.0),
                "{} {want}",
                out[s]
            );
        }
        let mut out2 = vec![0.0; 2];
        m.mul(&a, &mut out2, Isa::detect());
        assert_eq!(out, out2);
    }
}
