//! Byte-pair merging of one word, as llama.cpp does it (`llm_tokenizer_bpe_session`):
//! start from one symbol a byte, and merge the adjacent pair of lowest rank, the
//! leftmost of equal rank, until no pair has a rank. Symbols are kept as the text's own
//! bytes; the GGUF writes them through GPT-2's byte alphabet, which
//! [`Merges::from_gguf`] undoes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The merge ranks and the token of each byte string.
pub(super) struct Merges {
    /// Rank of each mergeable pair, keyed by [`pair_key`].
    ranks: HashMap<Vec<u8>, u32>,
    /// The token of each byte string (the last of equal strings, as llama.cpp keeps).
    ids: HashMap<Box<[u8]>, u32>,
}

/// The key of the pair (`left`, `right`): `left`'s length, then both.
fn pair_key(key: &mut Vec<u8>, left: &[u8], right: &[u8]) {
    key.clear();
    key.extend_from_slice(&(left.len() as u32).to_le_bytes());
    key.extend_from_slice(left);
    key.extend_from_slice(right);
}

/// A symbol: `len` bytes of the word from `start`; 0 once merged into its left.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Merges {
    /// From each token's bytes (`None` where its text is not wholly in GPT-2's
    /// alphabet: byte-level merging never forms it) and each merge rule's two sides
    /// (likewise, in rank order).
    pub(super) fn new(
        tokens: impl Iterator<Item = Option<Vec<u8>>>,
        rules: impl Iterator<Item = Option<(Vec<u8>, Vec<u8>)>>,
    ) -> Merges {
        let mut ids = HashMap::new();
        for (id, t) in tokens.enumerate() {
            if let Some(t) = t {
                ids.insert(t.into_boxed_slice(), id as u32);
            }
        }
        let mut ranks = HashMap::new();
        let mut key = Vec::new();
        for (rank, rule) in rules.enumerate() {
            if let Some((l, r)) = rule {
                pair_key(&mut key, &l, &r);
                // The first of equal rules holds, as llama.cpp's emplace keeps it.
                ranks.entry(key.clone()).or_insert(rank as u32);
            }
        }
        Merges { ranks, ids }
    }

    /// Appends the tokens of `word` to `out`. A merged symbol that is no token falls
    /// back to a token per byte, and a byte with no token of its own is left out
    /// (llama.cpp's behaviour; the caller's round trip then fails).
    pub(super) fn encode(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let n = word.len();
        let mut sym: Vec<Symbol> = (0..n)
            .map(|i| Symbol {
                start: i,
                len: 1,
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
            })
            .collect();
        let mut key = Vec::new();
        // (rank, left, right, bytes of both): the smallest rank first, then the
        // leftmost.
        let mut queue = BinaryHeap::new();
        let mut push =
            |sym: &[Symbol], queue: &mut BinaryHeap<_>, l: Option<usize>, r: Option<usize>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                let (a, b) = (sym[l], sym[r]);
                let left = &word[a.start..a.start + a.len];
                let right = &word[b.start..b.start + b.len];
                pair_key(&mut key, left, right);
                if let Some(&rank) = self.ranks.get(&key) {
                    queue.push(Reverse((rank, l, r, a.len + b.len)));
                }
            };
        for i in 1..n {
            push(&sym, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(Reverse((_, l, r, len))) = queue.pop() {
            // A pair is stale once either side has changed: a symbol only grows, so
            // its length tells.
            if sym[l].len == 0 || sym[r].len == 0 || sym[l].len + sym[r].len != len {
                continue;
            }
            sym[l].len = len;
            sym[r].len = 0;
            sym[l].next = sym[r].next;
            if let Some(nx) = sym[r].next {
                sym[nx].prev = Some(l);
            }
            push(&sym, &mut queue, sym[l].prev, Some(l));
            push(&sym, &mut queue, Some(l), sym[l].next);
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = sym[i];
            let bytes = &word[s.start..s.start + s.len];
            match self.ids.get(bytes) {
                Some(&id) => out.push(id),
                None => out.extend(bytes.iter().filter_map(|&b| self.byte_token(b))),
            }
            at = s.next;
        }
    }

    /// The token a lone byte falls back to. llama.cpp looks up the single bytes of the
    /// symbol's GPT-2 text, so only a byte that is its own character (`!` to `~`) can
    /// be found.
    fn byte_token(&self, b: u8) -> Option<u32> {
        if (0x21..=0x7e).contains(&b) {
            self.ids.get(&[b][..]).copied()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merges(tokens: &[&str], rules: &[(&str, &str)]) -> Merges {
        Merges::new(
            tokens.iter().map(|t| Some(t.as_bytes().to_vec())),
            rules
                .iter()
                .map(|(l, r)| Some((l.as_bytes().to_vec(), r.as_bytes().to_vec()))),
        )
    }

    fn encode(m: &Merges, w: &str) -> Vec<u32> {
        let mut out = Vec::new();
        m.encode(w.as_bytes(), &mut out);
        out
    }

    #[test]
    fn lowest_rank_first_then_leftmost() {
        let m = merges(
            &["a", "b", "c", "ab", "bc", "abc", "aa"],
            &[("b", "c"), ("a", "b"), ("a", "bc"), ("a", "a")],
        );
        // bc (rank 0) before ab (rank 1), then a+bc.
        assert_eq!(encode(&m, "abc"), [5]);
        assert_eq!(encode(&m, "ab"), [3]);
        // aaa: the leftmost pair merges first.
        assert_eq!(encode(&m, "aaa"), [6, 0]);
        assert_eq!(encode(&m, "cab"), [2, 3]);
        assert_eq!(encode(&m, ""), Vec::<u32>::new());
    }

    #[test]
    fn a_merge_that_is_no_token_falls_back_to_bytes() {
        let m = merges(&["x", "y"], &[("x", "y")]);
        assert_eq!(encode(&m, "xy"), [0, 1]);
        // A byte with no token is left out.
        assert_eq!(encode(&m, "xzy"), [0, 1]);
        // Only a byte that is its own GPT-2 character falls back: a newline in a
        // merged symbol that is no token is lost, though "\n" is a token.
        let m = merges(&["\n", "a"], &[("\n", "a")]);
        assert_eq!(encode(&m, "\n\n"), [0, 0]);
        assert_eq!(encode(&m, "\na"), [1]);
    }
}
