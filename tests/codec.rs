//! Round trips through the real model and llama.cpp: every kind of input, chunk-level
//! random access, batch-versus-alone determinism, window sliding, and corrupt blobs.

mod common;

use common::{engine, noise, ENGLISH, MULTILINGUAL};
use nacrithfs_engine::CompressOptions;
use nacrithfs_engine::Error;
use nacrithfs_engine::Priority;
use nc06::format::{Blob, ExtentKind};
use nc06::Window;

fn roundtrip(data: &[u8], opts: &CompressOptions, enc_streams: u32, dec_streams: u32) -> Blob {
    let c = engine(enc_streams)
        .compress(data, opts, None)
        .expect("compress");
    let back = engine(dec_streams)
        .decompress(&c.blob, None)
        .expect("decompress");
    assert!(back == data, "round trip changed the data");
    Blob::parse(&c.blob).expect("parse")
}

/// The defaults without the verifying decode: for tests that decode the blob themselves.
fn unverified() -> CompressOptions {
    CompressOptions {
        verify: false,
        ..Default::default()
    }
}

fn kinds(b: &Blob) -> Vec<ExtentKind> {
    b.extents.iter().map(|e| e.kind).collect()
}

#[test]
fn english_compresses_well_and_the_coder_is_near_ideal() {
    let data = ENGLISH.as_bytes();
    let c = engine(4)
        .compress(data, &CompressOptions::default(), None)
        .unwrap();
    let s = &c.stats;
    let coded_bits = s.stream_bytes as f64 * 8.0;
    // The coder adds at most its flush bits and byte padding to the ideal code length.
    assert!(
        coded_bits <= s.ideal_bits * 1.001 + 16.0 * s.chunks as f64,
        "coded {coded_bits} vs ideal {}",
        s.ideal_bits
    );
    let bpb = c.blob.len() as f64 * 8.0 / data.len() as f64;
    assert!(bpb < 2.0, "{bpb} bits/byte");
    assert_eq!(engine(1).decompress(&c.blob, None).unwrap(), data);
}

#[test]
fn multilingual_utf8_is_coded_by_the_model() {
    let b = roundtrip(MULTILINGUAL.as_bytes(), &CompressOptions::default(), 2, 1);
    assert_eq!(kinds(&b), vec![ExtentKind::Text]);
}

#[test]
fn source_code_roundtrips() {
    let src = include_str!("../crates/nc06/src/format/varint.rs");
    let end = (0..=900).rev().find(|&i| src.is_char_boundary(i)).unwrap();
    let b = roundtrip(&src.as_bytes()[..end], &CompressOptions::default(), 2, 2);
    assert_eq!(kinds(&b), vec![ExtentKind::Text]);
}

#[test]
fn every_byte_value_and_binary_with_embedded_text() {
    let mut data: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    data.extend_from_slice(&ENGLISH.as_bytes()[..400]);
    data.extend(noise(700, 7));
    data.extend_from_slice(&ENGLISH.as_bytes()[400..700]);
    data.extend((0..=255u8).rev());
    let b = roundtrip(&data, &CompressOptions::default(), 4, 1);
    let k = kinds(&b);
    assert!(
        k.contains(&ExtentKind::Binary)
            && k.iter().filter(|&&x| x == ExtentKind::Text).count() >= 2,
        "{k:?}"
    );
}

#[test]
fn empty_and_tiny_inputs() {
    for data in [&b""[..], b"a", b"\xff", b"\x04", b"\n", "é".as_bytes()] {
        roundtrip(data, &CompressOptions::default(), 1, 1);
    }
}

/// Both backends: the default (the portable engine) and llama.cpp, whose older blobs
/// must keep decoding.
#[test]
fn chunks_coded_in_a_batch_decode_alone_and_the_reverse() {
    batch_and_alone(common::engine);
    batch_and_alone(common::llama_engine);
}

fn batch_and_alone(engine: fn(u32) -> nacrithfs_engine::Engine) {
    // ~1.3 KB cut into 64-byte chunks: over 20 streams coded side by side.
    let data = ENGLISH.as_bytes();
    let opts = CompressOptions {
        chunk_size: 64,
        ..Default::default()
    };
    let c = engine(32).compress(data, &opts, None).unwrap();
    let blob = Blob::parse(&c.blob).unwrap();
    assert!(blob.chunks.len() >= 20, "{} chunks", blob.chunks.len());
    let idx = blob.index();
    // One chunk in the middle, decoded by itself in a single-stream context.
    let alone = engine(1);
    let e = idx.extents[idx.extents.len() / 2];
    let (off, bytes) = alone
        .decompress_range(&blob, &idx, e.orig_offset + 1, e.orig_offset + 2, None)
        .unwrap();
    assert_eq!(off, e.orig_offset);
    assert_eq!(bytes, &data[off as usize..(off + e.len) as usize]);
    // The reverse: coded one stream at a time, decoded 32 at a time.
    let c1 = engine(1)
        .compress(
            data,
            &CompressOptions {
                verify: false,
                ..opts.clone()
            },
            None,
        )
        .unwrap();
    assert_eq!(c1.blob, c.blob, "batch composition changed the coded bytes");
    assert_eq!(engine(32).decompress(&c1.blob, None).unwrap(), data);
}

#[test]
fn concurrent_requests_share_the_pool_and_code_the_same_bytes() {
    // Three callers at once on one engine: their chunks (and a different window for one
    // of them) interleave in the workers' contexts; each blob must equal the one coded
    // alone, and decode back.
    let data = ENGLISH.as_bytes();
    let inputs: Vec<(&[u8], CompressOptions)> = vec![
        (
            &data[..400],
            CompressOptions {
                chunk_size: 100,
                verify: false,
                ..Default::default()
            },
        ),
        (
            &data[400..700],
            CompressOptions {
                chunk_size: 150,
                verify: false,
                ..Default::default()
            },
        ),
        (
            &data[700..900],
            CompressOptions {
                chunk_size: 100,
                verify: false,
                window: Window { ctx: 48, slide: 16 },
                ..Default::default()
            },
        ),
    ];
    let shared = nacrithfs_engine::Engine::new(
        common::model(),
        nacrithfs_engine::EngineConfig {
            streams: 6,
            workers: 2,
        },
    );
    let together: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = inputs
            .iter()
            .map(|(d, o)| s.spawn(|| shared.compress(d, o, None).unwrap().blob))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let alone = engine(1);
    for ((d, o), blob) in inputs.iter().zip(&together) {
        assert_eq!(
            &alone.compress(d, o, None).unwrap().blob,
            blob,
            "sharing the pool changed the coded bytes"
        );
        assert_eq!(shared.decompress(blob, None).unwrap(), *d);
    }
}

#[test]
fn sliding_window_is_deterministic() {
    // A 48-token window sliding by 16: many slides per chunk, in a batch and alone,
    // under both backends.
    let data = &ENGLISH.as_bytes()[..700];
    let opts = CompressOptions {
        chunk_size: 350,
        window: Window { ctx: 48, slide: 16 },
        ..Default::default()
    };
    let b = roundtrip(data, &opts, 3, 1);
    assert_eq!(b.header.window, Window { ctx: 48, slide: 16 });
    let c = common::llama_engine(3).compress(data, &opts, None).unwrap();
    assert_eq!(
        common::llama_engine(1).decompress(&c.blob, None).unwrap(),
        data
    );
    use nacrithfs_engine::model::Backend;
    assert_eq!(Backend::of(&b.header.fingerprint), Backend::Portable);
    let c = Blob::parse(&c.blob).unwrap();
    assert_eq!(Backend::of(&c.header.fingerprint), Backend::Llama);
}

#[test]
fn blobs_of_another_model_or_build_are_refused() {
    let data = &ENGLISH.as_bytes()[..200];
    let e = engine(1);
    let c = e.compress(data, &unverified(), None).unwrap();
    let mut blob = Blob::parse(&c.blob).unwrap();
    blob.header.fingerprint.backend[0] ^= 1;
    match e.decompress(&blob.to_bytes(), None) {
        Err(Error::FingerprintMismatch { .. }) => {}
        other => panic!(
            "expected a fingerprint mismatch, got {:?}",
            other.map(|v| v.len())
        ),
    }
}

#[test]
fn corrupt_streams_fail_cleanly_never_with_wrong_bytes() {
    let data = &ENGLISH.as_bytes()[..300];
    let e = engine(1);
    let c = e.compress(data, &unverified(), None).unwrap();
    let n = c.blob.len();
    for pos in [n - 1, n - 5, n / 2 + 20] {
        let mut bad = c.blob.clone();
        bad[pos] ^= 0x5a;
        match e.decompress(&bad, None) {
            Err(_) => {}
            Ok(v) => assert_eq!(v, data, "corruption at {pos} produced wrong bytes"),
        }
    }
    for cut in [n - 1, n / 2, 10, 0] {
        assert!(e.decompress(&c.blob[..cut], None).is_err());
    }
}

#[test]
fn ensemble_blobs_decode_bit_exactly_in_a_batch_and_alone() {
    // Both mixers with every part on (the skip included), coded in a batch of three
    // streams and decoded by one: the cheap models must stay identical on both sides.
    use nc06::format::Flags;
    let data = &ENGLISH.as_bytes()[..700];
    let all = Flags::NGRAM | Flags::MATCH | Flags::BIAS | Flags::SKIP;
    for flags in [
        Flags::LLM | all,
        Flags::LLM | all | Flags::LOGMIX,
        Flags::LLM | Flags::MATCH | Flags::LOGMIX,
    ] {
        let opts = CompressOptions {
            chunk_size: 350,
            window: Window { ctx: 96, slide: 32 },
            flags: Flags(flags),
            ..Default::default()
        };
        let b = roundtrip(data, &opts, 3, 1);
        assert_eq!(b.header.flags, Flags(flags));
    }
}

/// Base64 of `raw`: text to the segmenter and the tokenizer, but random to any model.
fn base64(raw: &[u8]) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    for (i, c) in raw.chunks(3).enumerate() {
        let n = c.iter().fold(0u32, |n, &b| n << 8 | b as u32) << (8 * (3 - c.len()));
        for k in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * k) & 63) as usize]);
        }
        if i % 19 == 18 {
            out.push(b'\n');
        }
    }
    out
}

#[test]
fn text_the_model_codes_worse_than_zstd_or_xz_is_stored_by_them() {
    // Prose, a run of zeros, then 2.4 KB of base64 of random bytes: text to the
    // segmenter, but the model spends ~6.3 bits on a character that zstd stores in ~6.
    let b64 = base64(&noise(1800, 11));
    let mut data = ENGLISH.as_bytes()[..600].to_vec();
    data.extend([0u8; 96]);
    data.extend(&b64);
    // Unverified: the round trip decodes it anyway.
    let b = roundtrip(&data, &unverified(), 2, 1);
    // Per chunk: the prose stays with the model, the base64 goes to the frames.
    assert_eq!(kinds(&b), vec![ExtentKind::Text, ExtentKind::Binary]);
    assert_eq!(b.chunks.len(), 1);
    // And the file: never more than the classical codecs (the smaller of zstd -19 and
    // xz -9e, as a frame stores it) on all of it, plus the header.
    let classical = nc06::format::compress_frame(&data).1.len();
    assert!(
        b.payload.len() <= classical,
        "payload {} > classical {classical}",
        b.payload.len()
    );
}

/// Issue 16: a passage repeated exactly costs little more than the passage once (the
/// token N-gram of the default predictors makes the repeats nearly free).
#[test]
fn an_exact_repeat_is_nearly_free() {
    let p = &ENGLISH.as_bytes()[..600];
    let once = roundtrip(p, &CompressOptions::default(), 1, 1);
    let four = roundtrip(&p.repeat(4), &CompressOptions::default(), 1, 1);
    let (a, b) = (once.to_bytes().len(), four.to_bytes().len());
    eprintln!("600 bytes: {a} B; the same four times: {b} B");
    assert!(b <= a + 24, "three exact repeats cost {} bytes", b - a);
}

#[test]
fn foreground_decodes_take_sequences_from_background_ones_which_start_over() {
    // A background request keeps every sequence of a 4-stream context busy; a
    // foreground request that comes meanwhile takes sequences from it, and the streams
    // taken out start over later. Both decode their bytes exactly (each chunk's CRC is
    // checked too). Tried a few times, since the foreground request may find free
    // sequences (between two of the background's batches) and need none.
    let data = ENGLISH.as_bytes();
    let opts = CompressOptions {
        chunk_size: 64,
        verify: false,
        ..Default::default()
    };
    let engine = common::engine(4);
    let c = engine.compress(data, &opts, None).unwrap();
    let blob = Blob::parse(&c.blob).unwrap();
    let idx = blob.index();
    let n = blob.header.original_len;
    let split = idx.extents[idx.extents.len() * 3 / 4].orig_offset;
    for _ in 0..5 {
        let started = std::sync::atomic::AtomicBool::new(false);
        let on_progress = |_: u64| started.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::scope(|s| {
            let bg = s.spawn(|| {
                engine
                    .decode_range_at(
                        &blob,
                        &idx,
                        &blob.payload,
                        0..split,
                        Some(&on_progress),
                        Priority::background(),
                    )
                    .unwrap()
            });
            // The background's first streams have finished: the rest are running.
            while !started.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let (at, fg) = engine
                .decode_range_at(
                    &blob,
                    &idx,
                    &blob.payload,
                    split..n,
                    None,
                    Priority::Foreground,
                )
                .unwrap();
            assert_eq!((at, &fg[..]), (split, &data[split as usize..]));
            let (at, b) = bg.join().unwrap();
            assert_eq!((at, &b[..]), (0, &data[..split as usize]));
        });
        if engine.streams_restarted() > 0 {
            return;
        }
    }
    panic!("the foreground request never took a sequence from the background");
}
