//! Empirical Shannon entropy of a byte string, orders 0–2: the bounds a context model
//! of that order could reach on this very file (the comparison the Nacrith paper makes).

use std::collections::HashMap;

/// Order-`k` empirical entropy in bits per byte: H(X_i | X_{i-k..i}) over the positions
/// that have `k` bytes before them, with probabilities counted from `data` itself.
/// 0 for inputs with no such position. Only orders 0, 1 and 2 are supported.
pub fn entropy(data: &[u8], order: usize) -> f64 {
    assert!(order <= 2, "entropy order {order} is not supported");
    if data.len() <= order {
        return 0.0;
    }
    // Joint counts of (context, byte), keyed as context << 8 | byte.
    let mut joint: HashMap<u32, u64> = HashMap::new();
    let mut ctx_counts: HashMap<u32, u64> = HashMap::new();
    for w in data.windows(order + 1) {
        let key = w.iter().fold(0u32, |k, &b| k << 8 | b as u32);
        *joint.entry(key).or_default() += 1;
        *ctx_counts.entry(key >> 8).or_default() += 1;
    }
    let n = (data.len() - order) as f64;
    joint
        .iter()
        .map(|(&key, &c)| {
            let ctx = ctx_counts[&(key >> 8)] as f64;
            c as f64 / n * (ctx / c as f64).log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::entropy;

    #[test]
    fn uniform_bytes_are_eight_bits() {
        let data: Vec<u8> = (0..4096).map(|i| i as u8).collect();
        assert!((entropy(&data, 0) - 8.0).abs() < 1e-12);
        // Each byte fully determines the next one.
        assert!(entropy(&data, 1).abs() < 1e-12);
        assert!(entropy(&data, 2).abs() < 1e-12);
    }

    #[test]
    fn constant_is_zero() {
        for k in 0..=2 {
            assert_eq!(entropy(&[b'a'; 1000], k), 0.0);
        }
    }

    #[test]
    fn empty_and_short_inputs_are_zero() {
        assert_eq!(entropy(b"", 0), 0.0);
        assert_eq!(entropy(b"ab", 2), 0.0);
    }

    #[test]
    fn two_equiprobable_symbols_are_one_bit() {
        let data = b"abababab".repeat(100);
        assert!((entropy(&data, 0) - 1.0).abs() < 1e-12);
        assert!(entropy(&data, 1).abs() < 1e-12);
    }

    #[test]
    fn conditioning_never_increases_entropy_on_text() {
        let text =
            b"the quick brown fox jumps over the lazy dog; the dog sleeps and the fox runs. "
                .repeat(20);
        let (h0, h1, h2) = (entropy(&text, 0), entropy(&text, 1), entropy(&text, 2));
        assert!(h0 > h1 && h1 > h2 && h2 >= 0.0, "{h0} {h1} {h2}");
    }
}
