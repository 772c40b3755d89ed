//! Times the per-token CPU work (softmax + CDF + one coder step) over a 49,152-symbol vocabulary.
use nc06::codec::{softmax_into, Cdf, Encoder};
use std::time::Instant;

fn main() {
    let n = 49_152;
    let mut state = 1u64;
    let logits: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 30.0 - 15.0
        })
        .collect();
    let mut probs = Vec::new();
    let mut cdf = Cdf::default();
    let mut enc = Encoder::new();
    let iters = 2000;
    let (mut t_soft, mut t_cdf) = (0.0, 0.0);
    for i in 0..iters {
        let t = Instant::now();
        let sum = softmax_into(&logits, 1.0, &mut probs);
        let t1 = Instant::now();
        cdf.set_weights(&probs, sum).unwrap();
        let t2 = Instant::now();
        let (lo, hi) = cdf.range(i % n);
        enc.encode(lo, hi);
        t_soft += (t1 - t).as_secs_f64();
        t_cdf += (t2 - t1).as_secs_f64();
    }
    println!(
        "softmax {:.1} us, cdf {:.1} us per token",
        t_soft / iters as f64 * 1e6,
        t_cdf / iters as f64 * 1e6
    );
}
