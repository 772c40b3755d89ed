//! The cheap online predictors that sharpen the language model: a token N-gram, a match
//! model, a mixer, an adaptive bias head, and the confidence skip. All state is per
//! stream, all arithmetic is f32 in a fixed order (no platform `exp`/`log`), and every
//! update happens after a token is coded, so encoder and decoder stay identical.
//!
//! The N-gram and match model are sparse: they touch the few tokens they predict plus a
//! uniform floor, so mixing them into the model's 49,152 probabilities costs one dense
//! pass.

use crate::codec::{exp2_neg, log2_pos};
use std::collections::HashMap;

/// Highest N-gram order (tokens of context).
pub const NGRAM_ORDER: usize = 4;
/// Continuations kept per N-gram context.
const MAX_CONTINUATIONS: usize = 64;
/// Match model context orders.
const MATCH_MIN: usize = 4;
const MATCH_MAX: usize = 8;
/// Contexts kept per order before new ones are ignored (bounds memory per stream).
const MAX_CONTEXTS: usize = 1 << 18;

/// Mixer learning rate (exponent of the exponential-weights update).
const MIX_LR: f32 = 0.5;
/// Smallest mixer weight, so a model that was wrong for a while can come back.
const MIX_FLOOR: f32 = 1e-3;
/// Bias head learning rate.
const BIAS_LR: f32 = 0.001;
/// Tokens coded before the confidence skip may start.
pub const SKIP_WARMUP: usize = 100;
/// N-gram entropy (bits) under which the language model is skipped.
pub const SKIP_BITS: f32 = 1.5;

fn hash_tokens(tokens: &[u32], order: usize) -> u64 {
    // FNV-1a over the last `order` tokens, salted by the order.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ order as u64;
    for &t in &tokens[tokens.len() - order..] {
        h ^= t as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Default)]
struct Continuations {
    total: u32,
    items: Vec<(u32, u32)>,
}

/// Interpolated (Witten–Bell) token N-gram over hashed contexts of orders 1..=4.
pub struct NGram {
    tables: Vec<HashMap<u64, Continuations>>,
}

/// A sparse distribution: `p(t) = sparse[t] + uniform / V`.
pub struct Sparse {
    /// Tokens with their own probability.
    pub items: Vec<(u32, f32)>,
    /// The probability of every other token.
    pub uniform: f32,
    /// The highest order whose context had statistics (0: none).
    pub order: usize,
}

impl Sparse {
    fn empty() -> Sparse {
        Sparse {
            items: Vec::new(),
            uniform: 1.0,
            order: 0,
        }
    }

    /// Probability of `t` given vocabulary size `v`.
    pub fn prob(&self, t: u32, v: usize) -> f32 {
        let base = self.uniform / v as f32;
        self.items
            .iter()
            .find(|(x, _)| *x == t)
            .map_or(base, |(_, p)| p + base)
    }

    /// Entropy in bits (the uniform floor counted as spread over the other symbols).
    pub fn entropy(&self, v: usize) -> f32 {
        let base = self.uniform / v as f32;
        let mut h = 0.0f32;
        for &(_, p) in &self.items {
            let q = p + base;
            h -= q * log2_pos(q);
        }
        let rest = self.uniform * (v - self.items.len()) as f32 / v as f32;
        if rest > 0.0 {
            h -= rest * log2_pos(base);
        }
        h
    }
}

impl Default for NGram {
    fn default() -> Self {
        NGram {
            tables: (0..NGRAM_ORDER).map(|_| HashMap::new()).collect(),
        }
    }
}

impl NGram {
    /// The interpolated distribution after `history`. `scratch` (len >= V, all zero on
    /// entry and on return) accumulates sparse probabilities by token.
    pub fn predict(&self, history: &[u32], scratch: &mut [f32]) -> Sparse {
        let mut out = Sparse::empty();
        let mut touched: Vec<u32> = Vec::new();
        for order in 1..=NGRAM_ORDER.min(history.len()) {
            let Some(c) = self.tables[order - 1].get(&hash_tokens(history, order)) else {
                break;
            };
            let n = c.total as f32;
            let u = c.items.len() as f32;
            let d = 1.0 / (n + u);
            let keep = u * d;
            for &t in &touched {
                scratch[t as usize] *= keep;
            }
            for &(t, cnt) in &c.items {
                let s = &mut scratch[t as usize];
                // Counts are >= 1 and `keep` > 0, so a touched token is never 0 again.
                if *s == 0.0 {
                    touched.push(t);
                }
                *s += cnt as f32 * d;
            }
            out.uniform *= keep;
            out.order = order;
        }
        out.items = touched
            .iter()
            .map(|&t| (t, std::mem::take(&mut scratch[t as usize])))
            .collect();
        out
    }

    /// Counts `token` as following `history`.
    pub fn update(&mut self, history: &[u32], token: u32) {
        for order in 1..=NGRAM_ORDER.min(history.len()) {
            let table = &mut self.tables[order - 1];
            let h = hash_tokens(history, order);
            if table.len() >= MAX_CONTEXTS && !table.contains_key(&h) {
                continue;
            }
            let c = table.entry(h).or_default();
            c.total += 1;
            if let Some(item) = c.items.iter_mut().find(|(t, _)| *t == token) {
                item.1 += 1;
            } else if c.items.len() < MAX_CONTINUATIONS {
                c.items.push((token, 1));
            }
        }
    }
}

/// LZP-style match model: finds the longest earlier occurrence (order 8 down to 4) of
/// the current context and predicts the token that followed it, with a confidence learnt
/// per match length.
pub struct MatchModel {
    /// Per order: context hash -> index in history of the token that followed it.
    tables: Vec<HashMap<u64, u32>>,
    /// Per match-length bucket: (hits, tries) of the predicted token.
    stats: [(u32, u32); 33],
    /// The current prediction: (token, match length).
    current: Option<(u32, usize)>,
}

impl Default for MatchModel {
    fn default() -> Self {
        MatchModel {
            tables: (MATCH_MIN..=MATCH_MAX).map(|_| HashMap::new()).collect(),
            stats: [(0, 0); 33],
            current: None,
        }
    }
}

impl MatchModel {
    /// Finds the prediction after `history`; returns (token, probability, length).
    pub fn predict(&mut self, history: &[u32]) -> Option<(u32, f32, usize)> {
        self.current = None;
        for order in (MATCH_MIN..=MATCH_MAX.min(history.len())).rev() {
            let Some(&next) = self.tables[order - MATCH_MIN].get(&hash_tokens(history, order))
            else {
                continue;
            };
            let next = next as usize;
            // Verify (hashes collide) and measure the real match length, up to 32.
            let mut len = 0;
            while len < 32
                && len < next
                && history[next - 1 - len] == history[history.len() - 1 - len]
            {
                len += 1;
            }
            if len < MATCH_MIN || next >= history.len() {
                continue;
            }
            let token = history[next];
            self.current = Some((token, len));
            let (hits, tries) = self.stats[len];
            let p = (hits as f32 + 0.5) / (tries as f32 + 1.0);
            return Some((token, p, len));
        }
        None
    }

    /// Learns from `token` following `history` (call after [`MatchModel::predict`]).
    pub fn update(&mut self, history: &[u32], token: u32) {
        if let Some((pred, len)) = self.current.take() {
            let s = &mut self.stats[len];
            s.1 += 1;
            if pred == token {
                s.0 += 1;
            }
            if s.1 > 1 << 16 {
                s.0 /= 2;
                s.1 /= 2;
            }
        }
        // `history` does not yet hold `token`: its index will be history.len().
        let next = history.len() as u32;
        for order in MATCH_MIN..=MATCH_MAX.min(history.len()) {
            let table = &mut self.tables[order - MATCH_MIN];
            if table.len() < MAX_CONTEXTS {
                table.insert(hash_tokens(history, order), next);
            }
        }
    }
}

/// Exponential-weights linear mixer with one weight set per context class.
pub struct Mixer {
    weights: Vec<[f32; 3]>,
}

/// Number of mixer weight sets: match state (none, 4-7, 8-15, 16+) x LLM used or skipped.
pub const MIX_SETS: usize = 8;

impl Default for Mixer {
    fn default() -> Self {
        // The reference's start: 0.85 for the model, 0.15 shared by the rest.
        Mixer {
            weights: vec![[0.85, 0.075, 0.075]; MIX_SETS],
        }
    }
}

impl Mixer {
    /// The mixing weights of context set `set`.
    pub fn weights(&self, set: usize) -> [f32; 3] {
        self.weights[set]
    }

    /// w_i *= p_i(actual)^lr over the active models, rescaled so they keep the mass they
    /// had (inactive models are left alone), each kept above a floor of that mass.
    pub fn update(&mut self, set: usize, p_actual: [f32; 3], active: [bool; 3]) {
        let w = &mut self.weights[set];
        let before: f32 = (0..3).filter(|&i| active[i]).map(|i| w[i]).sum();
        let mut after = 0.0;
        for i in 0..3 {
            if active[i] {
                w[i] *= exp2_neg(MIX_LR * log2_pos(p_actual[i]).min(0.0));
                after += w[i];
            }
        }
        if !(after > 0.0) || !(before > 0.0) {
            return;
        }
        let k = before / after;
        for i in 0..3 {
            if active[i] {
                w[i] = (w[i] * k).max(MIX_FLOOR * before);
            }
        }
        let total: f32 = w.iter().sum();
        for x in w.iter_mut() {
            *x /= total;
        }
    }
}

/// Adaptive bias over the vocabulary in log space: p' = p * exp(b) / Z, and after each
/// token b -= lr * (p' - onehot(actual)). Kept as multipliers m = exp(b - BIAS_MAX)
/// (a common factor the CDF normalises away), with b capped at BIAS_MAX.
pub struct BiasHead {
    bias: Vec<f32>,
    mult: Vec<f32>,
}

const BIAS_MAX: f32 = 4.0;

impl BiasHead {
    /// A bias head over a vocabulary of `v`, starting at no bias.
    pub fn new(v: usize) -> BiasHead {
        let m0 = exp2_neg(-BIAS_MAX * std::f32::consts::LOG2_E);
        BiasHead {
            bias: vec![0.0; v],
            mult: vec![m0; v],
        }
    }

    /// Multiplies `p` (unnormalised weights) by the current multipliers.
    pub fn apply(&self, p: &mut [f32]) {
        for (x, &m) in p.iter_mut().zip(&self.mult) {
            *x *= m;
        }
    }

    /// `p` is the biased distribution's weights with sum `sum`; `actual` the coded token.
    pub fn update(&mut self, p: &[f32], sum: f32, actual: u32) {
        let k = BIAS_LR / sum;
        let l2e = std::f32::consts::LOG2_E;
        for ((b, m), &x) in self.bias.iter_mut().zip(self.mult.iter_mut()).zip(p) {
            *b -= k * x;
            *m = exp2_neg((*b - BIAS_MAX) * l2e);
        }
        if let Some(b) = self.bias.get_mut(actual as usize) {
            *b = (*b + BIAS_LR).min(BIAS_MAX);
            self.mult[actual as usize] = exp2_neg((*b - BIAS_MAX) * l2e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_learns_a_repeated_sequence() {
        let v = 100;
        let mut ng = NGram::default();
        let mut scratch = vec![0.0; v];
        let seq: Vec<u32> = (0..200).map(|i| (i % 7) as u32).collect();
        for i in 1..seq.len() {
            ng.update(&seq[..i], seq[i]);
        }
        let p = ng.predict(&seq[..50], &mut scratch);
        assert!(p.prob(seq[50], v) > 0.9, "{}", p.prob(seq[50], v));
        assert!(scratch.iter().all(|&x| x == 0.0));
        let total: f32 = (0..v as u32).map(|t| p.prob(t, v)).sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        assert!(p.entropy(v) < 1.0);
    }

    #[test]
    fn match_model_predicts_the_continuation() {
        let mut m = MatchModel::default();
        let mut hist: Vec<u32> = Vec::new();
        let text: Vec<u32> = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
            .iter()
            .chain([50, 51].iter())
            .chain([1, 2, 3, 4, 5, 6].iter())
            .copied()
            .collect();
        for &t in &text {
            m.predict(&hist);
            m.update(&hist, t);
            hist.push(t);
        }
        let (tok, _, len) = m.predict(&hist).unwrap();
        assert_eq!(tok, 7);
        assert!(len >= 6);
    }

    #[test]
    fn mixer_moves_weight_to_the_better_model() {
        let mut mx = Mixer::default();
        for _ in 0..50 {
            mx.update(0, [0.01, 0.9, 0.1], [true; 3]);
        }
        let w = mx.weights(0);
        assert!(
            w[1] > 0.9 && (w.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "{w:?}"
        );
    }
}
