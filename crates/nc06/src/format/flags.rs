//! Which predictors coded a blob's text: a bit set recorded in the header, from which
//! the decoder configures itself.

use std::fmt;
use std::str::FromStr;

/// Which predictors coded the text chunks. The decoder configures itself from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flags(pub u16);

/// The predictor names of [`Flags`]'s `Display` and `FromStr`, with their bits.
const NAMES: [(u16, &str); 6] = [
    (Flags::LLM, "llm"),
    (Flags::NGRAM, "ngram"),
    (Flags::MATCH, "match"),
    (Flags::BIAS, "bias"),
    (Flags::SKIP, "skip"),
    (Flags::LOGMIX, "logmix"),
];

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<&str> = NAMES
            .iter()
            .filter(|(b, _)| self.has(*b))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "{}", on.join(","))
    }
}

impl Flags {
    /// Text chunks are coded by the language model (always set by this version).
    pub const LLM: u16 = 1 << 0;
    /// Token N-gram of orders 1..4 mixed in.
    pub const NGRAM: u16 = 1 << 1;
    /// Match model (orders 4..8) mixed in.
    pub const MATCH: u16 = 1 << 2;
    /// Adaptive bias head over the vocabulary.
    pub const BIAS: u16 = 1 << 3;
    /// Confidence skip: the model is not asked when the N-gram is sure.
    pub const SKIP: u16 = 1 << 4;
    /// The parts are mixed in the log domain (geometric mixing, `predict/logmix.rs`)
    /// instead of the reference's linear exponential-weights mix.
    pub const LOGMIX: u16 = 1 << 5;
    /// Bits this version understands; any other set bit is refused.
    pub const KNOWN: u16 =
        Self::LLM | Self::NGRAM | Self::MATCH | Self::BIAS | Self::SKIP | Self::LOGMIX;
    /// What compression uses unless told otherwise: the model plus the N-gram, mixed in
    /// the log domain — the only part that pays on its own (docs/BENCHMARKS.md, ablation:
    /// -4.8 % on logs, -1.3 % on source code, within 0.1 % on English prose).
    pub const DEFAULT: u16 = Self::LLM | Self::NGRAM | Self::LOGMIX;

    /// Whether `bit` is set.
    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// A predictor list that names no known predictor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown predictor {0:?} (llm, ngram, match, bias, skip, linear, logmix, raw)")]
pub struct UnknownPredictor(pub String);

impl FromStr for Flags {
    type Err = UnknownPredictor;

    /// A comma-separated predictor list such as `ngram,match,bias`, as `--predictors`
    /// takes it. The model is always on (`llm` and `raw` name it alone); `skip`
    /// implies `ngram`; `logmix` (as `Display` writes it) is the default mix. The parts are mixed in the log domain unless `linear` asks for
    /// the reference's linear mix.
    fn from_str(list: &str) -> Result<Flags, UnknownPredictor> {
        let mut f = Flags::LLM;
        let mut linear = false;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            f |= match name {
                "raw" | "llm" => Flags::LLM,
                "ngram" => Flags::NGRAM,
                "match" => Flags::MATCH,
                "bias" => Flags::BIAS,
                "skip" => Flags::SKIP | Flags::NGRAM,
                "logmix" => Flags::LOGMIX,
                "linear" => {
                    linear = true;
                    0
                }
                other => return Err(UnknownPredictor(other.to_owned())),
            };
        }
        if !linear && f & (Flags::NGRAM | Flags::MATCH | Flags::BIAS) != 0 {
            f |= Flags::LOGMIX;
        }
        Ok(Flags(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictor_lists() {
        let p = |s: &str| s.parse::<Flags>();
        assert_eq!(p("llm"), Ok(Flags(Flags::LLM)));
        assert_eq!(p("raw"), Ok(Flags(Flags::LLM)));
        assert_eq!(p(""), Ok(Flags(Flags::LLM)));
        assert_eq!(p("llm,ngram"), Ok(Flags(Flags::DEFAULT)));
        assert_eq!(p(" ngram , "), Ok(Flags(Flags::DEFAULT)));
        assert_eq!(
            p("skip"),
            Ok(Flags(
                Flags::LLM | Flags::NGRAM | Flags::SKIP | Flags::LOGMIX
            ))
        );
        assert_eq!(
            p("linear,ngram,match"),
            Ok(Flags(Flags::LLM | Flags::NGRAM | Flags::MATCH))
        );
        assert_eq!(p("ngram,gpt"), Err(UnknownPredictor("gpt".into())));
        for f in [Flags::DEFAULT, Flags::KNOWN, Flags::LLM] {
            assert_eq!(p(&Flags(f).to_string()), Ok(Flags(f)), "{}", Flags(f));
        }
    }
}
