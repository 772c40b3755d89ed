//! The pre-tokenizer: how text splits into words before byte-pair merging. It is
//! llama.cpp's for SmolLM2 (`tokenizer.ggml.pre` = `smollm`), two regular expressions
//! applied in turn:
//!
//! 1. `\p{N}`: every number code point is a word of its own;
//! 2. within each piece, GPT-2's `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
//!    ?[^\s\p{L}\p{N}]+|\s+(?!\S)`, as llama.cpp's hand-written matcher reads it
//!    (`unicode_regex_split_custom_gpt2`), including where that differs from a regex
//!    engine: what matches nothing is a word of one code point.

use super::unicode::{class, is_whitespace, Class};
use std::ops::Range;

/// The words of `cps`, as ranges of it, in order and covering it.
pub(super) fn words(cps: &[u32]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(cps.len() / 3 + 1);
    let mut start = 0;
    for (i, &c) in cps.iter().enumerate() {
        if is_number(c) {
            gpt2(cps, start..i, &mut out);
            out.push(i..i + 1);
            start = i + 1;
        }
    }
    gpt2(cps, start..cps.len(), &mut out);
    out
}

/// Whether the first expression's `\p{N}` matches `c`. llama.cpp matches it on a
/// "collapsed" copy of the text in which a non-ASCII whitespace code point stands as a
/// vertical tab, so none of those is a number.
fn is_number(c: u32) -> bool {
    if c < 0x80 {
        (c as u8).is_ascii_digit()
    } else {
        !is_whitespace(c) && class(c) == Class::Number
    }
}

/// What the second expression asks of the code point at a position: nothing at all
/// past the piece's end.
#[derive(Clone, Copy)]
struct Flags {
    inside: bool,
    letter: bool,
    number: bool,
    space: bool,
}

impl Flags {
    /// A letter, number or whitespace run's member, else `[^\s\p{L}\p{N}]`'s.
    fn other(self) -> bool {
        self.inside && !(self.letter || self.number || self.space)
    }
}

/// Splits `cps[piece]` by the second expression, appending its words to `out`.
fn gpt2(cps: &[u32], piece: Range<usize>, out: &mut Vec<Range<usize>>) {
    let end = piece.end;
    let cp = |p: usize| (p < end).then(|| cps[p]);
    let flags = |p: usize| match cp(p) {
        Some(c) => {
            let k = class(c);
            Flags {
                inside: true,
                letter: k == Class::Letter,
                number: k == Class::Number,
                space: is_whitespace(c),
            }
        }
        None => Flags {
            inside: false,
            letter: false,
            number: false,
            space: false,
        },
    };
    let mut prev = piece.start;
    let mut word = |to: usize, out: &mut Vec<Range<usize>>| {
        if to > prev {
            out.push(prev..to);
        }
        prev = to;
    };
    let mut pos = piece.start;
    while pos < end {
        let c = cps[pos];
        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' as u32 {
            let next = cp(pos + 1).and_then(char::from_u32);
            let after = cp(pos + 2).and_then(char::from_u32);
            let len = match (next, after) {
                (Some('s' | 't' | 'm' | 'd'), _) => 2,
                (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 3,
                _ => 0,
            };
            if len > 0 {
                pos += len;
                word(pos, out);
                continue;
            }
        }
        let space = c == ' ' as u32;
        let first = if space { flags(pos + 1) } else { flags(pos) };
        // ?\p{L}+, ?\p{N}+ and ?[^\s\p{L}\p{N}]+: an optional space, then a run.
        let run: Option<fn(Flags) -> bool> = if first.letter {
            Some(|f| f.letter)
        } else if first.number {
            Some(|f| f.number)
        } else if first.other() {
            Some(Flags::other)
        } else {
            None
        };
        if let Some(member) = run {
            pos += usize::from(space);
            while member(flags(pos)) {
                pos += 1;
            }
            word(pos, out);
            continue;
        }
        let mut spaces = 0;
        while flags(pos + spaces).space {
            spaces += 1;
        }
        if spaces > 1 && pos + spaces < end {
            // \s+(?!\S): a whitespace run before more text leaves its last code point
            // to start the next word.
            pos += spaces - 1;
        } else if spaces > 0 {
            // \s+ at the end of the piece.
            pos += spaces;
        } else {
            // Nothing matches: a word of one code point.
            pos += 1;
        }
        word(pos, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::unicode::code_points;

    fn split(s: &str) -> Vec<String> {
        let cps = code_points(s.as_bytes());
        let w = words(&cps);
        // The words cover the text, in order.
        let mut at = 0;
        for r in &w {
            assert_eq!(r.start, at);
            assert!(r.end > r.start);
            at = r.end;
        }
        assert_eq!(at, cps.len());
        w.into_iter()
            .map(|r| cps[r].iter().map(|&c| char::from_u32(c).unwrap()).collect())
            .collect()
    }

    #[test]
    fn english_splits_as_gpt2_does() {
        assert_eq!(
            split("Hello, world! It's  fine."),
            ["Hello", ",", " world", "!", " It", "'s", " ", " fine", "."]
        );
        assert_eq!(split("we'll  go\n\n"), ["we", "'ll", " ", " go", "\n\n"]);
        assert_eq!(split("  a"), [" ", " a"]);
        assert_eq!(split("x  "), ["x", "  "]);
    }

    #[test]
    fn every_digit_is_its_own_word() {
        assert_eq!(split("in 2024."), ["in", " ", "2", "0", "2", "4", "."]);
        assert_eq!(split("x²"), ["x", "²"]);
    }

    #[test]
    fn apostrophes_other_text_and_unicode() {
        assert_eq!(split("'re'x'"), ["'re", "'", "x", "'"]);
        assert_eq!(split("don't"), ["don", "'t"]);
        assert_eq!(split("'S"), ["'", "S"]); // case matters
        assert_eq!(split("naïve café"), ["naïve", " café"]);
        // A whitespace that is not U+0020 never joins the word after it.
        assert_eq!(
            split("a\u{3000}\u{3000}b"),
            ["a", "\u{3000}", "\u{3000}", "b"]
        );
        assert_eq!(split("a \u{301}"), ["a", " \u{301}"]);
    }
}
