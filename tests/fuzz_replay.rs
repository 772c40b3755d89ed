//! The fuzz targets (fuzz/, cargo-fuzz on nightly) on stable: each runs over its seed
//! corpus in fuzz/corpus/ and over many mutations of it (bit flips, overwritten and
//! inserted bytes, truncations, splices), reproducibly. No model needed.
//! `NACRITHFS_FUZZ_ITERS` sets the mutations per target (default 20000).

use nc06::format::fuzzing;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v.sort();
    v
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(d.len() + 1);
                d.insert(i, rng.next() as u8);
            }
            3 => {
                let n = rng.below(d.len() + 1);
                d.truncate(n);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let (a, b) = (rng.below(d.len() + 1), rng.below(other.len() + 1));
                d.truncate(a);
                d.extend_from_slice(&other[b..]);
            }
            _ if !d.is_empty() => {
                // An interesting value where a length or count may be.
                let i = rng.below(d.len());
                d[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            _ => {}
        }
    }
    d
}

fn run(target: &str, f: fn(&[u8])) {
    let iters: usize = std::env::var("NACRITHFS_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let seeds = corpus(target);
    for s in &seeds {
        f(s);
    }
    let mut rng = Rng(0xf022 ^ target.len() as u64);
    let t = std::time::Instant::now();
    for i in 0..iters {
        let d = mutate(&mut rng, &seeds);
        let r = std::panic::catch_unwind(|| f(&d));
        assert!(r.is_ok(), "{target}: input {i} panicked: {d:02x?}");
    }
    eprintln!(
        "fuzz replay {target}: {} seeds + {iters} mutations, no crash, {:.1} s",
        seeds.len(),
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn container_parser_survives_mutated_blobs() {
    run("container", fuzzing::container);
}

#[test]
fn arithmetic_decoder_survives_arbitrary_streams() {
    run("decoder", fuzzing::decoder);
}
