//! From logits to the CDF the coder uses. Holds per-stream state (the ensemble), updated
//! after every coded token identically on both sides. Which parts run is decided by the
//! blob's flags, so a decoder configures itself from the header.

pub mod ensemble;
pub mod logmix;

use crate::codec::{fixed_sum, softmax_into, Cdf, Precision};
use crate::format::{Flags, Header};
use ensemble::{BiasHead, MatchModel, Mixer, NGram, Sparse, SKIP_BITS, SKIP_WARMUP};
use logmix::{Inputs, LogMix, LogMixParams};

/// What shapes the predictions and their coding; every blob records all three.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictorConfig {
    /// Which parts run.
    pub flags: Flags,
    /// Softmax temperature.
    pub temperature: f32,
    /// The total of the CDFs handed to the coder.
    pub precision: Precision,
}

impl PredictorConfig {
    /// The configuration a blob with `header` was coded with.
    pub fn of(header: &Header) -> PredictorConfig {
        PredictorConfig {
            flags: header.flags,
            temperature: header.temperature,
            precision: header.precision,
        }
    }
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig {
            flags: Flags(Flags::DEFAULT),
            temperature: 1.0,
            precision: Precision::DEFAULT,
        }
    }
}

/// This step's cheap predictions, made before the model is (or is not) asked.
#[derive(Default)]
struct Step {
    use_llm: bool,
    set: usize,
    ngram: Option<Sparse>,
    matched: Option<(u32, f32)>,
    match_len: usize,
    llm_sum: f32,
    sum: f32,
    weights: [f32; 3],
}

/// One stream's predictor: the ensemble's state and the CDF it gives the coder.
pub struct Predictor {
    cfg: PredictorConfig,
    v: usize,
    probs: Vec<f32>,
    mix: Vec<f32>,
    scratch: Vec<f32>,
    cdf: Cdf,
    history: Vec<u32>,
    ngram: Option<NGram>,
    matcher: Option<MatchModel>,
    mixer: Mixer,
    bias: Option<BiasHead>,
    logmix: Option<LogMix>,
    step: Step,
    skipped: u64,
}

impl Predictor {
    /// A predictor for a vocabulary of `n_vocab`, in its starting state.
    pub fn new(n_vocab: usize, cfg: PredictorConfig) -> Predictor {
        Predictor::with_mix_params(n_vocab, cfg, LogMixParams::default())
    }

    /// Like [`Predictor::new`] with other log-mixer learning rates. Blobs do not record
    /// these, so only measurements (`nacrithfs bench-ensemble`) may change them.
    pub fn with_mix_params(
        n_vocab: usize,
        cfg: PredictorConfig,
        params: LogMixParams,
    ) -> Predictor {
        let f = cfg.flags;
        let ensemble = f.has(Flags::NGRAM) || f.has(Flags::MATCH) || f.has(Flags::BIAS);
        let logmix = ensemble && f.has(Flags::LOGMIX);
        Predictor {
            cfg,
            v: n_vocab,
            probs: Vec::with_capacity(n_vocab),
            // The linear mixer's output; the log mixer keeps its own.
            mix: if ensemble && !logmix {
                vec![0.0; n_vocab]
            } else {
                Vec::new()
            },
            scratch: if f.has(Flags::NGRAM) {
                vec![0.0; n_vocab]
            } else {
                Vec::new()
            },
            cdf: Cdf::with_precision(cfg.precision),
            history: Vec::new(),
            ngram: f.has(Flags::NGRAM).then(NGram::default),
            matcher: f.has(Flags::MATCH).then(MatchModel::default),
            mixer: Mixer::default(),
            bias: (f.has(Flags::BIAS) && !logmix).then(|| BiasHead::new(n_vocab)),
            logmix: logmix.then(|| LogMix::new(n_vocab, f.has(Flags::BIAS), params)),
            step: Step::default(),
            skipped: 0,
        }
    }

    fn ensemble(&self) -> bool {
        !self.mix.is_empty() || self.logmix.is_some()
    }

    /// Makes this step's cheap predictions and says whether the model's logits are
    /// needed. Must be called once before every [`Predictor::predict`].
    pub fn prepare(&mut self) -> bool {
        let mut step = Step {
            use_llm: true,
            ..Default::default()
        };
        if self.ensemble() {
            step.ngram = self
                .ngram
                .as_ref()
                .map(|ng| ng.predict(&self.history, &mut self.scratch));
            let m = self.matcher.as_mut().and_then(|m| m.predict(&self.history));
            step.matched = m.map(|(t, p, _)| (t, p));
            step.match_len = m.map_or(0, |(_, _, len)| len);
            let bucket = match m.map(|(_, _, len)| len) {
                None => 0,
                Some(l) if l < 8 => 1,
                Some(l) if l < 16 => 2,
                Some(_) => 3,
            };
            if self.cfg.flags.has(Flags::SKIP) && self.history.len() >= SKIP_WARMUP {
                if let Some(ng) = &step.ngram {
                    let limit = self.logmix.as_ref().map_or(SKIP_BITS, |l| l.skip_bits());
                    step.use_llm = ng.entropy(self.v) >= limit;
                }
            }
            step.set = bucket + if step.use_llm { 0 } else { 4 };
        }
        if !step.use_llm {
            self.skipped += 1;
        }
        self.step = step;
        self.step.use_llm
    }

    /// Tokens for which the model was not asked.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The distribution of the next token; `logits` is `Some` exactly when
    /// [`Predictor::prepare`] returned true.
    pub fn predict(&mut self, logits: Option<&[f32]>) -> &Cdf {
        let ensemble = self.ensemble();
        let step = &mut self.step;
        if let Some(lm) = &mut self.logmix {
            let inp = Inputs {
                ngram: step
                    .ngram
                    .as_ref()
                    .map(|s| (&s.items[..], s.uniform, s.order)),
                matched: step.matched.map(|(t, _)| (t, step.match_len)),
            };
            let (w, sum) = lm.predict(logits, self.cfg.temperature, &inp);
            set_cdf(&mut self.cdf, w, sum);
            return &self.cdf;
        }
        if let Some(l) = logits {
            step.llm_sum = softmax_into(l, self.cfg.temperature, &mut self.probs);
        }
        if !ensemble {
            // The plain model: no mixing pass at all.
            set_cdf(&mut self.cdf, &self.probs, step.llm_sum);
            return &self.cdf;
        }
        let v = self.v as f32;
        let mut w = self.mixer.weights(step.set);
        if logits.is_none() {
            w[0] = 0.0;
        }
        if step.ngram.is_none() {
            w[1] = 0.0;
        }
        if step.matched.is_none() {
            w[2] = 0.0;
        }
        let total = w[0] + w[1] + w[2];
        if total > 0.0 {
            for x in &mut w {
                *x /= total;
            }
        } else {
            w = [0.0, 1.0, 0.0]; // nothing to go on: uniform (through an empty N-gram)
        }
        step.weights = w;
        let (ng_uniform, ng_items): (f32, &[(u32, f32)]) = match &step.ngram {
            Some(s) => (s.uniform, &s.items),
            None => (1.0, &[]),
        };
        let (m_tok, m_p) = step.matched.unwrap_or((0, 0.0));
        let floor = (w[1] * ng_uniform + w[2] * (1.0 - m_p)) / v;
        if w[0] > 0.0 {
            let k = w[0] / step.llm_sum;
            for (o, &p) in self.mix.iter_mut().zip(&self.probs) {
                *o = p * k + floor;
            }
        } else {
            self.mix.iter_mut().for_each(|o| *o = floor);
        }
        for &(t, p) in ng_items {
            self.mix[t as usize] += w[1] * p;
        }
        if step.matched.is_some() {
            self.mix[m_tok as usize] += w[2] * m_p;
        }
        if let Some(b) = &self.bias {
            b.apply(&mut self.mix);
        }
        step.sum = fixed_sum(&self.mix);
        set_cdf(&mut self.cdf, &self.mix, step.sum);
        &self.cdf
    }

    /// Learns from the token that was actually coded.
    pub fn update(&mut self, token: u32) {
        if !self.ensemble() {
            return;
        }
        if let Some(lm) = &mut self.logmix {
            lm.update(token);
            self.learn(token);
            return;
        }
        let step = &self.step;
        let v = self.v;
        let t = token as usize;
        let p_llm = if step.use_llm && step.llm_sum > 0.0 {
            self.probs.get(t).map_or(0.0, |p| p / step.llm_sum)
        } else {
            0.0
        };
        let p_ng = step.ngram.as_ref().map_or(0.0, |s| s.prob(token, v));
        let p_m = step.matched.map_or(0.0, |(mt, p)| {
            if mt == token {
                p + (1.0 - p) / v as f32
            } else {
                (1.0 - p) / v as f32
            }
        });
        self.mixer.update(
            step.set,
            [p_llm, p_ng, p_m],
            [step.use_llm, step.ngram.is_some(), step.matched.is_some()],
        );
        if let Some(b) = &mut self.bias {
            b.update(&self.mix, step.sum, token);
        }
        self.learn(token);
    }

    /// The cheap models learn `token` and it joins the history.
    fn learn(&mut self, token: u32) {
        if let Some(ng) = &mut self.ngram {
            ng.update(&self.history, token);
        }
        if let Some(m) = &mut self.matcher {
            m.update(&self.history, token);
        }
        self.history.push(token);
    }
}

/// Sets `cdf` from weights; a vocabulary the CDF cannot hold (none, or over half its
/// total) gives a one-symbol CDF on both sides alike.
fn set_cdf(cdf: &mut Cdf, w: &[f32], sum: f32) {
    if cdf.set_weights(w, sum).is_err() {
        let _ = cdf.set_weights(&[1.0], 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{paths, with_isa, Isa};
    use proptest::prelude::*;

    /// Every step's whole CDF, for a stream of `tokens` under pseudo-random logits.
    fn cdfs(
        isa: Isa,
        v: usize,
        flags: u16,
        precision: Precision,
        seed: u64,
        tokens: &[u32],
    ) -> Vec<Vec<(u32, u32)>> {
        with_isa(isa, || {
            let cfg = PredictorConfig {
                flags: Flags(flags),
                temperature: 0.9,
                precision,
            };
            let mut p = Predictor::new(v, cfg);
            let mut state = seed | 1;
            let mut logits = vec![0.0f32; v];
            let mut out = Vec::new();
            for &t in tokens {
                let want = p.prepare();
                for l in &mut logits {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *l = (state >> 40) as f32 / (1u64 << 24) as f32 * 24.0 - 12.0;
                }
                let cdf = p.predict(want.then_some(&logits[..]));
                out.push((0..cdf.len()).map(|s| cdf.range(s)).collect());
                p.update(t % v as u32);
            }
            out
        })
    }

    #[test]
    fn every_path_gives_the_baseline_bits_at_gemma_size() {
        let tokens: Vec<u32> = (0..24).map(|i| [17, 5, 17, 99, 5][i % 5]).collect();
        let v = 262_144;
        let p = Precision::for_vocab(v);
        let a = cdfs(Isa::Scalar, v, Flags::DEFAULT, p, 3, &tokens);
        for isa in paths().into_iter().skip(1) {
            let b = cdfs(isa, v, Flags::DEFAULT, p, 3, &tokens);
            assert!(a == b, "the CDFs differ between the baseline and {isa:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_path_gives_the_baseline_bits(
            v in 2usize..3000,
            flags in prop::sample::select(vec![
                Flags::LLM,
                Flags::DEFAULT,
                Flags::DEFAULT | Flags::MATCH | Flags::BIAS | Flags::SKIP,
                Flags::LLM | Flags::NGRAM | Flags::MATCH | Flags::BIAS,
            ]),
            bits in 16u8..=28,
            seed in any::<u64>(),
            tokens in proptest::collection::vec(0u32..4000, 1..40),
        ) {
            let p = Precision::new(bits).unwrap();
            let a = cdfs(Isa::Scalar, v, flags, p, seed, &tokens);
            for isa in paths().into_iter().skip(1) {
                let b = cdfs(isa, v, flags, p, seed, &tokens);
                prop_assert!(a == b, "{:?}", isa);
            }
        }
    }
}
