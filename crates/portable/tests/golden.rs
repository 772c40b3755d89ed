//! The arithmetic is part of the format: the logits of a fixed stream on the real
//! SmolLM2 file have a committed SHA-256, under every instruction set this CPU has and
//! on the device kernels emulated on the host. It may change only with `SPEC_VERSION`
//! (docs/ENGINE.md), never silently.
//!
//! This test needs nothing but this crate and the model file, so it also runs built
//! for other architectures (scripts/arm-check.sh runs it for 64-bit Arm under qemu):
//! the same bits there are what lets a blob written on one machine decode on another.

use nacrithfs_portable::device::{Device, DeviceSession};
use nacrithfs_portable::Model;
use nc06::simd::Isa;
use nc06::Window;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const GOLDEN: &str = "d32b7fe47f85f398769e45cbea26e45597c27c1bc24733911750167dd75fa983";

/// The SHA-256 of the stream's tokens arithmetic-coded with NC06's softmax and CDFs
/// from those logits (the model-only path of a blob's text chunks); it changes only with
/// NC06's predictor version.
const GOLDEN_CODED: &str = "5bf82da0fdf8561a092b2fada509fddde059d1c59b98bed9e8c771e3f8186dbb";

/// Codes each next token of the stream with the CDF of the logits before it.
fn coded(m: &Model, logits: &[Vec<f32>]) -> String {
    use nc06::codec::{softmax_into, Cdf, Encoder, Precision};
    let mut enc = Encoder::new();
    let mut w = Vec::new();
    for (i, l) in logits.iter().enumerate() {
        let sum = softmax_into(l, 1.0, &mut w);
        let cdf = Cdf::from_weights(&w, sum, Precision::for_vocab(l.len())).unwrap();
        enc.encode(&cdf, token(m, i as u32 + 1) as usize);
    }
    let h = Sha256::digest(enc.finish());
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// `$NACRITHFS_MODEL` (a path), else the default model in the cache.
fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NACRITHFS_MODEL") {
        return p.into();
    }
    nacrithfs_portable::cache_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// 40 steps of a fixed token stream in a 16-position window sliding by 4: the SHA-256
/// of every step's logits, `step` being a session's one step.
fn golden_of(mut step: impl FnMut(u32) -> Vec<f32>) -> String {
    let mut h = Sha256::new();
    for i in 0..40u32 {
        for x in step(i) {
            h.update(x.to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The stream's token at step i (the BOS first).
fn token(m: &Model, i: u32) -> u32 {
    if i == 0 {
        m.config().bos
    } else {
        ((i - 1) * 7919 + 13) % 49152
    }
}

const WINDOW: Window = Window { ctx: 16, slide: 4 };

/// The model and its path, or `None` (the test skips) where it is not fetched.
fn model() -> Option<(Model, PathBuf)> {
    let path = model_path();
    if !path.is_file() {
        eprintln!("skipped: no model at {}", path.display());
        return None;
    }
    Some((Model::load(&path).expect("the model loads"), path))
}

#[test]
fn the_logits_of_a_fixed_stream_are_golden_everywhere() {
    let Some((m, path)) = model() else { return };
    let mut got = Vec::new();
    let mut all = Vec::new();
    for isa in Isa::available() {
        let mut s = m.session(1, WINDOW, isa);
        let sha = golden_of(|i| {
            let f = s.feed(0, token(&m, i), true).unwrap();
            s.decode(&[f]).unwrap();
            let l = s.logits(0).to_vec();
            if all.len() < 40 {
                all.push(l.clone());
            }
            l
        });
        got.push((format!("{isa:?}"), sha));
    }
    let code = coded(&m, &all);
    eprintln!("coded: {code}");
    assert_eq!(
        code, GOLDEN_CODED,
        "NC06's coding of the golden logits changed"
    );
    let mut s = DeviceSession::new(&m, Device::host(), 1, WINDOW).unwrap();
    let sha = golden_of(|i| {
        let f = s.feed(0, token(&m, i), true).unwrap();
        s.decode(&[f]).unwrap();
        s.logits(0).to_vec()
    });
    got.push(("device kernels on the host".into(), sha));
    eprintln!("{} on {}: {got:?}", std::env::consts::ARCH, path.display());
    for (what, sha) in got {
        assert_eq!(
            (nacrithfs_portable::SPEC_VERSION, sha.as_str()),
            (1, GOLDEN),
            "{what}: the portable engine's logits changed: bump SPEC_VERSION and the golden"
        );
    }
}

/// The SHA-256 of the tokens of a fixed text (tests/data's English and many scripts,
/// and edge cases of the pre-tokenizer): the tokenizer decides what the encoder codes,
/// so it must split a text the same way on every machine. (tests/tokenizer.rs holds it
/// to llama.cpp's tokens.)
const GOLDEN_TOKENS: &str = "fb2737375ec2bcda40c9d45cac54194016f2868b0ec276f49aaaa7d32da6d627";

#[test]
fn the_tokens_of_a_fixed_text_are_golden_everywhere() {
    let Some((m, _)) = model() else { return };
    let mut text = Vec::new();
    text.extend_from_slice(include_bytes!("../../../tests/data/english.txt"));
    text.extend_from_slice(include_bytes!("../../../tests/data/multilingual.txt"));
    text.extend_from_slice(
        "it's 2024'S\u{3000}\u{3000}x  \n\n\t² ٣ e\u{301}😀 <|endoftext|>".as_bytes(),
    );
    text.extend_from_slice(b"\xff\xc3(\xed\xa0\x80\xc1\x81");
    let tokens = m.vocab().tokenize(&text);
    let mut h = Sha256::new();
    for t in &tokens {
        h.update(t.to_le_bytes());
    }
    let sha: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    eprintln!("{} tokens: {sha}", tokens.len());
    assert_eq!(sha, GOLDEN_TOKENS, "the tokenizer changed");
}
