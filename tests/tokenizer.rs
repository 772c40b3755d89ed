//! The portable tokenizer (`nacrithfs_portable::Vocab::tokenize`) against llama.cpp's,
//! on the real SmolLM2 vocabulary: the same tokens for the same bytes, on English,
//! code, many scripts, and text built to hit every rule of the pre-tokenizer
//! (apostrophes, digits, runs of each kind of whitespace, marks, bytes that are not
//! UTF-8).

mod common;

use common::portable_model as portable;
use std::path::Path;

/// UTF-8 texts from the repository (and ../shared/corpus where it is): English prose,
/// Markdown, Rust, shell.
fn texts() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![
        ("english".into(), common::ENGLISH.as_bytes().to_vec()),
        (
            "multilingual".into(),
            common::MULTILINGUAL.as_bytes().to_vec(),
        ),
    ];
    let mut dirs = vec![
        root.join("docs"),
        root.join("crates/portable/src"),
        root.join("scripts"),
        root.join("../shared/corpus"),
    ];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                // Text files (the built texts below bring the bytes that are not UTF-8).
                if std::str::from_utf8(&b).is_ok() {
                    out.push((p.display().to_string(), b));
                }
            }
        }
    }
    out
}

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Pieces that text built to hit the pre-tokenizer's rules is made of.
const PIECES: &[&[u8]] = &[
    b"a",
    b"Z",
    b"word",
    b" the",
    b"'s",
    b"'t",
    b"'re",
    b"'ve",
    b"'m",
    b"'ll",
    b"'d",
    b"'S",
    b"'",
    b"''",
    b"0",
    b"7",
    b"2024",
    b" 42",
    b" ",
    b"  ",
    b"   ",
    b"\t",
    b"\n",
    b"\n\n",
    b"\r\n",
    b"\x0b",
    b"\x0c",
    b".",
    b",",
    b"!?",
    b"...",
    b" (",
    b")",
    b"-",
    b"_",
    b"\"",
    b"#",
    b"$",
    b"%",
    b"&&",
    b"<|endoftext|>",
    b"<|im_start|>",
    b"@@",
    b"\\",
    b"{",
    b"}",
    "é".as_bytes(),
    "naïve".as_bytes(),
    " café".as_bytes(),
    "Ω".as_bytes(),
    "中文".as_bytes(),
    "日本語".as_bytes(),
    "한국어".as_bytes(),
    "русский".as_bytes(),
    "عربى".as_bytes(),
    "٣".as_bytes(),
    "²".as_bytes(),
    "½".as_bytes(),
    "Ⅻ".as_bytes(),
    "\u{301}".as_bytes(),
    "e\u{301}".as_bytes(),
    "\u{a0}".as_bytes(),
    "\u{85}".as_bytes(),
    "\u{3000}".as_bytes(),
    "\u{2028}".as_bytes(),
    "\u{200b}".as_bytes(),
    "😀".as_bytes(),
    "👍🏽".as_bytes(),
    "—".as_bytes(),
    "…".as_bytes(),
    "€".as_bytes(),
    "\u{feff}".as_bytes(),
    "\u{e000}".as_bytes(),
    "\u{10ffff}".as_bytes(),
    "\u{378}".as_bytes(),
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\x80",
    b"\xc3",
    b"\xe4\xb8",
    b"\xff",
    b"\xfe",
    b"\xc1\x81",
    b"\xed\xa0\x80",
    b"\xf0\x9f",
    b"\xc0\x80",
];

fn built(rng: &mut Rng) -> Vec<u8> {
    let n = 1 + rng.below(24);
    let mut t = Vec::new();
    for _ in 0..n {
        t.extend_from_slice(PIECES[rng.below(PIECES.len())]);
    }
    t
}

fn show(t: &[u8]) -> String {
    String::from_utf8_lossy(t).escape_debug().to_string()
}

#[test]
fn the_same_tokens_as_llama_cpp_on_real_text() {
    let llama = common::llama_model();
    let vocab = portable().vocab();
    let (mut files, mut bytes, mut tokens) = (0, 0, 0);
    for (name, text) in texts() {
        let want = llama.tokenize(&text);
        let got = vocab.tokenize(&text);
        if got != want {
            let at = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            panic!(
                "{name}: token {at} differs: portable {:?}, llama.cpp {:?}",
                &got[at..(at + 8).min(got.len())],
                &want[at..(at + 8).min(want.len())]
            );
        }
        assert_eq!(
            vocab.tokenize_exact(&text),
            llama.tokenize_exact(&text),
            "{name}"
        );
        files += 1;
        bytes += text.len();
        tokens += got.len();
    }
    eprintln!("{files} files, {bytes} bytes, {tokens} tokens: the same");
    assert!(
        files >= 20 && bytes > 100_000,
        "too little text: {files} files, {bytes} bytes"
    );
}

#[test]
fn the_same_tokens_as_llama_cpp_on_built_text() {
    let llama = common::llama_model();
    let vocab = portable().vocab();
    let mut rng = Rng(0x5eed_70c3);
    let mut exact = 0;
    let n = 20_000;
    for _ in 0..n {
        let text = built(&mut rng);
        let want = llama.tokenize(&text);
        assert_eq!(vocab.tokenize(&text), want, "text {:?}", show(&text));
        exact += usize::from(vocab.tokenize_exact(&text).is_some());
    }
    // Both kinds were tried: text that codes as tokens, and text that cannot.
    eprintln!("{n} built texts: {exact} code as tokens");
    assert!(exact > n / 10 && exact < n * 9 / 10, "{exact} of {n}");
}

#[test]
fn every_single_byte_and_pair_tokenizes_as_llama_cpp_does() {
    let llama = common::llama_model();
    let vocab = portable().vocab();
    for a in 0..=255u8 {
        for t in [
            vec![a],
            vec![a, b' '],
            vec![b' ', a],
            vec![a, a],
            vec![b'x', a, b'y'],
        ] {
            assert_eq!(vocab.tokenize(&t), llama.tokenize(&t), "{t:?}");
        }
    }
}

#[test]
fn code_points_beyond_unicode_are_no_tokens_and_no_abort() {
    // llama.cpp 0.1.160 throws a C++ exception on these (a value past U+10FFFF has no
    // UTF-8), which would abort the process; both tokenizers must return instead.
    let llama = common::llama_model();
    let vocab = portable().vocab();
    for t in [
        &b"\xf4\x90\x80\x80"[..],
        b"ab\xf7\xbf\xbf\xbf cd",
        b"\xf5\x80\x80\x80\n",
    ] {
        let _ = llama.tokenize(t);
        assert_eq!(llama.tokenize_exact(t), None, "{}", show(t));
        assert_eq!(vocab.tokenize_exact(t), None, "{}", show(t));
    }
}

/// UTF-8 of `c`, surrogates included (which llama.cpp decodes like any other value).
fn utf8(c: u32) -> Vec<u8> {
    match c {
        0..=0x7f => vec![c as u8],
        0x80..=0x7ff => vec![0xc0 | (c >> 6) as u8, 0x80 | (c & 0x3f) as u8],
        0x800..=0xffff => vec![
            0xe0 | (c >> 12) as u8,
            0x80 | (c >> 6 & 0x3f) as u8,
            0x80 | (c & 0x3f) as u8,
        ],
        _ => vec![
            0xf0 | (c >> 18) as u8,
            0x80 | (c >> 12 & 0x3f) as u8,
            0x80 | (c >> 6 & 0x3f) as u8,
            0x80 | (c & 0x3f) as u8,
        ],
    }
}

#[test]
fn every_code_point_tokenizes_as_llama_cpp_does() {
    // Each code point among letters, digits, spaces and punctuation, so that its class
    // (letter, number, whitespace, other) decides where the words split.
    let llama = common::llama_model();
    let vocab = portable().vocab();
    // 64 code points a call: llama.cpp's cost is mostly per call.
    let mut t = Vec::new();
    for first in (0..0x11_0000u32).step_by(64) {
        t.clear();
        for c in first..first + 64 {
            let u = utf8(c);
            for part in [
                &b"a"[..],
                &u,
                &u,
                b" ",
                &u,
                b"1",
                &u,
                b"'s",
                &u,
                b".",
                &u,
                b"  x",
            ] {
                t.extend_from_slice(part);
            }
        }
        assert_eq!(
            vocab.tokenize(&t),
            llama.tokenize(&t),
            "U+{first:04X} to U+{:04X}",
            first + 63
        );
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // Bytes of any kind, most of them high (lead and continuation bytes in every
    // order, and values past U+10FFFF): the tokenizer returns, and what it calls exact
    // gives the bytes back.
    let vocab = portable().vocab();
    let mut rng = Rng(0xb17e_5eed);
    for _ in 0..50_000 {
        let n = rng.below(40);
        let t: Vec<u8> = (0..n)
            .map(|_| match rng.below(4) {
                0 => b"a '1\n"[rng.below(5)],
                _ => 0x80 + rng.below(128) as u8,
            })
            .collect();
        let _ = vocab.tokenize(&t);
        if let Some(tokens) = vocab.tokenize_exact(&t) {
            let mut back = Vec::new();
            vocab.detokenize_into(&tokens, &mut back);
            assert_eq!(back, t);
        }
    }
}
