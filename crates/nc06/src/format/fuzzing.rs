//! Entry points for fuzzing the code that reads untrusted bytes: the NC06 container
//! parser with the binary frame decoders behind it, and the arithmetic decoder. The
//! cargo-fuzz targets in fuzz/ call them, and tests/fuzz_replay.rs runs them on stable
//! over the seed corpus and random inputs. Each must return on any input: never panic,
//! hang or allocate without bound (a damaged blob in BACKING reaches exactly this code).

use super::{decompress_frame, Blob, FRAME_SIZE};
use crate::codec::{fixed_sum, Cdf, Decoder, Encoder};

/// Parses `data` as a blob (header alone, then whole); for a blob that parses, walks
/// its index, every chunk stream and every frame (decompressing it), and checks that
/// serialising it gives bytes that parse back to the same blob.
pub fn container(data: &[u8]) {
    if let Ok((b, _)) = Blob::parse_header(data) {
        let _ = b.index();
    }
    let Ok(blob) = Blob::parse(data) else { return };
    let index = blob.index();
    let total: u64 = index.extents.iter().map(|e| e.len).sum();
    assert_eq!(
        total, blob.header.original_len,
        "extents do not tile the file"
    );
    for i in 0..blob.chunks.len() {
        let _ = blob.chunk_stream(&index, i);
    }
    for (i, f) in blob.frames.iter().enumerate() {
        assert!(f.raw_len as usize <= FRAME_SIZE);
        if let Ok(raw) = decompress_frame(f.method, blob.frame_bytes(&index, i), f.raw_len as usize)
        {
            assert_eq!(raw.len(), f.raw_len as usize);
        }
    }
    let again = Blob::parse(&blob.to_bytes()).expect("a parsed blob serialises to a parsable one");
    assert!(again == blob, "serialise/parse round trip changed the blob");
}

/// Decodes symbols from `data` with a CDF built from its first bytes, then encodes
/// them and decodes that again: the same symbols must come back.
pub fn decoder(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let symbols = 2 + n as usize % 254;
    if rest.len() < symbols {
        return;
    }
    let (weights, stream) = rest.split_at(symbols);
    let w: Vec<f32> = weights.iter().map(|&b| b as f32 + 1.0).collect();
    let Ok(cdf) = Cdf::from_weights(&w, fixed_sum(&w)) else {
        return;
    };
    let count = 8 * stream.len() + 64;
    let mut dec = Decoder::new(stream);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let s = cdf.find(dec.target());
        assert!(s < cdf.len());
        let (lo, hi) = cdf.range(s);
        dec.consume(lo, hi);
        out.push(s);
    }
    let mut enc = Encoder::new();
    for &s in &out {
        let (lo, hi) = cdf.range(s);
        enc.encode(lo, hi);
    }
    let bytes = enc.finish();
    let mut dec = Decoder::new(&bytes);
    for &s in &out {
        let t = cdf.find(dec.target());
        assert_eq!(t, s, "re-encoded symbols decode differently");
        let (lo, hi) = cdf.range(t);
        dec.consume(lo, hi);
    }
}
