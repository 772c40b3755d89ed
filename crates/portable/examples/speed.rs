//! Tokens per second of the portable engine at several stream counts:
//! `cargo run --release -p nacrithfs-portable --example speed -- MODEL.gguf [STEPS] [STREAMS,..]`.
use nacrithfs_portable::Model;
use nc06::simd::Isa;
use nc06::Window;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: speed MODEL.gguf [STEPS] [STREAMS,..]");
    let steps: usize = args.next().map_or(64, |s| s.parse().expect("STEPS"));
    let list = args.next().unwrap_or_else(|| "1,4,16".into());
    let t = Instant::now();
    let m = Model::load(path.as_ref()).expect("model");
    eprintln!(
        "loaded in {:.2} s; isa {:?}",
        t.elapsed().as_secs_f64(),
        Isa::detect()
    );
    for n in list.split(',').map(|s| s.parse::<u32>().expect("STREAMS")) {
        let mut s = m.session(n, Window::default(), Isa::detect());
        // Two steps first: they fault in the caches' pages (a key row per dim).
        let mut t = Instant::now();
        for step in 0..steps + 2 {
            if step == 2 {
                t = Instant::now();
            }
            let feeds: Vec<_> = (0..n)
                .map(|q| s.feed(q, (step as u32 * 31 + q * 7) % 49152, true).unwrap())
                .collect();
            // Inside the pool, as the engine runs it: the matrix products then fork
            // from a worker instead of waking the pool from outside at every call.
            rayon::scope(|_| s.decode(&feeds).unwrap());
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "streams {n}: {:.1} tokens/s ({steps} steps, {:.1} ms/step)",
            (steps * n as usize) as f64 / secs,
            1000.0 * secs / steps as f64
        );
    }
}
