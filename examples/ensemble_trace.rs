//! Records, for a text, every token and the model's probability of it (one stream,
//! default window), so mixer variants can be simulated offline:
//!   cargo run --release --example ensemble_trace -- FILE MAXBYTES OUT
//! OUT holds u32 count, then (u32 token, f32 p) pairs.
use nacrithfs_engine::model::{resolve_model_path, Model, ModelOptions};
use nc06::codec::softmax_into;
use nc06::Window;
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).unwrap();
    let max: usize = args[2].parse().unwrap();
    let model = Model::load(&resolve_model_path(None).unwrap(), &ModelOptions::default()).unwrap();
    let tokens = model.tokenize(&data[..max.min(data.len())]);
    let w = Window::default();
    let mut s = model.session(1, w).unwrap();
    let mut probs = Vec::new();
    let mut out = Vec::new();
    out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    let mut input = model.bos();
    for &t in &tokens {
        let feed = s.feed(0, input, true).unwrap();
        s.decode(&[feed]).unwrap();
        let sum = softmax_into(s.logits(0), 1.0, &mut probs);
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&(probs[t as usize] / sum).to_le_bytes());
        input = t;
    }
    std::fs::File::create(&args[3])
        .unwrap()
        .write_all(&out)
        .unwrap();
    eprintln!("{} tokens", tokens.len());
}
