//! Tokens, from the GGUF vocabulary alone: the bytes of each token (what a decoder
//! writes for the tokens it decodes) and the tokenizer (what an encoder codes). Both
//! are defined here rather than taken from llama.cpp, so that neither a blob's bytes
//! nor how a text is tokenized depends on an inference library's version
//! (docs/ENGINE.md, "Tokens").
//!
//! The tokenizer is GPT-2's byte-level BPE with SmolLM2's pre-tokenizer, written to
//! give exactly the tokens llama.cpp (llama-cpp-sys-2 0.1.160) gives: [`split`] cuts
//! the text into words, [`bpe`] merges each word's bytes.

mod bpe;
mod split;
mod unicode;
mod unicode_table;

use crate::gguf::{Gguf, GgufError, Value};
use std::collections::HashMap;

/// Each token's bytes, and how text becomes tokens.
pub struct Vocab {
    pieces: Vec<Box<[u8]>>,
    merges: bpe::Merges,
}

/// GPT-2's byte-level alphabet: byte b is written as the character `table[b]`.
fn gpt2_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        *slot = if printable {
            char::from(b as u8)
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    table
}

/// The pre-tokenizers (`tokenizer.ggml.pre`) that llama.cpp 0.1.160 gives [`split`]'s
/// two expressions.
const PRE_TOKENIZERS: [&str; 8] = [
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva",
    "mellum2",
];

/// llama.cpp's token type for a user-defined token, which its tokenizer splits out of
/// the text before anything else (not done here: such a vocabulary is refused).
const USER_DEFINED: i128 = 4;

impl Vocab {
    /// The vocabulary of a GGUF file whose tokenizer is GPT-2's byte-level BPE
    /// (`tokenizer.ggml.model` = `gpt2`) with SmolLM2's pre-tokenizer: each character of
    /// a token's text stands for one byte; a character outside that alphabet stands
    /// for its own UTF-8 bytes.
    pub fn from_gguf(g: &Gguf) -> Result<Vocab, GgufError> {
        let model = g.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GgufError::Unsupported(format!(
                "tokenizer {model} (the portable engine reads gpt2's byte-level tokens)"
            )));
        }
        let pre = g.str("tokenizer.ggml.pre").unwrap_or("default");
        if !PRE_TOKENIZERS.contains(&pre) {
            return Err(GgufError::Unsupported(format!(
                "pre-tokenizer {pre} (the portable engine splits text as {})",
                PRE_TOKENIZERS.join(", ")
            )));
        }
        let Some(Value::Strings(tokens)) = g.get("tokenizer.ggml.tokens") else {
            return Err(GgufError::Key("tokenizer.ggml.tokens".into()));
        };
        if let Some(Value::Ints(types)) = g.get("tokenizer.ggml.token_type") {
            if let Some(i) = types.iter().position(|&t| t == USER_DEFINED) {
                return Err(GgufError::Unsupported(format!(
                    "user-defined token {i} {:?} (the portable tokenizer has none)",
                    tokens.get(i).map_or("", |s| s.as_str())
                )));
            }
        }
        let Some(Value::Strings(rules)) = g.get("tokenizer.ggml.merges") else {
            return Err(GgufError::Key("tokenizer.ggml.merges".into()));
        };

        let table = gpt2_chars();
        let byte_of: HashMap<char, u8> = table
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        // The bytes a text stands for: every character must be of the alphabet.
        let strict =
            |s: &str| -> Option<Vec<u8>> { s.chars().map(|c| byte_of.get(&c).copied()).collect() };
        let pieces = tokens
            .iter()
            .map(|t| {
                let mut v = Vec::with_capacity(t.len());
                for c in t.chars() {
                    match byte_of.get(&c) {
                        Some(&b) => v.push(b),
                        None => v.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                v.into_boxed_slice()
            })
            .collect();
        // llama.cpp names an empty token "[EMPTY_<id>]", and splits a rule at its first
        // space after the first character.
        let merges = bpe::Merges::new(
            tokens.iter().enumerate().map(|(i, t)| match t.is_empty() {
                true => strict(&format!("[EMPTY_{i}]")),
                false => strict(t),
            }),
            rules.iter().map(|r| {
                let at = r.bytes().skip(1).position(|b| b == b' ')? + 1;
                Some((strict(&r[..at])?, strict(&r[at + 1..])?))
            }),
        );
        Ok(Vocab { pieces, merges })
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The tokens of `text`, as llama.cpp gives them for plain text (no special-token
    /// syntax, no BOS). Like llama.cpp's, they may not give `text` back: bytes that
    /// are not UTF-8 become U+FFFD, and a byte with no token is left out; see
    /// [`Vocab::tokenize_exact`].
    pub fn tokenize(&self, text: &[u8]) -> Vec<u32> {
        let cps = unicode::code_points(text);
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut word = Vec::new();
        for w in split::words(&cps) {
            word.clear();
            for &c in &cps[w] {
                // A value beyond U+10FFFF has no UTF-8, so it is left out.
                unicode::push_utf8(c, &mut word);
            }
            self.merges.encode(&word, &mut out);
        }
        out
    }

    /// The tokens of `text` if they give back exactly `text`, else `None` (such text
    /// cannot be coded as tokens).
    pub fn tokenize_exact(&self, text: &[u8]) -> Option<Vec<u32>> {
        let tokens = self.tokenize(text);
        let mut back = Vec::with_capacity(text.len());
        self.detokenize_into(&tokens, &mut back);
        (back == text).then_some(tokens)
    }

    /// Appends the bytes of `tokens` to `out` (tokens outside the vocabulary add
    /// nothing).
    pub fn detokenize_into(&self, tokens: &[u32], out: &mut Vec<u8>) {
        for &t in tokens {
            if let Some(p) = self.pieces.get(t as usize) {
                out.extend_from_slice(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpt2_alphabet_is_a_bijection_onto_its_256_characters() {
        let t = gpt2_chars();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120, GPT-2's space
        assert_eq!(t[b'\n' as usize], 'Ċ'); // U+010A
    }
}
