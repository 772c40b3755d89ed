//! `nacrithfs bench`: the whole command on a tiny file (real model, real external
//! compressors), and the throughput plot from a hand-written bench-engine CSV.

mod common;

use common::ENGLISH;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nacrithfs"))
}

#[test]
fn bench_tiny_file_writes_table_csv_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("english.txt");
    std::fs::write(&input, &ENGLISH.as_bytes()[..200]).unwrap();
    let out_dir = dir.path().join("out");
    let out = bin()
        .args([
            "bench",
            input.to_str().unwrap(),
            "--no-ensemble",
            "--min-secs",
            "0.05",
            "--threads",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .expect("spawn nacrithfs bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| english.txt | gzip -9 | 200 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| english.txt | nacrithfs raw | 200 |"),
        "{stdout}"
    );
    assert!(!stdout.contains("nacrithfs default"), "{stdout}");

    let csv = std::fs::read_to_string(out_dir.join("bench.csv")).unwrap();
    assert!(csv.starts_with("file,bytes,h0,h1,h2,compressor,"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("english.txt,200,") && l.contains(",nacrithfs raw,")),
        "{csv}"
    );

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("bench.json")).unwrap()).unwrap();
    let results = json["files"][0]["results"].as_array().unwrap();
    let bpb = |name: &str| {
        results
            .iter()
            .find(|r| r["compressor"] == name)
            .and_then(|r| r["bits_per_byte"].as_f64())
            .unwrap()
    };
    assert!(bpb("nacrithfs raw") < bpb("gzip -9"), "{json}");
    let h0 = json["files"][0]["h0"].as_f64().unwrap();
    assert!(h0 > 3.0 && h0 < 5.0, "{h0}");

    let png = std::fs::read(out_dir.join("bpb.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
}

#[test]
fn plot_engine_alone_draws_throughput_and_bad_csv_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("engine.csv");
    std::fs::write(
        &csv,
        "streams,mode,tokens,seconds,tokens_per_s,kb_per_s\n1,raw,500,5,100,0.3\n16,raw,500,2,250,0.9\n1,decompress,500,6,83,0.3\n16,decompress,500,2.3,217,0.8\n",
    )
    .unwrap();
    let plot = || {
        bin()
            .args([
                "bench",
                "--plot-engine",
                csv.to_str().unwrap(),
                "--out",
                dir.path().to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let out = plot();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(dir.path().join("throughput.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    // No FILES: only the plot, no tables.
    assert!(out.stdout.is_empty());

    std::fs::write(&csv, "streams,mode,tokens_per_s\nfour,raw,1\n").unwrap();
    let out = plot();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("engine.csv:2: streams")
            && !stderr.contains("panicked"),
        "{stderr}"
    );

    // A missing input fails at once, with the CLI's "no input" code, before any model.
    let missing = dir.path().join("missing.txt");
    let out = bin()
        .args([
            "bench",
            missing.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(66),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_ensemble_replays_cached_logits_for_every_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("english.txt");
    std::fs::write(&input, &ENGLISH.as_bytes()[..300]).unwrap();
    let cache = dir.path().join("logits");
    let run = |extra: &[&str]| {
        let out = bin()
            .args(["bench-ensemble", input.to_str().unwrap(), "--threads", "1"])
            .args([
                "--cache",
                cache.to_str().unwrap(),
                "--configs",
                "llm;ngram;linear,ngram,match,bias",
            ])
            .args(extra)
            .output()
            .expect("spawn nacrithfs bench-ensemble");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = run(&["--calibration"]);
    for config in ["llm", "ngram", "linear,ngram,match,bias"] {
        assert!(
            first.contains(&format!("| english.txt | {config} |")),
            "{first}"
        );
    }
    assert!(
        first.contains("| english.txt | llm | ") && first.contains("| +0.0 % |"),
        "{first}"
    );
    assert!(first.contains("model per token"), "{first}");
    assert!(
        first.contains("calibration of the model on english.txt")
            && first.contains("top token recalibrated by bin in hindsight"),
        "{first}"
    );
    // The second run reads the cache: the same bits, no new capture.
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let f32s: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "f32"))
        .collect();
    assert_eq!(f32s.len(), 1, "{f32s:?}");
    let before = mtime(&f32s[0]);
    let second = run(&[]);
    assert_eq!(mtime(&f32s[0]), before);
    let bits = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("| english.txt"))
            .map(|l| l.split('|').nth(3).unwrap().trim().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&first), bits(&second));
    // Another window (small enough to slide in 300 bytes) is a cache of its own.
    let third = run(&["--ctx", "32", "--slide", "8"]);
    assert!(third.contains("| english.txt | llm | "), "{third}");
    assert!(
        cache
            .join(format!(
                "{}-ctx32-slide8.f32",
                f32s[0].file_stem().unwrap().to_str().unwrap()
            ))
            .exists(),
        "{third}"
    );
}
