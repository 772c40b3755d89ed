//! Which text a model's tokenizer cannot give back: every ASCII byte, every lone byte
//! of 0x80-0xff, and every Unicode scalar value of the BMP and the SMP, each between
//! two letters, through tokenize and detokenize. Such text takes the binary path
//! (`Model::tokenize_exact`); this says how much of it there is for a model.
//!
//! `cargo run --release -p nacrithfs-engine --example tokenizer_gaps -- [NAME|PATH]`

use nacrithfs_engine::model::{resolve_model_path, Model, ModelOptions};

fn main() {
    let arg = std::env::args_os().nth(1).map(std::path::PathBuf::from);
    let path = match resolve_model_path(arg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tokenizer_gaps: {e}");
            std::process::exit(69);
        }
    };
    let model = match Model::load(&path, &ModelOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tokenizer_gaps: {e}");
            std::process::exit(69);
        }
    };
    let lost = |s: &[u8]| {
        let mut t = b"a".to_vec();
        t.extend_from_slice(s);
        t.push(b'a');
        model.tokenize_exact(&t).is_none()
    };
    let ascii: Vec<u8> = (0u8..0x80).filter(|&b| lost(&[b])).collect();
    println!("model: {}", path.display());
    println!(
        "ASCII bytes that do not round-trip: {} {:02x?}",
        ascii.len(),
        ascii
    );
    let high = (0x80u8..=0xff).filter(|&b| lost(&[b])).count();
    println!("lone bytes 0x80-0xff (invalid UTF-8) that do not round-trip: {high} of 128");
    for (name, range) in [("BMP", 0x80u32..0x10000), ("SMP", 0x10000..0x20000)] {
        let (mut total, mut gone) = (0u32, Vec::new());
        for c in range.filter_map(char::from_u32) {
            total += 1;
            let mut buf = [0u8; 4];
            if lost(c.encode_utf8(&mut buf).as_bytes()) {
                gone.push(c as u32);
            }
        }
        let first: Vec<String> = gone.iter().take(12).map(|c| format!("U+{c:04X}")).collect();
        println!(
            "{name} scalars that do not round-trip: {} of {total} (first: {})",
            gone.len(),
            first.join(" ")
        );
    }
}
