//! Code points as the pre-tokenizer sees them: llama.cpp's lenient UTF-8 decoding and
//! the three classes its GPT-2 split asks about (letter, number, whitespace), from a
//! table generated once from llama.cpp's own (`unicode_table.rs`).

use super::unicode_table::{RUNS, WHITESPACE};

/// What the split needs to know of a code point (`\p{L}`, `\p{N}`, anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Letter,
    Number,
    Other,
}

/// One past the last code point; beyond it everything is [`Class::Other`].
const END: u32 = 0x11_0000;

/// The class of `c`.
pub(super) fn class(c: u32) -> Class {
    if c >= END {
        return Class::Other;
    }
    // The last run starting at or before c. RUNS[0] starts at 0, so there is one.
    let i = RUNS.partition_point(|&(start, _)| start <= c);
    RUNS[i.saturating_sub(1)].1
}

/// Whether `c` is whitespace (`\s`).
pub(super) fn is_whitespace(c: u32) -> bool {
    WHITESPACE.binary_search(&c).is_ok()
}

/// The replacement character, which an undecodable byte becomes.
const REPLACEMENT: u32 = 0xFFFD;

/// The code points of `text`, decoded as llama.cpp decodes them: a lead byte and its
/// continuation bytes give their value whatever it is (overlong forms and surrogates
/// included), and a byte that starts no such sequence is U+FFFD. The decoded text then
/// differs from `text` only where `text` is not UTF-8 of this lenient kind, which a
/// round trip detects.
pub(super) fn code_points(text: &[u8]) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let len = match b {
            0x00..=0x7f => 1,
            0x80..=0xbf => 0,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            0xf8..=0xff => 0,
        };
        let tail = text.get(i + 1..i + len.max(1));
        match tail {
            Some(tail) if len > 0 && tail.iter().all(|&t| t & 0xc0 == 0x80) => {
                // The lead byte's value bits: 7 alone, else 7 − len.
                let lead = u32::from(b) & if len == 1 { 0x7f } else { 0x7f >> len };
                let c = tail.iter().fold(lead, |c, &t| c << 6 | u32::from(t & 0x3f));
                out.push(c);
                i += len;
            }
            _ => {
                out.push(REPLACEMENT);
                i += 1;
            }
        }
    }
    out
}

/// Appends `c` as UTF-8 (surrogates too, as llama.cpp writes them); `false` for a
/// value beyond U+10FFFF, which has no encoding.
pub(super) fn push_utf8(c: u32, out: &mut Vec<u8>) -> bool {
    match c {
        0..=0x7f => out.push(c as u8),
        0x80..=0x7ff => out.extend([0xc0 | (c >> 6) as u8, 0x80 | (c & 0x3f) as u8]),
        0x800..=0xffff => out.extend([
            0xe0 | (c >> 12) as u8,
            0x80 | (c >> 6 & 0x3f) as u8,
            0x80 | (c & 0x3f) as u8,
        ]),
        0x1_0000..=0x10_ffff => out.extend([
            0xf0 | (c >> 18) as u8,
            0x80 | (c >> 12 & 0x3f) as u8,
            0x80 | (c >> 6 & 0x3f) as u8,
            0x80 | (c & 0x3f) as u8,
        ]),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_some_code_points() {
        assert_eq!(class('a' as u32), Class::Letter);
        assert_eq!(class('Z' as u32), Class::Letter);
        assert_eq!(class('7' as u32), Class::Number);
        assert_eq!(class('²' as u32), Class::Number);
        assert_eq!(class('é' as u32), Class::Letter);
        assert_eq!(class('中' as u32), Class::Letter);
        assert_eq!(class('٣' as u32), Class::Number);
        assert_eq!(class(' ' as u32), Class::Other);
        assert_eq!(class('.' as u32), Class::Other);
        assert_eq!(class(0x301), Class::Other); // a combining mark is not a letter
        assert_eq!(class(0x10_ffff), Class::Other);
        assert_eq!(class(0x1f_ffff), Class::Other);
        assert!(is_whitespace(' ' as u32) && is_whitespace('\n' as u32));
        assert!(is_whitespace(0x3000) && !is_whitespace('a' as u32));
        let sorted = |v: &[u32]| v.windows(2).all(|w| w[0] < w[1]);
        assert!(sorted(&RUNS.map(|r| r.0)) && sorted(&WHITESPACE));
    }

    #[test]
    fn decoding_is_lenient_as_llama_cpp_is() {
        assert_eq!(
            code_points("aé中😀".as_bytes()),
            [0x61, 0xe9, 0x4e2d, 0x1f600]
        );
        // A stray continuation byte, a lead byte cut short, and 0xff.
        assert_eq!(code_points(b"\x80a\xc3"), [REPLACEMENT, 0x61, REPLACEMENT]);
        assert_eq!(
            code_points(b"\xe4\xb8z\xff"),
            [REPLACEMENT, REPLACEMENT, 0x7a, REPLACEMENT]
        );
        // Overlong and surrogate forms decode to their value.
        assert_eq!(code_points(b"\xc1\x81"), [0x41]);
        assert_eq!(code_points(b"\xed\xa0\x80"), [0xd800]);
        assert_eq!(code_points(b"\xf7\xbf\xbf\xbf"), [0x1f_ffff]);
    }

    #[test]
    fn encoding_inverts_decoding_of_utf8() {
        for s in [
            "",
            "plain",
            "naïve café 中文 😀",
            "\u{7ff}\u{800}\u{ffff}\u{10000}",
        ] {
            let mut out = Vec::new();
            for c in code_points(s.as_bytes()) {
                assert!(push_utf8(c, &mut out));
            }
            assert_eq!(out, s.as_bytes());
        }
        assert!(!push_utf8(0x11_0000, &mut Vec::new()));
    }
}
