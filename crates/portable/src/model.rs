//! The weights of a llama-architecture GGUF model (SmolLM2), as the forward pass uses
//! them.

use crate::gguf::{Gguf, GgufError, TensorType};
use crate::quant::{Matrix, BLOCK};
use crate::tokenizer::Vocab;
use std::path::Path;

/// What can go wrong loading a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read model {}", .path.display())]
    Read {
        /// The model file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a GGUF model this engine can run.
    #[error("model {}: {source}", .path.display())]
    Gguf {
        /// The model file.
        path: std::path::PathBuf,
        /// What is wrong.
        #[source]
        source: GgufError,
    },
}

impl LoadError {
    /// Whether the file is sound but of a kind this engine does not run (another
    /// architecture, tokenizer or weight type), so that llama.cpp may run it instead.
    pub fn unsupported(&self) -> bool {
        matches!(
            self,
            LoadError::Gguf {
                source: GgufError::Unsupported(_),
                ..
            }
        )
    }
}

/// The shape of the model, from its GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of the feed-forward layer.
    pub ff: usize,
    /// Attention heads (queries).
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// RMSNorm's epsilon.
    pub eps: f32,
    /// RoPE's base frequency.
    pub rope_base: f64,
    /// The token every sequence starts from.
    pub bos: u32,
}

/// One transformer block.
pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
}

/// A loaded model.
pub struct Model {
    pub(crate) cfg: Config,
    pub(crate) embd: Matrix,
    /// The output layer; `None` when it is the embedding matrix (tied, as in SmolLM2).
    pub(crate) output: Option<Matrix>,
    pub(crate) out_norm: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    vocab: Vocab,
}

fn vector(g: &Gguf, name: &str, n: usize) -> Result<Vec<f32>, GgufError> {
    let b = g.tensor_bytes(name, TensorType::F32, &[n as u64])?;
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn usize_key(g: &Gguf, key: &str) -> Result<usize, GgufError> {
    let v = g.int(key)?;
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0 && v < 1 << 24)
        .ok_or_else(|| GgufError::Key(key.into()))
}

impl Config {
    /// The shape of a llama-architecture model.
    pub fn of(g: &Gguf) -> Result<Config, GgufError> {
        let arch = g.str("general.architecture")?;
        if arch != "llama" {
            return Err(GgufError::Unsupported(format!(
                "architecture {arch} (the portable engine runs llama, as SmolLM2)"
            )));
        }
        let k = |s: &str| format!("llama.{s}");
        let heads = usize_key(g, &k("attention.head_count"))?;
        let dim = usize_key(g, &k("embedding_length"))?;
        let kv_heads = usize_key(g, &k("attention.head_count_kv"))?;
        let head_dim = dim / heads;
        let bad = |why: String| GgufError::Tensor {
            name: "llama.*".into(),
            why,
        };
        if head_dim * heads != dim || heads % kv_heads != 0 || head_dim % 2 != 0 {
            return Err(bad(format!(
                "{heads} heads, {kv_heads} kv heads, width {dim}"
            )));
        }
        if let Ok(r) = g.int(&k("rope.dimension_count")) {
            if r != head_dim as i128 {
                return Err(bad(format!("partial RoPE ({r} of {head_dim})")));
            }
        }
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| GgufError::NoTensor("token_embd.weight".into()))?;
        let vocab = embd.dims.get(1).copied().unwrap_or(0) as usize;
        let cfg = Config {
            layers: usize_key(g, &k("block_count"))?,
            dim,
            ff: usize_key(g, &k("feed_forward_length"))?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            eps: g.float(&k("attention.layer_norm_rms_epsilon"))? as f32,
            rope_base: g.float(&k("rope.freq_base")).unwrap_or(10_000.0),
            bos: usize_key(g, "tokenizer.ggml.bos_token_id").unwrap_or(1) as u32,
        };
        if !cfg.dim.is_multiple_of(BLOCK)
            || !cfg.ff.is_multiple_of(BLOCK)
            || !(2..1 << 22).contains(&cfg.vocab)
        {
            return Err(bad(format!(
                "width {} and feed-forward {} must be whole blocks; vocabulary {}",
                cfg.dim, cfg.ff, cfg.vocab
            )));
        }
        Ok(cfg)
    }

    /// Width of the keys and values of one position (all kv heads).
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

impl Model {
    /// Loads the GGUF model at `path`.
    pub fn load(path: &Path) -> Result<Model, LoadError> {
        let g = Gguf::open(path).map_err(|source| LoadError::Read {
            path: path.into(),
            source,
        })?;
        Model::from_gguf(&g.map_err(|source| LoadError::Gguf {
            path: path.into(),
            source,
        })?)
        .map_err(|source| LoadError::Gguf {
            path: path.into(),
            source,
        })
    }

    /// The model in a parsed GGUF file.
    pub fn from_gguf(g: &Gguf) -> Result<Model, GgufError> {
        let c = Config::of(g)?;
        let vocab = Vocab::from_gguf(g)?;
        if vocab.len() != c.vocab || c.bos as usize >= c.vocab {
            return Err(GgufError::Unsupported(format!(
                "{} tokens for {} embeddings; BOS token {}",
                vocab.len(),
                c.vocab,
                c.bos
            )));
        }
        let (d, kv, ff) = (c.dim, c.kv_dim(), c.ff);
        // Grown layer by layer: a count from the file sizes nothing before its tensors
        // are found.
        let mut layers = Vec::new();
        for i in 0..c.layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(g, &n("attn_norm"), d)?,
                wq: Matrix::load(g, &n("attn_q"), d, d)?,
                wk: Matrix::load(g, &n("attn_k"), kv, d)?,
                wv: Matrix::load(g, &n("attn_v"), kv, d)?,
                wo: Matrix::load(g, &n("attn_output"), d, d)?,
                ffn_norm: vector(g, &n("ffn_norm"), d)?,
                gate: Matrix::load(g, &n("ffn_gate"), ff, d)?,
                up: Matrix::load(g, &n("ffn_up"), ff, d)?,
                down: Matrix::load(g, &n("ffn_down"), d, ff)?,
            });
        }
        let output = match g.tensor("output.weight") {
            Some(_) => Some(Matrix::load(g, "output.weight", c.vocab, d)?),
            None => None,
        };
        Ok(Model {
            embd: Matrix::load(g, "token_embd.weight", c.vocab, d)?,
            output,
            out_norm: vector(g, "output_norm.weight", d)?,
            layers,
            vocab,
            cfg: c,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The tokenizer and each token's bytes.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The output layer.
    pub(crate) fn output(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::tests::{header, string};

    /// A GGUF of a llama model whose metadata claims `layers` blocks and `dim` wide
    /// rows, holding only a 2-token Q8_0 embedding of width 32.
    fn claims(layers: u32, dim: u32) -> Vec<u8> {
        let ints = [
            ("llama.block_count", layers),
            ("llama.embedding_length", dim),
            ("llama.feed_forward_length", 32),
            ("llama.attention.head_count", 1),
            ("llama.attention.head_count_kv", 1),
        ];
        let mut v = header(1, ints.len() as u64 + 2);
        string(&mut v, "general.architecture");
        v.extend(8u32.to_le_bytes());
        string(&mut v, "llama");
        for (k, n) in ints {
            string(&mut v, k);
            v.extend(4u32.to_le_bytes());
            v.extend(n.to_le_bytes());
        }
        string(&mut v, "llama.attention.layer_norm_rms_epsilon");
        v.extend(6u32.to_le_bytes());
        v.extend(1e-5f32.to_le_bytes());
        string(&mut v, "token_embd.weight");
        v.extend(2u32.to_le_bytes());
        v.extend(32u64.to_le_bytes());
        v.extend(2u64.to_le_bytes());
        v.extend(8u32.to_le_bytes());
        v.extend(0u64.to_le_bytes());
        while !v.len().is_multiple_of(32) {
            v.push(0);
        }
        v.extend([0u8; 68]);
        v
    }

    #[test]
    fn sizes_a_file_claims_allocate_nothing_before_its_tensors_are_found() {
        for (layers, dim) in [(1 << 23, 32), (1, 1 << 23), (1 << 23, 1 << 23)] {
            let g = Gguf::parse(claims(layers, dim)).unwrap();
            assert!(Model::from_gguf(&g).is_err(), "{layers} layers of {dim}");
        }
    }
}
