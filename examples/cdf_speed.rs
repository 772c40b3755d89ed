//! Times the per-token CPU work (softmax + CDF + one coder step) over a vocabulary of
//! the size given (default 49,152, SmolLM2's; Gemma 3's is 262,144), at the precision a
//! writer uses for it.
use nc06::codec::{softmax_into, Cdf, Encoder, Precision};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(49_152);
    let mut state = 1u64;
    let logits: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 30.0 - 15.0
        })
        .collect();
    let mut probs = Vec::new();
    let precision = Precision::for_vocab(n);
    let mut cdf = Cdf::with_precision(precision);
    let mut enc = Encoder::new();
    let iters = 2000;
    let (mut t_soft, mut t_cdf) = (0.0, 0.0);
    for i in 0..iters {
        let t = Instant::now();
        let sum = softmax_into(&logits, 1.0, &mut probs);
        let t1 = Instant::now();
        if cdf.set_weights(&probs, sum).is_err() {
            eprintln!("{n} symbols do not fit 2^{} counts", precision.bits());
            std::process::exit(1);
        }
        let t2 = Instant::now();
        enc.encode(&cdf, i % n);
        t_soft += (t1 - t).as_secs_f64();
        t_cdf += (t2 - t1).as_secs_f64();
    }
    println!(
        "{n} symbols, 2^{} counts: softmax {:.1} us, cdf {:.1} us per token",
        precision.bits(),
        t_soft / iters as f64 * 1e6,
        t_cdf / iters as f64 * 1e6
    );
}
