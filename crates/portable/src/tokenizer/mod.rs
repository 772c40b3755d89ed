//! The bytes of each token, from the GGUF vocabulary alone: what a decoder writes for
//! the tokens it decodes. Defined here rather than taken from llama.cpp, so that a
//! blob's bytes never depend on an inference library's version (docs/ENGINE.md,
//! "Tokens").

use crate::gguf::{Gguf, GgufError, Value};

/// Each token's bytes.
pub struct Vocab {
    pieces: Vec<Box<[u8]>>,
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

impl Vocab {
    /// The vocabulary of a GGUF file whose tokenizer is GPT-2's byte-level BPE
    /// (`tokenizer.ggml.model` = `gpt2`, as SmolLM2's): each character of a token's
    /// text stands for one byte; a character outside that alphabet stands for its own
    /// UTF-8 bytes.
    pub fn from_gguf(g: &Gguf) -> Result<Vocab, GgufError> {
        let model = g.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GgufError::Unsupported(format!(
                "tokenizer {model} (the portable engine decodes gpt2's byte-level tokens)"
            )));
        }
        let Some(Value::Strings(tokens)) = g.get("tokenizer.ggml.tokens") else {
            return Err(GgufError::Key("tokenizer.ggml.tokens".into()));
        };
        let table = gpt2_chars();
        let mut byte_of = std::collections::HashMap::with_capacity(256);
        for (b, &c) in table.iter().enumerate() {
            byte_of.insert(c, b as u8);
        }
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
        Ok(Vocab { pieces })
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
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
