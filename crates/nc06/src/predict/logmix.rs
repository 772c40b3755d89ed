//! Mixing in the log domain (geometric mixing), the multi-symbol form of the logistic
//! mixing that context-mixing compressors use:
//!
//! `log2 q(t) = w0 * log2 p_llm(t) + w1 * log2 (p_ngram(t) / floor) + w2 * [t = match] + b(t) - log2 Z`
//!
//! Why not the reference's linear mix: a linear mix hands a fixed share of the
//! probability mass to the cheap models on every token, and on text the model already
//! predicts well that share is mostly wasted (measured: +0.9 % to +3.4 % bits). Here
//! the weights start at "the model alone" (w0 = 1, the rest 0) and move only as far as
//! the gradient of the code length takes them, per context set (match length x N-gram
//! order), so the mix cannot start worse than the model and learns where the cheap
//! models pay. w0 also acts as a learnt inverse temperature of the model.
//!
//! The N-gram and match model touch few tokens, so a step is one dense pass over the
//! vocabulary (exponent, sum and the expectation the gradient needs, in fixed f64
//! lanes), a sparse correction, the CDF pass, and with the bias head one dense update.
//! All in f32/f64 with a fixed order of operations and no platform `exp`/`log`.

use crate::codec::{exp2_neg, lane_max, lane_total, log2_pos, LANES};
use crate::simd;

/// Weight sets: match length bucket (8) x highest N-gram order found (0..=4 -> 4
/// buckets), and again for steps without the model (confidence skip).
const MATCH_BUCKETS: usize = 8;
const ORDER_BUCKETS: usize = 4;
const SETS: usize = MATCH_BUCKETS * ORDER_BUCKETS;
/// Largest total boost (bits) a sparse token may get, so 2^x stays finite in f32.
const BOOST_MAX: f32 = 60.0;
/// Bias head range (bits) and its offset, so every dense exponent is <= 0.
const BIAS_MAX: f32 = 4.0;
/// N-gram feature cap (bits): log2 of the ratio to its floor.
const NGRAM_FEATURE_MAX: f32 = 24.0;

/// Learning rates and limits; the defaults are the measured best (docs/BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogMixParams {
    /// Learning rate of the model's weight.
    pub lr_llm: f32,
    /// Learning rate of the N-gram's weight.
    pub lr_ngram: f32,
    /// Learning rate of the match model's weight.
    pub lr_match: f32,
    /// Learning rate of the bias head.
    pub lr_bias: f32,
    /// The N-gram's starting weight in steps with the model.
    pub w_ngram0: f32,
    /// The match model's starting weight (in every step).
    pub w_match0: f32,
    /// Confidence skip: N-gram entropy (bits) under which the model is not asked.
    pub skip_bits: f32,
}

impl Default for LogMixParams {
    fn default() -> Self {
        LogMixParams {
            lr_llm: 0.002,
            lr_ngram: 0.002,
            lr_match: 0.02,
            lr_bias: 0.002,
            w_ngram0: 0.0,
            w_match0: 0.0,
            skip_bits: 0.01,
        }
    }
}

/// Match length bucket of a match of `len` tokens (`None`: no match).
pub fn match_bucket(len: Option<usize>) -> usize {
    match len {
        None => 0,
        Some(l) if l < 6 => 1,
        Some(l) if l < 8 => 2,
        Some(l) if l < 12 => 3,
        Some(l) if l < 16 => 4,
        Some(l) if l < 24 => 5,
        Some(l) if l < 32 => 6,
        Some(_) => 7,
    }
}

/// The N-gram's say in one step: (token, probability) for the tokens it saw, its
/// uniform mass, and the highest order that had statistics.
pub type NgramInput<'a> = (&'a [(u32, f32)], f32, usize);

/// What the cheap models say about one step.
pub struct Inputs<'a> {
    /// The N-gram's prediction, if it runs.
    pub ngram: Option<NgramInput<'a>>,
    /// Match model: the predicted token and the match length.
    pub matched: Option<(u32, usize)>,
}

/// The log-domain mixer of one stream: its weight sets and bias.
pub struct LogMix {
    p: LogMixParams,
    v: usize,
    /// Per set: [w_llm, w_ngram, w_match]; sets SETS.. are for steps without the model.
    weights: Vec<[f32; 3]>,
    bias: Option<Vec<f32>>,
    /// This step: model log2-probabilities (shifted so the maximum is 0), weights of
    /// every token, their sum, and what the update needs.
    lp: Vec<f32>,
    w: Vec<f32>,
    sum: f32,
    set: usize,
    used_llm: bool,
    e_lp: f32,
    /// Sparse tokens of this step: (token, ngram feature, match feature).
    sparse: Vec<(u32, f32, f32)>,
}

impl LogMix {
    /// A mixer over a vocabulary of `v`, with or without the bias head.
    pub fn new(v: usize, bias: bool, p: LogMixParams) -> LogMix {
        LogMix {
            p,
            v,
            // With the model: the model alone. Without it (skipped steps): the N-gram
            // alone, which is what made the skip decision.
            weights: (0..2 * SETS)
                .map(|i| {
                    if i < SETS {
                        [1.0, p.w_ngram0, p.w_match0]
                    } else {
                        [1.0, 1.0, p.w_match0]
                    }
                })
                .collect(),
            bias: bias.then(|| vec![0.0; v]),
            lp: vec![0.0; v],
            w: vec![0.0; v],
            sum: 0.0,
            set: 0,
            used_llm: false,
            e_lp: 0.0,
            sparse: Vec::new(),
        }
    }

    /// The N-gram entropy, in bits, under which a step is skipped.
    pub fn skip_bits(&self) -> f32 {
        self.p.skip_bits
    }

    /// The mixed weights of every token (sum returned) for this step. `logits` is the
    /// model's output, or `None` when the step skipped it.
    pub fn predict(
        &mut self,
        logits: Option<&[f32]>,
        temperature: f32,
        inp: &Inputs<'_>,
    ) -> (&[f32], f32) {
        let order = inp
            .ngram
            .map_or(0, |(_, _, o)| o.saturating_sub(1).min(ORDER_BUCKETS - 1));
        let mbucket = match_bucket(inp.matched.map(|(_, l)| l));
        self.set = mbucket * ORDER_BUCKETS + order + if logits.is_some() { 0 } else { SETS };
        self.used_llm = logits.is_some();
        let [w0, w1, w2] = self.weights[self.set];
        let v = self.v;

        // Dense pass: w(t) = 2^(w0 * lp(t) + b(t) - BIAS_MAX), with lp <= 0 the model's
        // log2-probability up to a constant; accumulates sum(w) and sum(w * lp).
        let mut s_w = [0.0f64; LANES];
        let mut s_wlp = [0.0f64; LANES];
        let max = logits.filter(|l| l.len() == v).map_or(f32::NAN, lane_max);
        let w0 = match logits {
            Some(l) if max.is_finite() => {
                let k = std::f32::consts::LOG2_E / temperature;
                let lp = &mut self.lp;
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for (x, &y) in lp.iter_mut().zip(l) {
                            *x = (y - max) * k;
                        }
                    },
                );
                w0
            }
            _ => {
                // No model (skipped or degenerate): every token starts equal.
                self.lp.iter_mut().for_each(|x| *x = 0.0);
                0.0
            }
        };
        dense(
            &self.lp,
            self.bias.as_deref(),
            w0,
            &mut self.w,
            &mut s_w,
            &mut s_wlp,
        );
        let mut sum = lane_total(&s_w);
        let mut swlp = lane_total(&s_wlp);

        // Sparse correction: the N-gram's and the match model's tokens.
        self.sparse.clear();
        if let Some((items, uniform, _)) = inp.ngram {
            let floor = uniform / v as f32;
            for &(t, p) in items {
                let f = if floor > 0.0 {
                    (log2_pos(p + floor) - log2_pos(floor)).min(NGRAM_FEATURE_MAX)
                } else {
                    NGRAM_FEATURE_MAX
                };
                self.sparse.push((t, f, 0.0));
            }
        }
        if let Some((t, _)) = inp.matched {
            match self.sparse.iter_mut().find(|s| s.0 == t) {
                Some(s) => s.2 = 1.0,
                None => self.sparse.push((t, 0.0, 1.0)),
            }
        }
        for &(t, f1, f2) in &self.sparse {
            let i = t as usize;
            if i >= v {
                continue;
            }
            let boost = (w1 * f1 + w2 * f2).min(BOOST_MAX);
            let old = self.w[i];
            let new = old * exp2_neg(boost);
            self.w[i] = new;
            sum += (new - old) as f64;
            swlp += ((new - old) * self.lp[i]) as f64;
        }
        self.sum = sum as f32;
        self.e_lp = if sum > 0.0 { (swlp / sum) as f32 } else { 0.0 };
        (&self.w, self.sum)
    }

    /// Learns from the coded token: one gradient step on its code length for the
    /// weights of this step's set, and the bias head.
    pub fn update(&mut self, actual: u32) {
        let a = actual as usize;
        if a >= self.v || !(self.sum > 0.0) {
            return;
        }
        let inv = 1.0 / self.sum;
        // Expectations of the sparse features under q, and their values at `actual`.
        let (mut e1, mut e2, mut f1a, mut f2a) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for &(t, f1, f2) in &self.sparse {
            let q = self.w[t as usize] * inv;
            e1 += q * f1;
            e2 += q * f2;
            if t == actual {
                f1a = f1;
                f2a = f2;
            }
        }
        let w = &mut self.weights[self.set];
        if self.used_llm {
            w[0] = (w[0] + self.p.lr_llm * (self.lp[a] - self.e_lp)).clamp(0.25, 2.5);
        }
        w[1] = (w[1] + self.p.lr_ngram * (f1a - e1)).clamp(-1.0, 2.0);
        w[2] = (w[2] + self.p.lr_match * (f2a - e2)).clamp(-8.0, 24.0);
        if let Some(b) = &mut self.bias {
            // b -= lr * (q - onehot(actual)), kept in [-BIAS_MAX, BIAS_MAX].
            let k = self.p.lr_bias * inv;
            let w = &self.w;
            simd::dispatch(
                #[inline(always)]
                || {
                    for (x, &wt) in b.iter_mut().zip(w) {
                        *x = (*x - k * wt).max(-BIAS_MAX);
                    }
                },
            );
            b[a] = (b[a] + self.p.lr_bias).min(BIAS_MAX);
        }
    }
}

/// w(t) = 2^(w0 * lp(t) + b(t) - BIAS_MAX) with the sums of w and w * lp in fixed lanes.
/// Blocks of `BLOCK` tokens are summed in f32 lanes (so the loop vectorises), the block
/// sums in f64: a fixed order, and far more precise than one f32 sum of 49,152 terms.
/// Without a bias head `b` is 0 (adding +0.0 changes no exponent).
fn dense(
    lp: &[f32],
    bias: Option<&[f32]>,
    w0: f32,
    out: &mut [f32],
    s_w: &mut [f64; LANES],
    s_wlp: &mut [f64; LANES],
) {
    simd::dispatch(
        #[inline(always)]
        || dense_impl(lp, bias, w0, out, s_w, s_wlp),
    )
}

#[inline(always)]
fn dense_impl(
    lp: &[f32],
    bias: Option<&[f32]>,
    w0: f32,
    out: &mut [f32],
    s_w: &mut [f64; LANES],
    s_wlp: &mut [f64; LANES],
) {
    const BLOCK: usize = 256;
    let zeros = [0.0f32; BLOCK];
    let n = lp.len().min(out.len());
    let bias = bias.filter(|b| b.len() >= n);
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
        let bs = bias.map_or(&zeros[..end - start], |bs| &bs[start..end]);
        let (o, l) = (&mut out[start..end], &lp[start..end]);
        for ((o, &l), &bb) in o.iter_mut().zip(l).zip(bs) {
            *o = exp2_neg(w0 * l + bb - BIAS_MAX);
        }
        // Element j of every run of LANES goes to lane j: whole runs in fixed-size
        // arrays (which become vector registers), then the block's last partial run
        // (only the last block has one). A separate pass, so both loops vectorise.
        let (mut oc, mut lc) = (o.chunks_exact(LANES), l.chunks_exact(LANES));
        for (oc, lc) in (&mut oc).zip(&mut lc) {
            for j in 0..LANES {
                a[j] += oc[j];
                b[j] += oc[j] * lc[j];
            }
        }
        for (j, (&x, &l)) in oc.remainder().iter().zip(lc.remainder()).enumerate() {
            a[j] += x;
            b[j] += x * l;
        }
        for j in 0..LANES {
            s_w[j] += a[j] as f64;
            s_wlp[j] += b[j] as f64;
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entropy_bits(w: &[f32], sum: f32, a: usize) -> f32 {
        -log2_pos(w[a] / sum)
    }

    #[test]
    fn starts_as_the_model_alone() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let mut m = LogMix::new(1000, false, LogMixParams::default());
        let inp = Inputs {
            ngram: Some((&[(5, 0.9)], 0.1, 2)),
            matched: Some((7, 9)),
        };
        let (w, sum) = m.predict(Some(&logits), 1.0, &inp);
        let mut p = Vec::new();
        let s = crate::codec::softmax_into(&logits, 1.0, &mut p);
        for t in [0usize, 5, 7, 500] {
            let (a, b) = (w[t] / sum, p[t] / s);
            assert!((a - b).abs() < 1e-4 * b.max(1e-6) + 1e-7, "{t}: {a} vs {b}");
        }
    }

    #[test]
    fn learns_to_trust_a_match_model_that_is_right() {
        let v = 500;
        let logits: Vec<f32> = (0..v).map(|i| ((i * 13) % 29) as f32 / 7.0).collect();
        let mut m = LogMix::new(v, true, LogMixParams::default());
        let mut first = 0.0;
        let mut last = 0.0;
        for step in 0..400 {
            let tok = (step * 7 % v) as u32;
            let inp = Inputs {
                ngram: None,
                matched: Some((tok, 20)),
            };
            let (w, sum) = m.predict(Some(&logits), 1.0, &inp);
            let bits = entropy_bits(w, sum, tok as usize);
            if step == 0 {
                first = bits;
            }
            last = bits;
            m.update(tok);
        }
        assert!(last < first / 4.0, "{first} -> {last}");
    }
}
