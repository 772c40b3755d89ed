//! Quantised cumulative distributions over a whole vocabulary.
//!
//! A distribution of `n` symbols becomes integer counts summing to exactly 2^24 with a
//! floor of one count per symbol, so no symbol is ever uncodable. With 49,152 symbols
//! the floors take 0.3 % of the range (about 0.004 bits per token), where a 2^16 total
//! would lose 75 % of it.
//!
//! The float work is IEEE-754 f32 add/mul/convert only, in a fixed order: no platform
//! `exp`, no fused multiply-add (Rust never contracts), no order-dependent reductions
//! (sums go through eight fixed lanes). Encoder and decoder therefore agree to the bit.

/// Bits of precision of every CDF.
pub const PRECISION_BITS: u32 = 24;
/// The sum of every CDF's counts.
pub const TOTAL: u32 = 1 << PRECISION_BITS;

/// Cumulative counts: `cum[s]..cum[s + 1]` is symbol `s`'s interval, `cum[n] == TOTAL`.
#[derive(Clone, Debug, Default)]
pub struct Cdf {
    cum: Vec<u32>,
}

/// A distribution that cannot be quantised (too many symbols for 2^24 counts, or none).
#[derive(Debug, thiserror::Error)]
#[error("cannot quantise a distribution of {symbols} symbols to 2^24 counts")]
pub struct CdfError {
    symbols: usize,
}

const LANES: usize = 8;

/// 2^x for x <= 0: the nearest integer goes into the exponent bits, the remaining
/// fraction in [-0.5, 0.5] through a degree-6 Taylor polynomial (relative error < 2e-7).
/// Inputs under -125 give 0.
#[inline(always)]
fn exp2_neg(x: f32) -> f32 {
    if x < -125.0 || x.is_nan() {
        return 0.0;
    }
    // round(x) without a libm call: truncate x - 0.5 toward zero, step down if needed.
    let y = x - 0.5;
    let mut i = y as i32;
    if (i as f32) > y {
        i -= 1;
    }
    let i = i + 1;
    let f = x - i as f32; // in [-0.5, 0.5]
    const C: [f32; 6] = [
        0.693_147_18,
        0.240_226_51,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
    ];
    let p = 1.0 + f * (C[0] + f * (C[1] + f * (C[2] + f * (C[3] + f * (C[4] + f * C[5])))));
    p * f32::from_bits(((i + 127) as u32) << 23)
}

/// Writes softmax(`logits` / `temperature`) (unnormalised: the maximum maps to 1.0) into
/// `out`, and returns the sum of `out`.
pub fn softmax_into(logits: &[f32], temperature: f32, out: &mut Vec<f32>) -> f32 {
    out.clear();
    out.resize(logits.len(), 0.0);
    let mut max = f32::NEG_INFINITY;
    for &l in logits {
        // NaN logits compare false and are ignored here; they become 0 below.
        if l > max {
            max = l;
        }
    }
    if !max.is_finite() {
        // Degenerate model output: fall back to uniform, identically on both sides.
        out.iter_mut().for_each(|p| *p = 1.0);
        return logits.len() as f32;
    }
    let k = std::f32::consts::LOG2_E / temperature;
    let mut lanes = [0.0f32; LANES];
    let mut chunks = out.chunks_exact_mut(LANES);
    let mut lchunks = logits.chunks_exact(LANES);
    for (o, l) in (&mut chunks).zip(&mut lchunks) {
        for j in 0..LANES {
            let x = (l[j] - max) * k;
            let e = exp2_neg(x);
            o[j] = e;
            lanes[j] += e;
        }
    }
    for (j, (o, l)) in chunks.into_remainder().iter_mut().zip(lchunks.remainder()).enumerate() {
        let x = (l - max) * k;
        let e = exp2_neg(x);
        *o = e;
        lanes[j] += e;
    }
    lane_sum(&lanes)
}

#[inline]
fn lane_sum(l: &[f32; LANES]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// Sums `v` in the same fixed lane order as [`softmax_into`].
pub fn fixed_sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            lanes[j] += c[j];
        }
    }
    for (j, x) in chunks.remainder().iter().enumerate() {
        lanes[j] += x;
    }
    lane_sum(&lanes)
}

impl Cdf {
    /// Quantises non-negative weights `w` whose sum is `sum` (as returned by
    /// [`softmax_into`] or [`fixed_sum`]). Every symbol gets `1 + floor(w * scale)` counts;
    /// rounding slack goes to (or comes from) the most probable symbol.
    pub fn from_weights(w: &[f32], sum: f32) -> Result<Cdf, CdfError> {
        let mut cdf = Cdf::default();
        cdf.set_weights(w, sum)?;
        Ok(cdf)
    }

    /// Like [`Cdf::from_weights`], reusing this CDF's allocation.
    pub fn set_weights(&mut self, w: &[f32], sum: f32) -> Result<(), CdfError> {
        let n = w.len();
        if n == 0 || n as u64 > (TOTAL / 2) as u64 {
            return Err(CdfError { symbols: n });
        }
        let spare = (TOTAL - n as u32) as f32;
        let scale = if sum > 0.0 && sum.is_finite() { spare / sum } else { 0.0 };
        self.cum.clear();
        self.cum.reserve(n + 1);
        self.cum.push(0);
        let mut acc: u32 = 0;
        let mut best = 0usize;
        let mut best_f = 0u32;
        for (s, &x) in w.iter().enumerate() {
            // `as u32` saturates: NaN -> 0, too large -> u32::MAX (clamped below).
            let f = 1 + ((x * scale) as u32).min(TOTAL);
            if f > best_f {
                best_f = f;
                best = s;
            }
            acc = acc.saturating_add(f);
            self.cum.push(acc);
        }
        // Float rounding leaves the total a little off 2^24: settle it on the largest symbol.
        let diff = TOTAL as i64 - acc as i64;
        if diff != 0 {
            let new_best = best_f as i64 + diff;
            if new_best < 1 {
                // Only reachable with pathological inputs; fall back to uniform-ish counts.
                let uniform: Vec<u32> = (0..n).map(|i| TOTAL / n as u32 + u32::from((i as u32) < TOTAL % n as u32)).collect();
                self.set_freqs(&uniform);
                return Ok(());
            }
            for c in &mut self.cum[best + 1..] {
                *c = (*c as i64 + diff) as u32;
            }
        }
        debug_assert_eq!(*self.cum.last().unwrap(), TOTAL);
        Ok(())
    }

    /// Builds a CDF from explicit counts, which must each be >= 1 and sum to 2^24.
    pub fn from_freqs(freqs: &[u32]) -> Result<Cdf, CdfError> {
        let sum: u64 = freqs.iter().map(|&f| f as u64).sum();
        if freqs.is_empty() || sum != TOTAL as u64 || freqs.iter().any(|&f| f == 0) {
            return Err(CdfError { symbols: freqs.len() });
        }
        let mut cdf = Cdf::default();
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Symbol `s`'s interval `[lo, hi)`.
    #[inline]
    pub fn range(&self, s: usize) -> (u32, u32) {
        (self.cum[s], self.cum[s + 1])
    }

    /// Probability the CDF gives symbol `s`.
    pub fn prob(&self, s: usize) -> f64 {
        let (lo, hi) = self.range(s);
        (hi - lo) as f64 / TOTAL as f64
    }

    /// The symbol whose interval holds `target` (`target < TOTAL`).
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
            assert!(((got - want) / want).abs() < 5e-7, "x={x} got={got} want={want}");
            x += 0.013;
        }
        assert_eq!(exp2_neg(0.0), 1.0);
        assert_eq!(exp2_neg(-200.0), 0.0);
    }

    #[test]
    fn softmax_matches_f64_reference() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0).collect();
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
        let cdf = Cdf::from_weights(&out, sum).unwrap();
        assert_eq!(cdf.range(cdf.len() - 1).1, TOTAL);
        for s in 0..cdf.len() {
            let (lo, hi) = cdf.range(s);
            assert!(hi > lo);
        }
    }

    proptest! {
        #[test]
        fn weights_give_valid_cdfs(w in proptest::collection::vec(0.0f32..1e6, 1..5000)) {
            let sum = fixed_sum(&w);
            let cdf = Cdf::from_weights(&w, sum).unwrap();
            prop_assert_eq!(cdf.len(), w.len());
            prop_assert_eq!(cdf.range(w.len() - 1).1, TOTAL);
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
            let cdf = Cdf::from_weights(&out, sum).unwrap();
            prop_assert_eq!(cdf.range(l.len() - 1).1, TOTAL);
        }
    }
}
