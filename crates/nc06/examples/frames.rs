//! The binary frame codec on a file, beside the exhaustive choice it replaced: every
//! 1 MiB frame through `compress_frame` (the zstd -1 probe first) and through the best
//! of zstd -19 and xz -9e (or raw), with the bytes and seconds of each. For
//! docs/BENCHMARKS.md: `cargo run --release -p nc06 --example frames -- FILE`.

use nc06::format::{compress_frame, decompress_frame, FRAME_SIZE};
use std::io::Read;
use std::time::Instant;

/// The codec before the probe: the smaller of zstd -19 and xz -9e, or raw.
fn exhaustive(raw: &[u8]) -> usize {
    let mut best = raw.len();
    if let Ok(z) = zstd::bulk::compress(raw, 19) {
        best = best.min(z.len());
    }
    let mut x = Vec::new();
    if xz2::read::XzEncoder::new(raw, 9 | (1 << 31))
        .read_to_end(&mut x)
        .is_ok()
    {
        best = best.min(x.len());
    }
    best
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: frames FILE");
        std::process::exit(64);
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("frames: {path}: {e}");
            std::process::exit(66);
        }
    };
    let (mut probe_bytes, mut probe_secs) = (0usize, 0f64);
    let (mut full_bytes, mut full_secs) = (0usize, 0f64);
    for raw in data.chunks(FRAME_SIZE) {
        let t = Instant::now();
        let (method, stored) = compress_frame(raw);
        probe_secs += t.elapsed().as_secs_f64();
        probe_bytes += stored.len();
        match decompress_frame(method, &stored, raw.len()) {
            Ok(back) if back == raw => {}
            _ => {
                eprintln!("frames: a frame did not decompress back");
                std::process::exit(70);
            }
        }
        let t = Instant::now();
        full_bytes += exhaustive(raw);
        full_secs += t.elapsed().as_secs_f64();
    }
    let mb = data.len() as f64 / 1e6;
    println!("file,bytes,codec,stored,ratio,seconds,mb_per_s");
    for (name, stored, secs) in [
        ("probe", probe_bytes, probe_secs),
        ("exhaustive", full_bytes, full_secs),
    ] {
        println!(
            "{path},{},{name},{stored},{:.4},{secs:.2},{:.1}",
            data.len(),
            stored as f64 / data.len().max(1) as f64,
            mb / secs.max(1e-9)
        );
    }
}
