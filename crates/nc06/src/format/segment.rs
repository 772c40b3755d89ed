//! Cutting a file into text and binary extents.
//!
//! Unlike the reference, text is UTF-8 aware: accents, CJK and emoji are text. Bytes
//! the SmolLM2 tokenizer cannot give back (0x04 0x06 0x13 0x14 0x16 0x1d, invalid
//! UTF-8, and the lead bytes 0xf1/0xf2 that have no token) are binary. The caller still
//! checks every text segment's tokenizer round trip before trusting it.

use super::container::ExtentKind;
use std::ops::Range;

/// How a file is cut into extents.
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// Text runs shorter than this are not worth a model stream; they become binary.
    pub min_text: usize,
    /// Binary gaps of at most this many bytes between text runs are coded as text.
    pub bridge: usize,
    /// Text runs longer than this are cut into balanced chunks of at most this size.
    pub chunk_size: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            min_text: 64,
            bridge: 8,
            chunk_size: super::DEFAULT_CHUNK_SIZE,
        }
    }
}

/// One extent as segmentation proposes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Text for the model, or binary.
    pub kind: ExtentKind,
    /// Its bytes in the input.
    pub range: Range<usize>,
}

/// ASCII control bytes the tokenizer has no token for.
const NO_TOKEN: [u8; 6] = [0x04, 0x06, 0x13, 0x14, 0x16, 0x1d];

/// Length of the text character at the start of `b`, or 0 if it is not text.
fn text_char_len(b: &[u8]) -> usize {
    let c = b[0];
    match c {
        b'\t' | b'\n' | b'\r' | 0x20..=0x7e => 1,
        0xc2..=0xf4 if c != 0xf1 && c != 0xf2 => {
            let n = if c < 0xe0 {
                2
            } else if c < 0xf0 {
                3
            } else {
                4
            };
            if b.len() >= n && std::str::from_utf8(&b[..n]).is_ok() {
                n
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// A binary byte that may still sit inside text when it bridges two text runs.
fn bridgeable(c: u8) -> bool {
    (c < 0x20 || c == 0x7f) && !NO_TOKEN.contains(&c)
}

fn push(out: &mut Vec<Segment>, kind: ExtentKind, range: Range<usize>) {
    if range.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.kind == kind && last.range.end == range.start {
            last.range.end = range.end;
            return;
        }
    }
    out.push(Segment { kind, range });
}

/// Whether byte `c` may lie inside a text extent: in a text character or in a bridged
/// gap. The others (the no-token controls, 0xc0, 0xc1, 0xf1, 0xf2 and 0xf5–0xff, 21
/// values) never do, so a text extent lies between two of them.
const fn may_be_text(c: u8) -> bool {
    !matches!(
        c,
        0x04 | 0x06 | 0x13 | 0x14 | 0x16 | 0x1d | 0xc0 | 0xc1 | 0xf1 | 0xf2 | 0xf5..=0xff
    )
}

/// [`may_be_text`] of every byte value.
static MAY_BE_TEXT: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = may_be_text(c as u8);
        c += 1;
    }
    t
};

/// Cuts `data` into extents covering it in order, with no two neighbours of the same
/// kind except text chunks split for size.
///
/// A text extent lies inside a stretch of bytes that [`may_be_text`], and such a
/// stretch is cut alone exactly as it is inside the file: the bytes around it are
/// binary runs no gap can bridge. So only stretches of at least `min_text` bytes are
/// looked at closely (random bytes: one in about 250 positions); the rest is binary,
/// found at the speed of a table lookup per byte.
pub fn segment(data: &[u8], opts: &SegmentOptions) -> Vec<Segment> {
    let min = opts.min_text.max(1);
    let mut out: Vec<Segment> = Vec::new();
    // Where the bytes not yet in `out` start.
    let mut at = 0;
    let stretch = |out: &mut Vec<Segment>, at: &mut usize, start: usize, end: usize| {
        push(out, ExtentKind::Binary, *at..start);
        for seg in segment_stretch(&data[start..end], opts) {
            let range = start + seg.range.start..start + seg.range.end;
            match out.last_mut() {
                Some(last)
                    if seg.kind == ExtentKind::Binary
                        && last.kind == ExtentKind::Binary
                        && last.range.end == range.start =>
                {
                    last.range.end = range.end
                }
                _ => out.push(Segment {
                    kind: seg.kind,
                    range,
                }),
            }
        }
        *at = end;
    };
    // The current stretch starts after the last byte that is never text.
    let mut from = 0;
    for (i, &c) in data.iter().enumerate() {
        if !MAY_BE_TEXT[c as usize] {
            if i - from >= min {
                stretch(&mut out, &mut at, from, i);
            }
            from = i + 1;
        }
    }
    if data.len() - from >= min {
        stretch(&mut out, &mut at, from, data.len());
    }
    push(&mut out, ExtentKind::Binary, at..data.len());
    out
}

/// [`segment`] of a stretch of bytes, one pass with a run of lookahead: character-class
/// runs are bridged and merged as they are found, so memory grows with the extents that
/// come out, not with the runs.
fn segment_stretch(data: &[u8], opts: &SegmentOptions) -> Vec<Segment> {
    let mut merge = Merge {
        opts,
        data,
        current: None,
        merged: Vec::new(),
    };
    // 1. Runs by character class; each run is passed on once the next one has begun
    // (a gap can be bridged only between two text runs).
    let mut building: Option<Segment> = None;
    let mut done: Option<Segment> = None;
    let mut index = 0usize;
    let mut i = 0;
    while i < data.len() {
        let n = text_char_len(&data[i..]);
        let (kind, len) = if n > 0 {
            (ExtentKind::Text, n)
        } else {
            (ExtentKind::Binary, 1)
        };
        match building.as_mut() {
            Some(b) if b.kind == kind => b.range.end = i + len,
            _ => {
                if let Some(b) = building.replace(Segment {
                    kind,
                    range: i..i + len,
                }) {
                    if let Some(run) = done.replace(b) {
                        merge.bridge(run, index, true);
                        index += 1;
                    }
                }
            }
        }
        i += len;
    }
    if let Some(b) = building {
        if let Some(run) = done.replace(b) {
            merge.bridge(run, index, true);
            index += 1;
        }
    }
    if let Some(run) = done {
        merge.bridge(run, index, false);
    }
    cut_long_text(data, merge.finish(), opts)
}

/// Step 4 of [`segment`]: long text is cut into balanced chunks at line or word
/// boundaries.
fn cut_long_text(data: &[u8], merged: Vec<Segment>, opts: &SegmentOptions) -> Vec<Segment> {
    let mut out = Vec::with_capacity(merged.len());
    for r in merged {
        if r.kind == ExtentKind::Text && r.range.len() > opts.chunk_size {
            split_text(data, r.range, opts.chunk_size.max(64), &mut out);
        } else {
            out.push(r);
        }
    }
    out
}

/// Steps 2 and 3 of [`segment`], fed one character-class run at a time.
struct Merge<'a> {
    opts: &'a SegmentOptions,
    data: &'a [u8],
    /// The bridged run being extended (step 2's output, not yet through step 3).
    current: Option<Segment>,
    merged: Vec<Segment>,
}

impl Merge<'_> {
    /// Step 2: bridge short gaps of harmless bytes between text runs (run number `index`,
    /// with `more` when another run follows it).
    fn bridge(&mut self, run: Segment, index: usize, more: bool) {
        let is_gap = run.kind == ExtentKind::Binary
            && index > 0
            && more
            && run.range.len() <= self.opts.bridge
            && self.data[run.range.clone()].iter().all(|&c| bridgeable(c));
        let kind = if is_gap { ExtentKind::Text } else { run.kind };
        match self.current.as_mut() {
            Some(c) if c.kind == kind && c.range.end == run.range.start => {
                c.range.end = run.range.end
            }
            _ => {
                if let Some(c) = self.current.replace(Segment {
                    kind,
                    range: run.range,
                }) {
                    self.settle(c);
                }
            }
        }
    }

    /// Step 3: short text is not worth a model stream.
    fn settle(&mut self, r: Segment) {
        let kind = if r.kind == ExtentKind::Text && r.range.len() < self.opts.min_text {
            ExtentKind::Binary
        } else {
            r.kind
        };
        push(&mut self.merged, kind, r.range);
    }

    fn finish(mut self) -> Vec<Segment> {
        if let Some(c) = self.current.take() {
            self.settle(c);
        }
        self.merged
    }
}

fn split_text(data: &[u8], range: Range<usize>, chunk: usize, out: &mut Vec<Segment>) {
    let mut start = range.start;
    let mut left = range.len();
    while left > chunk {
        let pieces = left.div_ceil(chunk);
        let target = left / pieces;
        let cut = best_cut(
            data,
            start,
            start + target,
            start + chunk.min(target + target / 8),
        );
        out.push(Segment {
            kind: ExtentKind::Text,
            range: start..cut,
        });
        left -= cut - start;
        start = cut;
    }
    out.push(Segment {
        kind: ExtentKind::Text,
        range: start..range.end,
    });
}

/// A cut position in `(start, hi]` near `target`: after a newline if there is one within
/// an eighth of the target, else after a space, else at a character boundary.
fn best_cut(data: &[u8], start: usize, target: usize, hi: usize) -> usize {
    let lo = start + (target - start) * 7 / 8;
    for pat in [b'\n', b' '] {
        if let Some(p) = data[lo..hi].iter().rposition(|&c| c == pat) {
            return lo + p + 1;
        }
    }
    // Back up to a UTF-8 character boundary (never past `lo`, which is > start).
    let mut cut = target.max(start + 1);
    while cut > lo && cut < data.len() && (data[cut] & 0xc0) == 0x80 {
        cut -= 1;
    }
    cut
}

/// The shortest run of zero bytes that a writer stores as a zero extent (a hole):
/// shorter runs cost a classical codec almost nothing, and stay in their frames.
pub const MIN_ZERO_RUN: usize = 64 << 10;

/// The runs of at least `min` zero bytes in `data`, in order.
pub fn zero_runs(data: &[u8], min: usize) -> Vec<Range<usize>> {
    let min = min.max(1);
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        // Skip to the next zero byte.
        match data[i..].iter().position(|&b| b == 0) {
            Some(p) => i += p,
            None => break,
        }
        let start = i;
        // Whole words of zeros first (the common case in a hole), then bytes.
        let words = data[i..].chunks_exact(8);
        let zero_words = words.take_while(|w| w == &[0u8; 8]).count();
        i += zero_words * 8;
        i += data[i..].iter().take_while(|&&b| b == 0).count();
        if i - start >= min {
            out.push(start..i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_runs_finds_long_runs_only() {
        let mut d = vec![1u8; 10];
        d.extend(vec![0u8; 100]);
        d.push(7);
        d.extend(vec![0u8; 99]);
        d.extend(vec![0u8; 5]);
        d.push(9);
        d.extend(vec![0u8; 3]);
        assert_eq!(zero_runs(&d, 100), vec![10..110, 111..215]);
        assert_eq!(zero_runs(&d, 104), vec![111..215]);
        assert_eq!(zero_runs(&d, 1).len(), 3);
        assert!(zero_runs(&[], 1).is_empty());
        assert_eq!(zero_runs(&[0; 17], 17), vec![0..17]);
    }
    use proptest::prelude::*;

    /// The three-pass segmentation (steps 1-3) that [`segment`] replaced, kept to show
    /// that the one-pass form cuts every input the same way (blobs stay byte-identical).
    fn segment_in_passes(data: &[u8], opts: &SegmentOptions) -> Vec<Segment> {
        let mut runs: Vec<Segment> = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = text_char_len(&data[i..]);
            if n > 0 {
                push(&mut runs, ExtentKind::Text, i..i + n);
                i += n;
            } else {
                push(&mut runs, ExtentKind::Binary, i..i + 1);
                i += 1;
            }
        }
        let mut bridged: Vec<Segment> = Vec::new();
        for (k, r) in runs.iter().enumerate() {
            let is_gap = r.kind == ExtentKind::Binary
                && k > 0
                && k + 1 < runs.len()
                && r.range.len() <= opts.bridge
                && data[r.range.clone()].iter().all(|&c| bridgeable(c));
            let kind = if is_gap { ExtentKind::Text } else { r.kind };
            push(&mut bridged, kind, r.range.clone());
        }
        let mut merged: Vec<Segment> = Vec::new();
        for r in bridged {
            let kind = if r.kind == ExtentKind::Text && r.range.len() < opts.min_text {
                ExtentKind::Binary
            } else {
                r.kind
            };
            push(&mut merged, kind, r.range);
        }
        // Step 4 did not change: the same function.
        cut_long_text(data, merged, opts)
    }

    fn kinds(s: &[Segment]) -> Vec<(ExtentKind, usize)> {
        s.iter().map(|x| (x.kind, x.range.len())).collect()
    }

    #[test]
    fn utf8_is_text() {
        let text = "Ça va? 東京は晴れです 🙂 — naïve façade. ".repeat(4);
        let s = segment(text.as_bytes(), &SegmentOptions::default());
        assert_eq!(kinds(&s), vec![(ExtentKind::Text, text.len())]);
    }

    #[test]
    fn binary_with_embedded_text() {
        let mut d = vec![0u8, 0xff, 0xfe, 0x80];
        d.extend_from_slice(
            "hello world, this is a long enough piece of text to be worth it.".as_bytes(),
        );
        d.extend_from_slice(&[0x00, 0x01]);
        d.extend_from_slice(
            "and this continues the text after a bridged two-byte gap right here".as_bytes(),
        );
        d.extend_from_slice(&[0xff; 3]);
        let s = segment(&d, &SegmentOptions::default());
        assert_eq!(
            s.iter().map(|x| x.kind).collect::<Vec<_>>(),
            vec![ExtentKind::Binary, ExtentKind::Text, ExtentKind::Binary]
        );
        assert_eq!(s[1].range.len(), d.len() - 7);
    }

    #[test]
    fn no_token_bytes_are_never_bridged() {
        let mut d = "x".repeat(100).into_bytes();
        d.push(0x04);
        d.extend_from_slice("y".repeat(100).as_bytes());
        let s = segment(&d, &SegmentOptions::default());
        assert_eq!(
            kinds(&s),
            vec![
                (ExtentKind::Text, 100),
                (ExtentKind::Binary, 1),
                (ExtentKind::Text, 100)
            ]
        );
    }

    #[test]
    fn long_text_is_split_in_balanced_chunks_at_newlines() {
        let line = "The quick brown fox jumps over the lazy dog.\n";
        let text = line.repeat(1000);
        let opts = SegmentOptions {
            chunk_size: 8192,
            ..Default::default()
        };
        let s = segment(text.as_bytes(), &opts);
        assert_eq!(s.len(), text.len().div_ceil(8192));
        for seg in &s {
            assert!(seg.range.len() <= 8192);
            assert_eq!(text.as_bytes()[seg.range.end - 1], b'\n');
        }
    }

    proptest! {
        #[test]
        fn segments_tile_the_input(data in proptest::collection::vec(prop_oneof![
            4 => 0x20u8..0x7f, 1 => any::<u8>(), 1 => Just(b'\n')], 0..3000),
            chunk in 64usize..600) {
            let opts = SegmentOptions { chunk_size: chunk, ..Default::default() };
            let s = segment(&data, &opts);
            let mut pos = 0;
            for seg in &s {
                prop_assert_eq!(seg.range.start, pos);
                prop_assert!(!seg.range.is_empty());
                if seg.kind == ExtentKind::Text {
                    prop_assert!(seg.range.len() <= chunk);
                    prop_assert!(std::str::from_utf8(&data[seg.range.clone()]).is_ok());
                    prop_assert!(!data[seg.range.clone()].iter().any(|c| NO_TOKEN.contains(c) || *c == 0xf1 || *c == 0xf2));
                }
                pos = seg.range.end;
            }
            prop_assert_eq!(pos, data.len());
        }

        #[test]
        fn one_pass_cuts_like_three_passes(data in proptest::collection::vec(prop_oneof![
            6 => 0x20u8..0x7f, 2 => 0u8..0x20, 1 => 0x7fu8..=0xff, 1 => Just(b'\n')], 0..4000),
            bridge in 0usize..12, min_text in 1usize..100, chunk in 64usize..600) {
            let opts = SegmentOptions { chunk_size: chunk, min_text, bridge };
            prop_assert_eq!(segment(&data, &opts), segment_in_passes(&data, &opts));
        }

        #[test]
        fn skipping_short_stretches_changes_nothing(data in proptest::collection::vec(prop_oneof![
            8 => 0x20u8..0x7f, 2 => 0u8..0x20, 2 => 0x80u8..0xc0, 2 => 0xc2u8..0xf5,
            1 => 0xf5u8..=0xff, 1 => Just(0xc0u8), 1 => Just(0x04u8), 1 => Just(b'\n')], 0..4000),
            bridge in 0usize..12, min_text in 0usize..100, chunk in 64usize..600) {
            // The whole input cut in one pass, as before stretches were skipped.
            let opts = SegmentOptions { chunk_size: chunk, min_text, bridge };
            prop_assert_eq!(segment(&data, &opts), segment_stretch(&data, &opts));
        }

        #[test]
        fn skipping_changes_nothing_in_utf8_with_random_bytes(
            parts in proptest::collection::vec(("\\PC{0,300}", proptest::collection::vec(any::<u8>(), 0..40)), 0..12),
            min_text in 0usize..100) {
            let mut data = Vec::new();
            for (text, noise) in &parts {
                data.extend_from_slice(text.as_bytes());
                data.extend_from_slice(noise);
            }
            let opts = SegmentOptions { min_text, ..Default::default() };
            prop_assert_eq!(segment(&data, &opts), segment_stretch(&data, &opts));
        }

        #[test]
        fn utf8_text_splits_on_char_boundaries(s in "\\PC{0,2000}", chunk in 64usize..300) {
            let opts = SegmentOptions { chunk_size: chunk, min_text: 1, bridge: 0 };
            for seg in segment(s.as_bytes(), &opts) {
                prop_assert!(s.is_char_boundary(seg.range.start) && s.is_char_boundary(seg.range.end));
            }
        }
    }
}
