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

/// Rows computed together: one AVX-512 vector of outputs.
const TILE: usize = 16;

/// Consecutive columns of one row that sit side by side in the interleaved weights (the
/// four bytes one VNNI lane multiplies and adds).
const GROUP: usize = 4;

/// Weights of one block of a tile.
const TILE_BLOCK: usize = TILE * BLOCK;

/// Bytes of one block of a tile: Q4_1 keeps two weights a byte.
const fn block_bytes(kind: Kind) -> usize {
    match kind {
        Kind::Q4_1 => TILE_BLOCK / 2,
        Kind::Q8_0 => TILE_BLOCK,
    }
}

/// How a matrix's blocks turn integer sums into values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// w = d * q + m, q in 0..=15 (GGUF Q4_1).
    Q4_1,
    /// w = d * q, q in -128..=127 (GGUF Q8_0).
    Q8_0,
}

/// A `rows` x `cols` weight matrix.
///
/// Rows are taken 16 at a time (a tile; the last is padded with zero rows). Within a
/// tile, each block of 32 columns is stored as 8 groups of 4 columns, and each group
/// holds its 4 weights for each of the 16 rows in turn: `[tile][block][group][row][4]`.
/// So one vector of 64 weights is four columns of sixteen rows, and an integer
/// multiply-add per group against the stream's four activation bytes gives all sixteen
/// rows' block sums at once, with no horizontal sum (docs/ENGINE.md, "Matrix
/// products"). The order of the additions inside a block does not matter: they are
/// integers. Q8_0 keeps a byte per weight; Q4_1 keeps groups 2k and 2k + 1 in the low
/// and high nibbles of the same 64 bytes, half the memory a step streams through.
pub struct Matrix {
    kind: Kind,
    rows: usize,
    cols: usize,
    /// One byte per weight, interleaved as above: Q4_1's 0..=15, or Q8_0's i8 as u8.
    q: Vec<u8>,
    /// Per `[tile][block][row]`: the scale d.
    d: Vec<f32>,
    /// Per `[tile][block][row]`: Q4_1's minimum m (empty for Q8_0).
    m: Vec<f32>,
    /// Per `[tile][block][row]`: Q8_0's Σq, which undoes the +128 that lets VNNI take
    /// the activations as its unsigned operand (empty for Q4_1).
    qsum: Vec<i32>,
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Where weight (row `r`, column `c`) lives in the interleaved bytes of a matrix of
/// `kind` with `nb` blocks per row: the byte, and the shift of its nibble (Q4_1).
fn q_at(kind: Kind, nb: usize, r: usize, c: usize) -> (usize, u32) {
    let (t, row) = (r / TILE, r % TILE);
    let (b, g, j) = (c / BLOCK, c % BLOCK / GROUP, c % GROUP);
    let base = (t * nb + b) * block_bytes(kind);
    match kind {
        Kind::Q8_0 => (base + (g * TILE + row) * GROUP + j, 0),
        Kind::Q4_1 => (base + (g / 2 * TILE + row) * GROUP + j, 4 * (g % 2) as u32),
    }
}

/// Where block `b` of row `r`'s scale lives.
fn s_at(nb: usize, r: usize, b: usize) -> usize {
    (r / TILE * nb + b) * TILE + r % TILE
}

impl Matrix {
    /// The tensor `name` of `rows` x `cols` (GGUF dims `[cols, rows]`), Q4_1 or Q8_0.
    pub fn load(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Matrix, GgufError> {
        let dims = [cols as u64, rows as u64];
        let info = g
            .tensor(name)
            .ok_or_else(|| GgufError::NoTensor(name.into()))?;
        if !cols.is_multiple_of(BLOCK) {
            return Err(GgufError::Tensor {
                name: name.into(),
                why: format!("{cols} columns are not whole blocks of {BLOCK}"),
            });
        }
        let kind = match info.ty {
            TensorType::Q4_1 => Kind::Q4_1,
            TensorType::Q8_0 => Kind::Q8_0,
            other => {
                return Err(GgufError::Unsupported(format!(
                    "type {other:?} of tensor {name} (Q4_1 and Q8_0 are)"
                )))
            }
        };
        // Nothing is allocated before the file is known to hold the tensor's bytes: the
        // sizes come from the file, and the bytes bound them.
        let bytes = g.tensor_bytes(name, info.ty, &dims)?;
        Ok(Matrix::from_blocks(kind, rows, cols, &bytes))
    }

    /// The matrix of `rows` x `cols` whose GGUF blocks are `bytes` (which must hold
    /// exactly that many blocks of `kind`).
    fn from_blocks(kind: Kind, rows: usize, cols: usize, bytes: &[u8]) -> Matrix {
        let nb = cols / BLOCK;
        let padded = rows.div_ceil(TILE) * TILE;
        let mut m = Matrix {
            kind,
            rows,
            cols,
            q: vec![0; padded * nb * block_bytes(kind) / TILE],
            d: vec![0.0; padded * nb],
            m: Vec::new(),
            qsum: Vec::new(),
        };
        match kind {
            Kind::Q4_1 => {
                m.m = vec![0.0; padded * nb];
                for (i, blk) in bytes.chunks_exact(20).enumerate() {
                    let (r, b) = (i / nb, i % nb);
                    m.d[s_at(nb, r, b)] = half(blk, 0);
                    m.m[s_at(nb, r, b)] = half(blk, 2);
                    for (j, &x) in blk[4..20].iter().enumerate() {
                        for (c, v) in [(j, x & 15), (j + 16, x >> 4)] {
                            let (at, shift) = q_at(kind, nb, r, b * BLOCK + c);
                            m.q[at] |= v << shift;
                        }
                    }
                }
            }
            Kind::Q8_0 => {
                m.qsum = vec![0; padded * nb];
                for (i, blk) in bytes.chunks_exact(34).enumerate() {
                    let (r, b) = (i / nb, i % nb);
                    m.d[s_at(nb, r, b)] = half(blk, 0);
                    for (j, &x) in blk[2..34].iter().enumerate() {
                        m.q[q_at(kind, nb, r, b * BLOCK + j).0] = x;
                        m.qsum[s_at(nb, r, b)] += x as i8 as i32;
                    }
                }
            }
        }
        m
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
        for (c, o) in out[..self.cols].iter_mut().enumerate() {
            let (byte, shift) = q_at(self.kind, nb, r, c);
            let q = self.q[byte];
            let at = s_at(nb, r, c / BLOCK);
            let d = self.d[at];
            *o = match self.kind {
                Kind::Q8_0 => d * (q as i8 as f32),
                Kind::Q4_1 => d * (q >> shift & 15) as f32 + self.m[at],
            };
        }
    }

    /// The matrix as a device takes it (`device/kernels.cu`): one byte per weight in
    /// row-major order (Q4_1's 0..=15, or Q8_0's i8 as u8), and per `[row][block]` the
    /// scale d and (Q4_1) the minimum m; with whether it is Q8_0.
    pub(crate) fn plain(&self) -> (bool, Vec<u8>, Vec<f32>, Vec<f32>) {
        let nb = self.cols / BLOCK;
        let mut q = Vec::with_capacity(self.rows * self.cols);
        let (mut d, mut m) = (Vec::with_capacity(self.rows * nb), Vec::new());
        for r in 0..self.rows {
            for c in 0..self.cols {
                let (byte, shift) = q_at(self.kind, nb, r, c);
                q.push(self.q[byte] >> shift & if self.kind == Kind::Q4_1 { 15 } else { 255 });
            }
            for b in 0..nb {
                d.push(self.d[s_at(nb, r, b)]);
                if self.kind == Kind::Q4_1 {
                    m.push(self.m[s_at(nb, r, b)]);
                }
            }
        }
        (self.kind == Kind::Q8_0, q, d, m)
    }

    /// `out[s * rows + r]` = row r · stream s's activations. Tiles of rows are split
    /// over rayon's threads; each output is computed alone, so the split changes
    /// nothing.
    pub fn mul(&self, x: &QuantAct, out: &mut [f32], isa: Isa) {
        let n = x.streams;
        assert_eq!(x.cols, self.cols, "activation width");
        assert!(out.len() >= n * self.rows, "output room");
        let isa = isa.usable();
        let tiles = self.rows.div_ceil(TILE);
        // Tiles per task: enough work to be worth a hand-off, at least 16 tasks.
        let per = (tiles / 16).clamp(1, 8);
        let dst = Dst(out.as_mut_ptr());
        (0..tiles.div_ceil(per)).into_par_iter().for_each(|task| {
            let dst = &dst;
            let t1 = ((task + 1) * per).min(tiles);
            let mut isum = vec![0i32; self.cols / BLOCK * TILE];
            for t in task * per..t1 {
                let live = (self.rows - t * TILE).min(TILE);
                for s in 0..n {
                    let acc = self.tile(x, t, s, &mut isum, isa);
                    // SAFETY: `out` holds n * rows values (asserted above) and outlives
                    // this call; task `task` writes only rows [task*per*TILE,
                    // t1*TILE) of each stream, which no other task writes, and nothing
                    // reads `out` until every task is done.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            acc.as_ptr(),
                            dst.0.add(s * self.rows + t * TILE),
                            live,
                        )
                    }
                }
            }
        });
    }

    /// The 16 outputs of tile `t` for stream `s`: the block sums, then the blocks
    /// combined in block order, each lane (row) in the scalar order of the spec.
    #[inline]
    fn tile(&self, x: &QuantAct, t: usize, s: usize, isum: &mut [i32], isa: Isa) -> [f32; TILE] {
        let nb = self.cols / BLOCK;
        let bb = block_bytes(self.kind);
        let w = &self.q[t * nb * bb..(t + 1) * nb * bb];
        let a = &x.q[s * self.cols..(s + 1) * self.cols];
        match (self.kind, isa) {
            #[cfg(target_arch = "x86_64")]
            (Kind::Q4_1, Isa::Avx512) => {
                // SAFETY: `isa` came from `Isa::usable`, so the CPU has AVX-512 F, BW
                // and VNNI; the kernel checks its slices' lengths.
                unsafe { x86::sums_u4_avx512(w, a, isum) }
            }
            #[cfg(target_arch = "x86_64")]
            (Kind::Q8_0, Isa::Avx512) => {
                let au = &x.u[s * self.cols..(s + 1) * self.cols];
                let qs = &self.qsum[t * nb * TILE..(t + 1) * nb * TILE];
                // SAFETY: as above.
                unsafe { x86::sums_i8_avx512(w, au, qs, isum) }
            }
            #[cfg(target_arch = "x86_64")]
            (Kind::Q4_1, Isa::Avx2) => {
                // SAFETY: `isa` came from `Isa::usable`, so the CPU has AVX2; the
                // kernel checks its slices' lengths.
                unsafe { x86::sums_u4_avx2(w, a, isum) }
            }
            #[cfg(target_arch = "x86_64")]
            (Kind::Q8_0, Isa::Avx2) => {
                // SAFETY: as above.
                unsafe { x86::sums_i8_avx2(w, a, isum) }
            }
            (Kind::Q4_1, _) => sums_u4(w, a, isum),
            (Kind::Q8_0, _) => sums_i8(w, a, isum),
        }
        let at = t * nb * TILE;
        let (ad, asum) = (&x.d[s * nb..(s + 1) * nb], &x.s[s * nb..(s + 1) * nb]);
        let wd = &self.d[at..at + nb * TILE];
        run_on(
            isa,
            #[inline(always)]
            || {
                let mut acc = [0.0f32; TILE];
                match self.kind {
                    Kind::Q4_1 => {
                        let wm = &self.m[at..at + nb * TILE];
                        for b in 0..nb {
                            let (d, m) = (&wd[b * TILE..][..TILE], &wm[b * TILE..][..TILE]);
                            let is = &isum[b * TILE..][..TILE];
                            for l in 0..TILE {
                                acc[l] += (d[l] * ad[b]) * is[l] as f32 + m[l] * asum[b];
                            }
                        }
                    }
                    Kind::Q8_0 => {
                        for b in 0..nb {
                            let d = &wd[b * TILE..][..TILE];
                            let is = &isum[b * TILE..][..TILE];
                            for l in 0..TILE {
                                acc[l] += (d[l] * ad[b]) * is[l] as f32;
                            }
                        }
                    }
                }
                acc
            },
        )
    }
}

/// Where `Matrix::mul`'s tasks write their disjoint rows.
struct Dst(*mut f32);

// SAFETY: the pointer is only written through, by tasks whose rows do not overlap
// (see `Matrix::mul`), while the slice it came from is borrowed mutably by that call.
unsafe impl Sync for Dst {}

/// The block sums of one tile for one stream, `isum[block][row]`, portably: Σ over the
/// block's columns of weight times activation, as integers (any order gives the same).
/// Q8_0: a signed byte per weight.
#[inline]
fn sums_i8(w: &[u8], a: &[i8], isum: &mut [i32]) {
    for ((wb, ab), out) in w
        .chunks_exact(TILE_BLOCK)
        .zip(a.chunks_exact(BLOCK))
        .zip(isum.chunks_exact_mut(TILE))
    {
        let mut acc = [0i32; TILE];
        for (wg, ag) in wb.chunks_exact(TILE * GROUP).zip(ab.chunks_exact(GROUP)) {
            for (l, wl) in wg.chunks_exact(GROUP).enumerate() {
                for j in 0..GROUP {
                    acc[l] += wl[j] as i8 as i32 * ag[j] as i32;
                }
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// The same for Q4_1: the low nibbles of each 64 bytes are group 2k, the high ones
/// group 2k + 1.
#[inline]
fn sums_u4(w: &[u8], a: &[i8], isum: &mut [i32]) {
    for ((wb, ab), out) in w
        .chunks_exact(TILE_BLOCK / 2)
        .zip(a.chunks_exact(BLOCK))
        .zip(isum.chunks_exact_mut(TILE))
    {
        let mut acc = [0i32; TILE];
        for (wg, ag) in wb
            .chunks_exact(TILE * GROUP)
            .zip(ab.chunks_exact(2 * GROUP))
        {
            // Both nibbles unpacked first: the loops below then vectorise as Q8_0's do.
            let (mut lo, mut hi) = ([0u8; TILE * GROUP], [0u8; TILE * GROUP]);
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(wg) {
                (*l, *h) = (x & 15, x >> 4);
            }
            for (l, (wl, wh)) in lo
                .chunks_exact(GROUP)
                .zip(hi.chunks_exact(GROUP))
                .enumerate()
            {
                for j in 0..GROUP {
                    acc[l] += wl[j] as i32 * ag[j] as i32 + wh[j] as i32 * ag[GROUP + j] as i32;
                }
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// The x86 kernels of `sums_u4` and `sums_i8`: the same integers, a tile's 16 rows in one or two vectors.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, GROUP, TILE, TILE_BLOCK};
    use std::arch::x86_64::*;

    /// The four activation bytes of group `g` as one 32-bit lane value.
    #[inline(always)]
    fn group(a: &[i8], g: usize) -> i32 {
        let a = &a[g * GROUP..g * GROUP + GROUP];
        i32::from_le_bytes([a[0] as u8, a[1] as u8, a[2] as u8, a[3] as u8])
    }

    /// The same for the offset activations.
    #[inline(always)]
    fn group_u(a: &[u8], g: usize) -> i32 {
        let a = &a[g * GROUP..g * GROUP + GROUP];
        i32::from_le_bytes([a[0], a[1], a[2], a[3]])
    }

    /// The bounds every kernel's unchecked loads rely on: `a` activations, whole
    /// blocks, `per` weight bytes a block.
    fn check(w: &[u8], a: usize, per: usize, isum: &[i32]) {
        let nb = a / BLOCK;
        assert!(a.is_multiple_of(BLOCK) && w.len() == nb * per && isum.len() >= nb * TILE);
    }

    /// Q4_1: VNNI multiplies the unsigned weights (0..=15) by the signed activations;
    /// each 64 bytes hold two groups, in their low and high nibbles.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn sums_u4_avx512(w: &[u8], a: &[i8], isum: &mut [i32]) {
        check(w, a.len(), TILE_BLOCK / 2, isum);
        let low = _mm512_set1_epi8(15);
        for b in 0..a.len() / BLOCK {
            let mut acc = _mm512_setzero_si512();
            for k in 0..BLOCK / GROUP / 2 {
                // SAFETY: `check` bounds every block's 256 bytes inside `w`.
                let v = unsafe {
                    _mm512_loadu_si512(w.as_ptr().add(b * TILE_BLOCK / 2 + k * 64) as *const _)
                };
                let lo = _mm512_and_si512(v, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                let ab = &a[b * BLOCK..];
                acc = _mm512_dpbusd_epi32(acc, lo, _mm512_set1_epi32(group(ab, 2 * k)));
                acc = _mm512_dpbusd_epi32(acc, hi, _mm512_set1_epi32(group(ab, 2 * k + 1)));
            }
            // SAFETY: `check` bounds isum[b * 16..][..16].
            unsafe { _mm512_storeu_si512(isum.as_mut_ptr().add(b * TILE) as *mut _, acc) }
        }
    }

    /// Q8_0: VNNI needs one unsigned operand, so the activations go in as q + 128
    /// (`au`), and 128 Σw is taken off again.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn sums_i8_avx512(w: &[u8], au: &[u8], qsum: &[i32], isum: &mut [i32]) {
        check(w, au.len(), TILE_BLOCK, isum);
        assert!(qsum.len() == isum.len());
        for b in 0..au.len() / BLOCK {
            let mut acc = _mm512_setzero_si512();
            for g in 0..BLOCK / GROUP {
                // SAFETY: as in `sums_u4_avx512`.
                let wv = unsafe {
                    _mm512_loadu_si512(w.as_ptr().add(b * TILE_BLOCK + g * 64) as *const _)
                };
                let av = _mm512_set1_epi32(group_u(&au[b * BLOCK..], g));
                acc = _mm512_dpbusd_epi32(acc, av, wv);
            }
            // SAFETY: `check` and the assert bound [b * 16..][..16] of both.
            unsafe {
                let qs = _mm512_loadu_si512(qsum.as_ptr().add(b * TILE) as *const _);
                let fix = _mm512_slli_epi32::<7>(qs);
                _mm512_storeu_si512(
                    isum.as_mut_ptr().add(b * TILE) as *mut _,
                    _mm512_sub_epi32(acc, fix),
                )
            }
        }
    }

    /// Q4_1 on AVX2: maddubs gives 16-bit pair sums (at most 2 * 15 * 127); eight groups
    /// of them stay below 2^15 (16 * 15 * 127 = 30,480), so they are added as 16-bit
    /// lanes and widened once per block. Each 32 bytes are eight rows of two groups.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sums_u4_avx2(w: &[u8], a: &[i8], isum: &mut [i32]) {
        check(w, a.len(), TILE_BLOCK / 2, isum);
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(15);
        for b in 0..a.len() / BLOCK {
            let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for k in 0..BLOCK / GROUP / 2 {
                let p = w.as_ptr().wrapping_add(b * TILE_BLOCK / 2 + k * 64);
                // SAFETY: `check` bounds every block's 256 bytes inside `w`.
                let (v0, v1) = unsafe {
                    (
                        _mm256_loadu_si256(p as *const _),
                        _mm256_loadu_si256(p.add(32) as *const _),
                    )
                };
                let ab = &a[b * BLOCK..];
                let (a0, a1) = (
                    _mm256_set1_epi32(group(ab, 2 * k)),
                    _mm256_set1_epi32(group(ab, 2 * k + 1)),
                );
                for (acc, v) in [(&mut lo, v0), (&mut hi, v1)] {
                    let wl = _mm256_and_si256(v, low);
                    let wh = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                    *acc = _mm256_add_epi16(*acc, _mm256_maddubs_epi16(wl, a0));
                    *acc = _mm256_add_epi16(*acc, _mm256_maddubs_epi16(wh, a1));
                }
            }
            // SAFETY: `check` bounds isum[b * 16..][..16].
            unsafe {
                let o = isum.as_mut_ptr().add(b * TILE);
                _mm256_storeu_si256(o as *mut _, _mm256_madd_epi16(lo, ones));
                _mm256_storeu_si256(o.add(8) as *mut _, _mm256_madd_epi16(hi, ones));
            }
        }
    }

    /// Q8_0 on AVX2: maddubs takes |w| as the unsigned operand and the activation with
    /// w's sign (|a| <= 127, so nothing overflows: 2 * 128 * 127 < 2^15), widened at
    /// every group.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sums_i8_avx2(w: &[u8], a: &[i8], isum: &mut [i32]) {
        check(w, a.len(), TILE_BLOCK, isum);
        let ones = _mm256_set1_epi16(1);
        for b in 0..a.len() / BLOCK {
            let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for g in 0..BLOCK / GROUP {
                let p = w.as_ptr().wrapping_add(b * TILE_BLOCK + g * 64);
                // SAFETY: `check` bounds every block's 512 bytes inside `w`.
                let (w0, w1) = unsafe {
                    (
                        _mm256_loadu_si256(p as *const _),
                        _mm256_loadu_si256(p.add(32) as *const _),
                    )
                };
                let av = _mm256_set1_epi32(group(&a[b * BLOCK..], g));
                let d0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(av, w0));
                let d1 = _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(av, w1));
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(d0, ones));
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(d1, ones));
            }
            // SAFETY: `check` bounds isum[b * 16..][..16].
            unsafe {
                let o = isum.as_mut_ptr().add(b * TILE);
                _mm256_storeu_si256(o as *mut _, lo);
                _mm256_storeu_si256(o.add(8) as *mut _, hi);
            }
        }
    }
}

/// The activations of `streams` vectors of `cols` values, quantized to 8 bits per
/// block of 32: q = round(x / d) with d = max|x| / 127 (ties away from zero), d kept
/// as the nearest f16, and s = d * Σq (as f16) for Q4_1's minimum term.
pub struct QuantAct {
    streams: usize,
    cols: usize,
    q: Vec<i8>,
    /// q + 128 as u8: the unsigned operand VNNI needs against Q8_0's signed weights.
    u: Vec<u8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl QuantAct {
    /// Room for up to `streams` vectors of `cols` values.
    pub fn new(streams: usize, cols: usize) -> QuantAct {
        QuantAct {
            streams,
            cols,
            q: vec![0; streams * cols],
            u: vec![128; streams * cols],
            d: vec![0.0; streams * cols / BLOCK],
            s: vec![0.0; streams * cols / BLOCK],
        }
    }

    /// Quantizes `x`: whole vectors of `cols`, one after the other, at most as many as
    /// there is room for.
    pub fn set(&mut self, x: &[f32], isa: Isa) {
        assert!(
            x.len().is_multiple_of(self.cols) && x.len() <= self.q.len(),
            "activations fit"
        );
        self.streams = x.len() / self.cols;
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
                for (u, &q) in self.u.iter_mut().zip(&self.q[..x.len()]) {
                    *u = q as u8 ^ 0x80;
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::num::f32_to_f16;
    use proptest::prelude::*;

    /// GGUF blocks of `kind` for a `rows` x `cols` matrix, from a seed.
    fn blocks(kind: Kind, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let mut out = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let d = (next() % 1000) as f32 / 50_000.0;
            out.extend(f32_to_f16(d).to_le_bytes());
            match kind {
                Kind::Q4_1 => {
                    let m = -((next() % 1000) as f32) / 20_000.0;
                    out.extend(f32_to_f16(m).to_le_bytes());
                    out.extend((0..16).map(|_| next() as u8));
                }
                // Q8_0's whole range, -128 included.
                Kind::Q8_0 => out.extend((0..32).map(|_| next() as u8)),
            }
        }
        out
    }

    /// The spec's matrix product written out plainly, row by row from the GGUF blocks:
    /// the reference every kernel must match bit for bit.
    fn reference(kind: Kind, rows: usize, cols: usize, raw: &[u8], x: &QuantAct) -> Vec<f32> {
        let nb = cols / BLOCK;
        let size = if kind == Kind::Q4_1 { 20 } else { 34 };
        let mut out = vec![0.0; x.streams * rows];
        for s in 0..x.streams {
            for r in 0..rows {
                let mut acc = 0.0f32;
                for b in 0..nb {
                    let blk = &raw[(r * nb + b) * size..][..size];
                    let a = &x.q[s * cols + b * BLOCK..][..BLOCK];
                    let (ad, asum) = (x.d[s * nb + b], x.s[s * nb + b]);
                    let d = half(blk, 0);
                    match kind {
                        Kind::Q4_1 => {
                            let isum: i32 = (0..BLOCK)
                                .map(|j| {
                                    let q = blk[4 + j % 16];
                                    let q = if j < 16 { q & 15 } else { q >> 4 };
                                    q as i32 * a[j] as i32
                                })
                                .sum();
                            acc += (d * ad) * isum as f32 + half(blk, 2) * asum;
                        }
                        Kind::Q8_0 => {
                            let isum: i32 = (0..BLOCK)
                                .map(|j| blk[2 + j] as i8 as i32 * a[j] as i32)
                                .sum();
                            acc += (d * ad) * isum as f32;
                        }
                    }
                }
                out[s * rows + r] = acc;
            }
        }
        out
    }

    fn acts(streams: usize, cols: usize, seed: u64) -> (Vec<f32>, QuantAct) {
        let x: Vec<f32> = (0..streams * cols)
            .map(|i| ((i as u64 * 37 + seed) % 101) as f32 / 17.0 - 2.9)
            .collect();
        let mut a = QuantAct::new(streams, cols);
        a.set(&x, Isa::Scalar);
        (x, a)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every kernel on this CPU gives the reference's bits, with rows that do not
        /// fill the last tile and with Q8_0's -128.
        #[test]
        fn every_kernel_gives_the_reference_bits(
            q4 in any::<bool>(),
            rows in 1usize..50,
            nb in 1usize..6,
            streams in 1usize..5,
            seed in any::<u64>(),
        ) {
            let kind = if q4 { Kind::Q4_1 } else { Kind::Q8_0 };
            let cols = nb * BLOCK;
            let raw = blocks(kind, rows, cols, seed);
            let m = Matrix::from_blocks(kind, rows, cols, &raw);
            let (_, a) = acts(streams, cols, seed);
            let want = reference(kind, rows, cols, &raw, &a);
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; streams * rows];
                m.mul(&a, &mut out, isa);
                prop_assert!(
                    out.iter().map(|v| v.to_bits()).eq(want.iter().map(|v| v.to_bits())),
                    "{:?} {:?}", isa, kind
                );
            }
            let mut row = vec![0.0; cols];
            let r = rows - 1;
            m.dequant_row(r, &mut row);
            let nbr = cols / BLOCK;
            let size = if q4 { 20 } else { 34 };
            for (c, &v) in row.iter().enumerate() {
                let blk = &raw[(r * nbr + c / BLOCK) * size..][..size];
                let j = c % BLOCK;
                let w = if q4 {
                    let q = blk[4 + j % 16];
                    half(blk, 0) * (if j < 16 { q & 15 } else { q >> 4 }) as f32 + half(blk, 2)
                } else {
                    half(blk, 0) * (blk[2 + j] as i8 as f32)
                };
                prop_assert_eq!(v.to_bits(), w.to_bits());
            }
        }
    }

    #[test]
    fn quantized_dot_products_are_close_to_the_float_ones() {
        let (rows, cols) = (3, 96);
        let raw = blocks(Kind::Q8_0, rows, cols, 7);
        let m = Matrix::from_blocks(Kind::Q8_0, rows, cols, &raw);
        let (x, a) = acts(2, cols, 3);
        let mut out = vec![0.0; 2 * rows];
        m.mul(&a, &mut out, Isa::Scalar);
        let mut w = vec![0.0; cols];
        for r in 0..rows {
            m.dequant_row(r, &mut w);
            for s in 0..2 {
                let want: f32 = (0..cols).map(|j| w[j] * x[s * cols + j]).sum();
                let got = out[s * rows + r];
                let scale: f32 = (0..cols).map(|j| (w[j] * x[s * cols + j]).abs()).sum();
                assert!((got - want).abs() < 0.02 * scale.max(1e-3), "{got} {want}");
            }
        }
    }
}
