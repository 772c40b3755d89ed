//! What a benchmark run measured, and its three renderings: Markdown tables for people,
//! CSV for spreadsheets, JSON for scripts. Formatting is kept apart from measuring so it
//! can be tested without running anything.

use serde::Serialize;
use std::fmt::Write;

/// One compressor on one file.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Row {
    pub compressor: String,
    pub compressed: u64,
    pub bits_per_byte: f64,
    pub ratio: f64,
    /// Mean wall-clock seconds of one run.
    pub compress_secs: f64,
    pub decompress_secs: f64,
    /// Original bytes (KiB) per second.
    pub compress_kib_s: f64,
    pub decompress_kib_s: f64,
    /// Runs averaged (fast compressors are repeated until the total is long enough).
    pub compress_runs: u32,
    pub decompress_runs: u32,
    /// Peak resident set of the compressor process, KiB. For nacrithfs, which runs in
    /// this process, it is the benchmark process's peak so far (model included).
    pub compress_peak_rss_kib: Option<u64>,
    pub decompress_peak_rss_kib: Option<u64>,
    /// Tokens coded by the model (nacrithfs only).
    pub tokens: Option<u64>,
}

impl Row {
    /// Fills in the derived columns from sizes and mean times.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        compressor: &str,
        original: u64,
        compressed: u64,
        csecs: f64,
        cruns: u32,
        dsecs: f64,
        druns: u32,
    ) -> Row {
        let kib = original as f64 / 1024.0;
        let per_s = |secs: f64| if secs > 0.0 { kib / secs } else { 0.0 };
        Row {
            compressor: compressor.to_string(),
            compressed,
            bits_per_byte: if original > 0 {
                compressed as f64 * 8.0 / original as f64
            } else {
                0.0
            },
            ratio: if compressed > 0 {
                original as f64 / compressed as f64
            } else {
                0.0
            },
            compress_secs: csecs,
            decompress_secs: dsecs,
            compress_kib_s: per_s(csecs),
            decompress_kib_s: per_s(dsecs),
            compress_runs: cruns,
            decompress_runs: druns,
            compress_peak_rss_kib: None,
            decompress_peak_rss_kib: None,
            tokens: None,
        }
    }
}

/// One input file: its size, its empirical entropies and every compressor's row.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FileReport {
    /// The file name as shown in tables.
    pub file: String,
    pub path: String,
    pub bytes: u64,
    /// Empirical entropy of orders 0, 1, 2 in bits per byte.
    pub h0: f64,
    pub h1: f64,
    pub h2: f64,
    pub results: Vec<Row>,
}

/// Where the numbers came from.
#[derive(Clone, Debug, Serialize, Default, PartialEq)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
}

#[derive(Clone, Debug, Serialize, Default, PartialEq)]
pub struct ModelInfo {
    pub path: String,
    pub fingerprint: String,
    pub build: String,
    pub streams: u32,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize, Default, PartialEq)]
pub struct Report {
    pub nacrithfs_version: String,
    pub machine: Machine,
    pub model: Option<ModelInfo>,
    /// `--version` line of each external compressor that ran.
    pub tools: Vec<(String, String)>,
    pub min_secs: f64,
    pub files: Vec<FileReport>,
}

/// Three significant figures or so: nacrithfs runs at tenths of a KiB/s, zstd at
/// hundreds of thousands, and both must stay readable.
fn speed(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v if v >= 1.0 => format!("{v:.2}"),
        v => format!("{v:.3}"),
    }
}

fn mib(kib: Option<u64>) -> String {
    match kib.map(|k| k as f64 / 1024.0) {
        Some(m) if m < 10.0 => format!("{m:.1}"),
        Some(m) => format!("{m:.0}"),
        None => "–".into(),
    }
}

/// Markdown: one results table (a row per file and compressor), then the entropy
/// table with each file's best result beside its bounds.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("| file | compressor | bytes | compressed | bits/byte | ratio | compress KiB/s | decompress KiB/s | peak RSS MiB (c / d) |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for f in &r.files {
        for row in &f.results {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.3} | {:.2} | {} | {} | {} / {} |",
                f.file,
                row.compressor,
                f.bytes,
                row.compressed,
                row.bits_per_byte,
                row.ratio,
                speed(row.compress_kib_s),
                speed(row.decompress_kib_s),
                mib(row.compress_peak_rss_kib),
                mib(row.decompress_peak_rss_kib)
            );
        }
    }
    s.push('\n');
    s.push_str("| file | bytes | H0 | H1 | H2 | best bits/byte |\n");
    s.push_str("|---|---:|---:|---:|---:|---|\n");
    for f in &r.files {
        let best = f
            .results
            .iter()
            .min_by(|a, b| a.bits_per_byte.total_cmp(&b.bits_per_byte))
            .map(|b| format!("{:.3} ({})", b.bits_per_byte, b.compressor))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {} |",
            f.file, f.bytes, f.h0, f.h1, f.h2, best
        );
    }
    s
}

pub const CSV_HEADER: &str = "file,bytes,h0,h1,h2,compressor,compressed,bits_per_byte,ratio,compress_secs,decompress_secs,compress_kib_s,decompress_kib_s,compress_runs,decompress_runs,compress_peak_rss_kib,decompress_peak_rss_kib,tokens";

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// CSV: one line per file and compressor, the file's entropies repeated on each.
pub fn csv(r: &Report) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for f in &r.files {
        for row in &f.results {
            let _ = writeln!(
                s,
                "{},{},{:.6},{:.6},{:.6},{},{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.3},{},{},{},{},{}",
                csv_field(&f.file),
                f.bytes,
                f.h0,
                f.h1,
                f.h2,
                csv_field(&row.compressor),
                row.compressed,
                row.bits_per_byte,
                row.ratio,
                row.compress_secs,
                row.decompress_secs,
                row.compress_kib_s,
                row.decompress_kib_s,
                row.compress_runs,
                row.decompress_runs,
                opt(row.compress_peak_rss_kib),
                opt(row.decompress_peak_rss_kib),
                opt(row.tokens)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut nc = Row::new("nacrithfs raw", 3000, 300, 10.0, 1, 12.0, 1);
        nc.tokens = Some(800);
        nc.compress_peak_rss_kib = Some(300 * 1024);
        let mut gz = Row::new("gzip -9", 3000, 1200, 0.001, 500, 0.0005, 1000);
        gz.compress_peak_rss_kib = Some(2048);
        gz.decompress_peak_rss_kib = Some(1024);
        Report {
            files: vec![FileReport {
                file: "a,b.txt".into(),
                path: "/x/a,b.txt".into(),
                bytes: 3000,
                h0: 4.5,
                h1: 3.25,
                h2: 2.5,
                results: vec![gz, nc],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rows_derive_bits_ratio_and_speed() {
        let r = Row::new("x", 2048, 512, 2.0, 1, 0.5, 3);
        assert_eq!(r.bits_per_byte, 2.0);
        assert_eq!(r.ratio, 4.0);
        assert_eq!(r.compress_kib_s, 1.0);
        assert_eq!(r.decompress_kib_s, 4.0);
        let empty = Row::new("x", 0, 0, 0.0, 1, 0.0, 1);
        assert_eq!(
            (empty.bits_per_byte, empty.ratio, empty.compress_kib_s),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn markdown_has_a_row_per_result_and_the_best_per_file() {
        let md = markdown(&sample());
        assert!(
            md.contains(
                "| a,b.txt | gzip -9 | 3000 | 1200 | 3.200 | 2.50 | 2930 | 5859 | 2.0 / 1.0 |"
            ),
            "{md}"
        );
        assert!(md.contains("| a,b.txt | nacrithfs raw | 3000 | 300 | 0.800 | 10.00 | 0.293 | 0.244 | 300 / – |"), "{md}");
        assert!(
            md.contains("| a,b.txt | 3000 | 4.500 | 3.250 | 2.500 | 0.800 (nacrithfs raw) |"),
            "{md}"
        );
        // Every table line has the same number of cells as its header.
        for table in md.split("\n\n") {
            let cells: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
            assert!(cells.windows(2).all(|w| w[0] == w[1]), "{table}");
        }
    }

    #[test]
    fn csv_quotes_and_keeps_columns_aligned() {
        let text = csv(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1]
                .starts_with("\"a,b.txt\",3000,4.500000,3.250000,2.500000,gzip -9,1200,3.200000,"),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with(",307200,,800"), "{}", lines[2]);
        let columns = CSV_HEADER.split(',').count();
        for l in &lines[1..] {
            // The quoted file name holds one comma of its own.
            assert_eq!(l.split(',').count(), columns + 1, "{l}");
        }
    }

    #[test]
    fn json_round_trips_through_serde() {
        let v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["files"][0]["results"][1]["tokens"], 800);
        assert_eq!(v["files"][0]["results"][0]["compressor"], "gzip -9");
    }
}
