//! Quantised cumulative distributions over a whole vocabulary.
//!
//! A distribution of `n` symbols becomes integer counts summing to exactly 2^bits (the
//! [`Precision`]) with a floor of one count per symbol, so no symbol is ever uncodable.
//! The floors cost about `n / 2^bits * log2(e)` bits per token: with 49,152 symbols and
//! 2^24 that is 0.004, but with Gemma's 262,144 it is 0.023, so vocabularies over 2^16
//! get 2^28 (0.0014 bits per token).
//!
//! The float work is IEEE-754 f32 add/mul/convert only, in a fixed order: no platform
//! `exp`, no fused multiply-add (Rust never contracts), no order-dependent reductions
//! (sums go through eight fixed lanes). Encoder and decoder therefore agree to the bit,
//! whichever instruction set [`crate::simd`] picks for the loops.

use crate::simd;

/// The bits of a CDF's total: its counts sum to 2^bits. Part of the format, since the
/// coder's interval arithmetic depends on it: blobs record it (docs/FORMAT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Precision(u8);

impl Precision {
    /// What every blob before container version 3 was coded with.
    pub const DEFAULT: Precision = Precision(24);
    /// The most the coder allows: after renormalisation its range exceeds 2^30, so a
    /// one-count symbol out of 2^28 still keeps an interval of at least 4 values.
    pub const MAX: Precision = Precision(28);
    /// The least a blob may ask for.
    pub const MIN: Precision = Precision(16);
    /// Vocabularies up to this size keep [`Precision::DEFAULT`] (so SmolLM2's blobs stay
    /// as they were); larger ones get [`Precision::MAX`].
    pub const DEFAULT_MAX_VOCAB: usize = 1 << 16;

    /// The precision of `bits`, if the coder supports it.
    pub fn new(bits: u8) -> Option<Precision> {
        (Self::MIN.0..=Self::MAX.0)
            .contains(&bits)
            .then_some(Precision(bits))
    }

    /// The precision a writer uses for a vocabulary of `n` tokens.
    pub fn for_vocab(n: usize) -> Precision {
        if n <= Self::DEFAULT_MAX_VOCAB {
            Self::DEFAULT
        } else {
            Self::MAX
        }
    }

    /// The exponent.
    pub fn bits(self) -> u32 {
        self.0 as u32
    }

    /// The sum of a CDF's counts, 2^bits.
    pub fn total(self) -> u32 {
        1 << self.0
    }
}

impl Default for Precision {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Cumulative counts: `cum[s]..cum[s + 1]` is symbol `s`'s interval, and `cum[n]` is the
/// precision's total.
#[derive(Clone, Debug, Default)]
pub struct Cdf {
    cum: Vec<u32>,
    precision: Precision,
}

/// A distribution that cannot be quantised (more symbols than half the total, none, or
/// counts that are not a valid distribution).
#[derive(Debug, thiserror::Error)]
#[error("cannot quantise a distribution of {symbols} symbols to 2^{bits} counts")]
pub struct CdfError {
    symbols: usize,
    bits: u32,
}

/// Fixed lanes of the vectorised sums and maxima (a fixed order of operations).
pub const LANES: usize = 8;

/// 2^x for x <= 0, branch-free so the loops around it vectorise: the nearest integer
/// (found with the 1.5 * 2^23 rounding trick) goes into the exponent bits, the fraction
/// in [-0.5, 0.5] through a degree-6 Taylor polynomial (relative error < 2e-7).
/// Inputs under -125 (and NaN) are clamped to -125, i.e. about 2.4e-38.
#[inline(always)]
pub fn exp2_neg(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.max(-125.0); // f32::max returns the non-NaN operand
    let t = x + ROUND;
    let r = t - ROUND; // x rounded to the nearest integer
    let i = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let f = x - r;
    // The coefficients are part of the format: written out as they were first
    // rounded, never replaced by a library constant that might round otherwise.
    #[allow(clippy::approx_constant, clippy::excessive_precision)]
    const C: [f32; 6] = [
        0.693_147_18,
        0.240_226_51,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
    ];
    let p = 1.0 + f * (C[0] + f * (C[1] + f * (C[2] + f * (C[3] + f * (C[4] + f * C[5])))));
    p * f32::from_bits((i.wrapping_add(127) as u32) << 23)
}

/// log2(x) for x > 0 from the exponent bits and a polynomial in the mantissa
/// (absolute error < 1e-4 bits); deterministic, unlike the platform's `log2`.
/// Non-positive or NaN inputs give -126.
#[inline]
pub fn log2_pos(x: f32) -> f32 {
    if !(x >= f32::MIN_POSITIVE) {
        return -126.0;
    }
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    // Mantissa m in [1, 2); use log2(m) = 2 * atanh((m - 1) / (m + 1)) / ln 2.
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let series =
        z * (2.0 + z2 * (0.666_666_7 + z2 * (0.4 + z2 * (0.285_714_3 + z2 * 0.222_222_2))));
    e as f32 + series * std::f32::consts::LOG2_E
}

/// Writes softmax(`logits` / `temperature`) (unnormalised: the maximum maps to 1.0) into
/// `out`, and returns the sum of `out`.
pub fn softmax_into(logits: &[f32], temperature: f32, out: &mut Vec<f32>) -> f32 {
    simd::dispatch(
        #[inline(always)]
        || softmax_impl(logits, temperature, out),
    )
}

#[inline(always)]
fn softmax_impl(logits: &[f32], temperature: f32, out: &mut Vec<f32>) -> f32 {
    out.clear();
    out.resize(logits.len(), 0.0);
    let max = lane_max_impl(logits);
    if !max.is_finite() {
        // Degenerate model output: fall back to uniform, identically on both sides.
        out.iter_mut().for_each(|p| *p = 1.0);
        return logits.len() as f32;
    }
    let k = std::f32::consts::LOG2_E / temperature;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = exp2_neg((l - max) * k);
    }
    fixed_sum_impl(out)
}

/// The maximum of `v` (NaN ignored), through eight fixed lanes so it vectorises.
pub fn lane_max(v: &[f32]) -> f32 {
    simd::dispatch(
        #[inline(always)]
        || lane_max_impl(v),
    )
}

#[inline(always)]
pub(crate) fn lane_max_impl(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            lanes[j] = lanes[j].max(c[j]);
        }
    }
    for (j, &x) in chunks.remainder().iter().enumerate() {
        lanes[j] = lanes[j].max(x);
    }
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// Sums `v` through eight fixed f64 lanes: a fixed order (so encoder and decoder agree)
/// and f64 accumulation (an f32 sum of 49,152 similar terms is off by ~1e-3, which the
/// CDF would dump on one symbol).
pub fn fixed_sum(v: &[f32]) -> f32 {
    simd::dispatch(
        #[inline(always)]
        || fixed_sum_impl(v),
    )
}

#[inline(always)]
fn fixed_sum_impl(v: &[f32]) -> f32 {
    let mut lanes = [0.0f64; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            lanes[j] += c[j] as f64;
        }
    }
    for (j, &x) in chunks.remainder().iter().enumerate() {
        lanes[j] += x as f64;
    }
    lane_total(&lanes) as f32
}

/// The sum of eight f64 lanes, in a fixed pairwise order.
pub fn lane_total(l: &[f64; LANES]) -> f64 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

impl Cdf {
    /// An empty CDF whose distributions will have `precision`.
    pub fn with_precision(precision: Precision) -> Cdf {
        Cdf {
            cum: Vec::new(),
            precision,
        }
    }

    /// Quantises non-negative weights `w` whose sum is `sum` (as returned by
    /// [`softmax_into`] or [`fixed_sum`]) to `precision`. Every symbol gets
    /// `1 + round(w * scale)` counts (rounding, not flooring, so the total lands within a
    /// few counts of 2^bits); the slack goes to (or comes from) the most probable symbol.
    pub fn from_weights(w: &[f32], sum: f32, precision: Precision) -> Result<Cdf, CdfError> {
        let mut cdf = Cdf::with_precision(precision);
        cdf.set_weights(w, sum)?;
        Ok(cdf)
    }

    /// Like [`Cdf::from_weights`] at this CDF's precision, reusing its allocation.
    pub fn set_weights(&mut self, w: &[f32], sum: f32) -> Result<(), CdfError> {
        simd::dispatch(
            #[inline(always)]
            || self.set_weights_impl(w, sum),
        )
    }

    #[inline(always)]
    fn set_weights_impl(&mut self, w: &[f32], sum: f32) -> Result<(), CdfError> {
        let n = w.len();
        let total = self.precision.total();
        if n == 0 || n as u64 > (total / 2) as u64 {
            return Err(CdfError {
                symbols: n,
                bits: self.precision.bits(),
            });
        }
        let spare = (total - n as u32) as f32;
        let scale = if sum > 0.0 && sum.is_finite() {
            spare / sum
        } else {
            0.0
        };
        let cap = total as f32;
        self.cum.clear();
        self.cum.resize(n + 1, 0);
        // Counts first, then the heaviest symbol (the first of equals; it absorbs the
        // rounding slack below and holds at least spare / n counts), then the running
        // sum: three loops that vectorise or are one add a symbol. Nothing here can
        // overflow (counts are at most 2^28 + 1), so the adds wrap rather than check,
        // which would stop the vectoriser in a build with overflow checks.
        for (c, &x) in self.cum[1..].iter_mut().zip(w) {
            // f32::min/max return the non-NaN operand, so NaN weights become the cap.
            let v = (x * scale + 0.5).min(cap).max(0.0);
            // SAFETY: v is finite and in [0, 2^28] after the clamps above.
            *c = (unsafe { v.to_int_unchecked::<i32>() } as u32).wrapping_add(1);
        }
        let counts = &self.cum[1..];
        let mut lanes = [0u32; LANES];
        let mut chunks = counts.chunks_exact(LANES);
        for c in &mut chunks {
            for j in 0..LANES {
                lanes[j] = lanes[j].max(c[j]);
            }
        }
        let best_c = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(0, |a, &b| a.max(b));
        let best = counts.iter().position(|&c| c == best_c).unwrap_or(0);
        let mut acc = 0u64;
        for c in &mut self.cum[1..] {
            acc = acc.wrapping_add(*c as u64);
            *c = acc as u32;
        }
        let diff = total as i64 - acc as i64;
        if diff != 0 {
            let best_f = self.cum[best + 1].wrapping_sub(self.cum[best]) as i64;
            if acc > 2 * total as u64 || best_f + diff < 1 {
                // Only reachable when `sum` is not the sum of `w`: fall back to uniform.
                let uniform: Vec<u32> = (0..n)
                    .map(|i| total / n as u32 + u32::from((i as u32) < total % n as u32))
                    .collect();
                self.set_freqs(&uniform);
                return Ok(());
            }
            for c in &mut self.cum[best + 1..] {
                *c = (*c as i64 + diff) as u32;
            }
        }
        debug_assert_eq!(self.cum[n], total);
        Ok(())
    }

    /// Builds a CDF from explicit counts, which must each be >= 1 and sum to 2^bits.
    pub fn from_freqs(freqs: &[u32], precision: Precision) -> Result<Cdf, CdfError> {
        let sum: u64 = freqs.iter().map(|&f| f as u64).sum();
        if freqs.is_empty() || sum != precision.total() as u64 || freqs.contains(&0) {
            return Err(CdfError {
                symbols: freqs.len(),
                bits: precision.bits(),
            });
        }
        let mut cdf = Cdf::with_precision(precision);
        cdf.set_freqs(freqs);
        Ok(cdf)
    }

    fn set_freqs(&mut self, freqs: &[u32]) {
        self.cum.clear();
        self.cum.push(0);
        let mut acc = 0u32;
        for &f in freqs {
            acc += f;
            self.cum.push(acc);
        }
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.cum.len().saturating_sub(1)
    }

    /// Whether the CDF has no symbols.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Symbol `s`'s interval `[lo, hi)`.
    #[inline]
    pub fn range(&self, s: usize) -> (u32, u32) {
        (self.cum[s], self.cum[s + 1])
    }

    /// The precision of its counts.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Probability the CDF gives symbol `s`.
    pub fn prob(&self, s: usize) -> f64 {
        let (lo, hi) = self.range(s);
        (hi - lo) as f64 / self.precision.total() as f64
    }

    /// The symbol whose interval holds `target` (`target < 2^bits`).
    #[inline]
    pub fn find(&self, target: u32) -> usize {
        // partition_point gives the first index with cum > target; the symbol is one less.
        self.cum.partition_point(|&c| c <= target) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exp2_is_accurate() {
        let mut x = -30.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp2();
            let got = exp2_neg(x) as f64;
            assert!(
                ((got - want) / want).abs() < 5e-7,
                "x={x} got={got} want={want}"
            );
            x += 0.013;
        }
        assert_eq!(exp2_neg(0.0), 1.0);
        assert!(exp2_neg(-200.0) < 1e-37);
        assert!(exp2_neg(f32::NAN) < 1e-37);
    }

    #[test]
    fn log2_is_accurate() {
        let mut x = 1e-30f32;
        while x < 1e30 {
            let err = (log2_pos(x) as f64 - (x as f64).log2()).abs();
            assert!(err < 1e-4, "x={x} err={err}");
            x *= 1.37;
        }
        assert_eq!(log2_pos(0.0), -126.0);
        assert_eq!(log2_pos(f32::NAN), -126.0);
    }

    #[test]
    fn softmax_matches_f64_reference() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
            .collect();
        let mut out = Vec::new();
        let sum = softmax_into(&logits, 1.0, &mut out);
        let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let ref_sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        assert!(((sum as f64 - ref_sum) / ref_sum).abs() < 1e-5);
    }

    #[test]
    fn nan_and_inf_logits_still_give_a_valid_cdf() {
        let logits = vec![f32::NAN, f32::INFINITY, 1.0, f32::NEG_INFINITY, 0.0];
        let mut out = Vec::new();
        let sum = softmax_into(&logits, 1.0, &mut out);
        let cdf = Cdf::from_weights(&out, sum, Precision::DEFAULT).unwrap();
        assert_eq!(cdf.range(cdf.len() - 1).1, Precision::DEFAULT.total());
        for s in 0..cdf.len() {
            let (lo, hi) = cdf.range(s);
            assert!(hi > lo);
        }
    }

    proptest! {
        #[test]
        fn weights_give_valid_cdfs(
            w in proptest::collection::vec(0.0f32..1e6, 1..5000),
            bits in Precision::MIN.bits()..=Precision::MAX.bits(),
        ) {
            let sum = fixed_sum(&w);
            let p = Precision::new(bits as u8).unwrap();
            let cdf = Cdf::from_weights(&w, sum, p).unwrap();
            prop_assert_eq!(cdf.len(), w.len());
            prop_assert_eq!(cdf.range(w.len() - 1).1, p.total());
            for s in 0..w.len() {
                let (lo, hi) = cdf.range(s);
                prop_assert!(hi > lo);
                prop_assert_eq!(cdf.find(lo), s);
                prop_assert_eq!(cdf.find(hi - 1), s);
            }
        }

        #[test]
        fn logits_give_valid_cdfs(l in proptest::collection::vec(-1e4f32..1e4, 1..3000), t in 0.1f32..4.0) {
            let mut out = Vec::new();
            let sum = softmax_into(&l, t, &mut out);
            for p in [Precision::DEFAULT, Precision::MAX] {
                let cdf = Cdf::from_weights(&out, sum, p).unwrap();
                prop_assert_eq!(cdf.range(l.len() - 1).1, p.total());
            }
        }
    }
}
