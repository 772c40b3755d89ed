//! Simulates mixer variants over a trace from `ensemble_trace` (code length depends
//! only on each model's probability of the actual token; CDF quantisation ignored).
//!   cargo run --release --example ensemble_sim -- TRACE
use nc06::format::Flags;
use nc06::predict::ensemble::{MatchModel, NGram};
use nc06::predict::{Predictor, PredictorConfig};

const V: usize = 49_152;

struct Variant {
    name: &'static str,
    lr: f64,
    share: f64,
    sets: fn(Option<usize>, f32) -> usize,
    init: [f64; 3],
}

fn one_set(_: Option<usize>, _: f32) -> usize {
    0
}
fn match_sets(m: Option<usize>, _: f32) -> usize {
    match m {
        None => 0,
        Some(l) if l < 8 => 1,
        Some(l) if l < 16 => 2,
        Some(_) => 3,
    }
}
fn match_conf_sets(m: Option<usize>, ngmax: f32) -> usize {
    let c = if ngmax < 0.3 {
        0
    } else if ngmax < 0.6 {
        1
    } else if ngmax < 0.85 {
        2
    } else {
        3
    };
    match_sets(m, 0.0) * 4 + c
}

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let raw = std::fs::read(path).unwrap();
    let n = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
    let mut toks = Vec::with_capacity(n);
    let mut pl = Vec::with_capacity(n);
    for i in 0..n {
        let o = 4 + i * 8;
        toks.push(u32::from_le_bytes(raw[o..o + 4].try_into().unwrap()));
        pl.push(f32::from_le_bytes(raw[o + 4..o + 8].try_into().unwrap()) as f64);
    }
    // Per token: p_ngram(actual), ngram max prob, p_match(actual), match length.
    let mut ng = NGram::default();
    let mut mm = MatchModel::default();
    let mut scratch = vec![0.0f32; V];
    let mut feats = Vec::with_capacity(n);
    for i in 0..n {
        let h = &toks[..i];
        let s = ng.predict(h, &mut scratch);
        let ngmax = s.items.iter().map(|x| x.1).fold(0.0f32, f32::max);
        let m = mm.predict(h);
        let pn = s.prob(toks[i], V) as f64;
        let pm = m.map(|(t, p, _)| {
            if t == toks[i] {
                p as f64 + (1.0 - p as f64) / V as f64
            } else {
                (1.0 - p as f64) / V as f64
            }
        });
        feats.push((pn, ngmax, pm, m.map(|x| x.2)));
        ng.update(h, toks[i]);
        mm.update(h, toks[i]);
    }
    let raw_bits: f64 = pl.iter().map(|p| -p.max(1e-12).log2()).sum();
    println!(
        "{n} tokens; raw model {:.1} bits ({:.3} bits/token)",
        raw_bits,
        raw_bits / n as f64
    );
    let variants = [
        Variant {
            name: "ref: exp-weights lr .5, 1 set",
            lr: 0.5,
            share: 0.0,
            sets: one_set,
            init: [0.85, 0.075, 0.075],
        },
        Variant {
            name: "ref + match sets",
            lr: 0.5,
            share: 0.0,
            sets: match_sets,
            init: [0.85, 0.075, 0.075],
        },
        Variant {
            name: "bayes lr 1 + share .01, match sets",
            lr: 1.0,
            share: 0.01,
            sets: match_sets,
            init: [0.85, 0.075, 0.075],
        },
        Variant {
            name: "lr .2 + share .01, match sets",
            lr: 0.2,
            share: 0.01,
            sets: match_sets,
            init: [0.85, 0.075, 0.075],
        },
        Variant {
            name: "lr .2 + share .002, match x conf sets",
            lr: 0.2,
            share: 0.002,
            sets: match_conf_sets,
            init: [0.85, 0.075, 0.075],
        },
        Variant {
            name: "lr 1 + share .002, match x conf sets",
            lr: 1.0,
            share: 0.002,
            sets: match_conf_sets,
            init: [0.85, 0.075, 0.075],
        },
        Variant {
            name: "lr .5 + share .005, match x conf sets",
            lr: 0.5,
            share: 0.005,
            sets: match_conf_sets,
            init: [0.9, 0.05, 0.05],
        },
    ];
    for v in &variants {
        let mut w = vec![v.init; 16];
        let mut bits = 0.0;
        for (i, &(pn, ngmax, pm, ml)) in feats.iter().enumerate() {
            let set = (v.sets)(ml, ngmax);
            let ws = &mut w[set];
            let pmv = pm.unwrap_or(0.0);
            let act = [true, true, pm.is_some()];
            let tot: f64 = (0..3).filter(|&k| act[k]).map(|k| ws[k]).sum();
            let ps = [pl[i], pn, pmv];
            let mix: f64 = (0..3)
                .filter(|&k| act[k])
                .map(|k| ws[k] / tot * ps[k])
                .sum();
            bits -= mix.max(1e-12).log2();
            for k in 0..3 {
                if act[k] {
                    ws[k] *= (ps[k].max(1e-12) / mix.max(1e-12)).powf(v.lr);
                }
            }
            let s: f64 = ws.iter().sum();
            for w in ws.iter_mut() {
                *w = (1.0 - v.share) * *w / s + v.share / 3.0;
            }
        }
        println!(
            "{:45} {:.1} bits ({:+.2} %)",
            v.name,
            bits,
            (bits / raw_bits - 1.0) * 100.0
        );
    }

    // The real predictor, fed logits that give the actual token the traced probability
    // and spread the rest uniformly.
    for flags in [
        Flags::LLM,
        Flags::LLM | Flags::NGRAM,
        Flags::LLM | Flags::MATCH,
        Flags::LLM | Flags::NGRAM | Flags::MATCH,
    ] {
        let mut pr = Predictor::new(
            V,
            PredictorConfig {
                flags: Flags(flags),
                temperature: 1.0,
                precision: nc06::codec::Precision::for_vocab(V),
            },
        );
        let mut logits = vec![0.0f32; V];
        let mut bits = 0.0;
        for i in 0..n {
            let t = toks[i] as usize;
            let p = pl[i].clamp(1e-9, 1.0 - 1e-6);
            logits[t] = ((p * (V as f64 - 1.0)) / (1.0 - p)).ln() as f32;
            let want = pr.prepare();
            let cdf = pr.predict(want.then_some(&logits[..]));
            bits -= cdf.prob(t).log2();
            if i < 6 || (i > 3000 && i < 3004) {
                eprintln!(
                    "flags {flags} i {i} trace p {:.6} cdf p {:.6}",
                    pl[i],
                    cdf.prob(t)
                );
            }
            pr.update(toks[i]);
            logits[t] = 0.0;
        }
        println!(
            "real predictor, flags {:<18} {:.1} bits ({:+.2} %)",
            Flags(flags).to_string(),
            bits,
            (bits / raw_bits - 1.0) * 100.0
        );
    }
}
