//! Looking inside blobs from tests.
#![allow(dead_code)]

use nc06::format::{Blob, ChunkEntry, Index};

/// Every chunk of `old` (table entry and coded stream) that appears in `new`: the
/// chunks a compression again copied as they were.
pub fn copied_chunks(old: &Blob, new: &Blob) -> usize {
    let streams = |b: &Blob, i: &Index| -> Vec<(ChunkEntry, Vec<u8>)> {
        (0..b.chunks.len())
            .map(|k| (b.chunks[k], b.chunk_stream(i, k).to_vec()))
            .collect()
    };
    let n = streams(new, &new.index());
    streams(old, &old.index())
        .iter()
        .filter(|c| n.contains(c))
        .count()
}
