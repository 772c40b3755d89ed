//! `nacrithfs bench`: nacrithfs (raw model and the default ensemble) beside gzip, bzip2, xz,
//! zstd and brotli on the same files in the same run, with each file's order-0/1/2
//! entropy; a Markdown table on stdout, CSV and JSON files, and PNG plots.
//!
//! Every compressor's output is decoded back and compared with the input before its
//! numbers count. Fast compressors are repeated until their runs add up to `--min-secs`
//! so their speeds are means, not timer noise.

pub mod ensemble;
mod entropy;
mod external;
mod plot;
mod report;

pub use entropy::entropy;
pub use external::{External, EXTERNALS};
pub use plot::{parse_engine_csv, PlotError};
pub use report::{FileReport, Machine, ModelInfo, Report, Row};

use crate::args::ModelArgs;
use clap::Args;
use nacrithfs_engine::model::ModelError;
use nacrithfs_engine::{CompressOptions, Engine};
use nc06::format::Flags;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Inputs used when none are named: the project's shared corpus, if it is there.
const DEFAULT_FILES: &[&str] = &[
    "../shared/corpus/sample_3k.txt",
    "../shared/corpus/sample_50k.txt",
    "../shared/corpus/sample_100k.txt",
];

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Files to compress (default: ../shared/corpus/sample_{3k,50k,100k}.txt).
    pub files: Vec<PathBuf>,
    /// Directory for bench.csv, bench.json, bpb.png and throughput.png.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Run nacrithfs with the raw model only, not also with the default ensemble.
    #[arg(long)]
    pub no_ensemble: bool,
    /// Repeat each compressor until its runs take at least this many seconds.
    #[arg(long, default_value_t = 0.5)]
    pub min_secs: f64,
    /// Also draw OUT/throughput.png from a `nacrithfs bench-engine --csv` file
    /// (alone, without FILES, only the plot is made).
    #[arg(long, value_name = "CSV")]
    pub plot_engine: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", path.display())]
    NoInput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{tool}: {why}")]
    Tool { tool: String, why: String },
    #[error("{compressor}: round trip of {file} gave different bytes")]
    RoundTrip { compressor: String, file: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{what}: {source}")]
    Codec {
        what: String,
        source: nacrithfs_engine::Error,
    },
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// Writing an output file.
    #[error("{}", .0.report())]
    Store(#[from] nacrithfs_fs::FsError),
}

/// Names what an I/O error was about: `.map_err(io_err(path.display()))`.
pub(crate) fn io_err(what: impl std::fmt::Display) -> impl Fn(std::io::Error) -> BenchError {
    let what = what.to_string();
    move |source| BenchError::Io {
        what: what.clone(),
        source,
    }
}

/// Runs `f` once, then again until the runs add up to `min_secs`; returns the mean
/// seconds per run, the number of runs and the last result.
fn timed<T, E>(min_secs: f64, mut f: impl FnMut() -> Result<T, E>) -> Result<(f64, u32, T), E> {
    let start = Instant::now();
    let mut runs = 1;
    let mut last = f()?;
    while start.elapsed().as_secs_f64() < min_secs {
        last = f()?;
        runs += 1;
    }
    Ok((start.elapsed().as_secs_f64() / runs as f64, runs, last))
}

/// This process's peak resident set so far, in KiB.
fn self_peak_rss_kib() -> Option<u64> {
    // SAFETY: rusage is plain old data and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid rusage to write into.
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0)
        .then_some(ru.ru_maxrss.max(0) as u64)
}

fn bench_external(
    x: &External,
    program: &Path,
    input: &Path,
    original: u64,
    tmp: &Path,
    min_secs: f64,
) -> Result<Row, BenchError> {
    let (c, d, e) = (tmp.join("c"), tmp.join("d"), tmp.join("err"));
    let (csecs, cruns, ()) = timed(min_secs, || {
        external::run_once(program, x.compress, input, &c, &e)
    })?;
    let (dsecs, druns, ()) = timed(min_secs, || {
        external::run_once(program, x.decompress, &c, &d, &e)
    })?;
    let same = std::fs::read(input).map_err(io_err(input.display()))?
        == std::fs::read(&d).map_err(io_err(d.display()))?;
    if !same {
        return Err(BenchError::RoundTrip {
            compressor: x.name.into(),
            file: input.display().to_string(),
        });
    }
    let compressed = std::fs::metadata(&c).map_err(io_err(c.display()))?.len();
    let mut row = Row::new(x.name, original, compressed, csecs, cruns, dsecs, druns);
    // Peak memory from one extra, untimed run of each direction.
    row.compress_peak_rss_kib =
        external::peak_rss_kib(program, x.compress, input, &tmp.join("c2"), tmp);
    row.decompress_peak_rss_kib =
        external::peak_rss_kib(program, x.decompress, &c, &tmp.join("d2"), tmp);
    Ok(row)
}

/// nacrithfs in this process: compression timed without its verifying decode (the
/// decode is timed on its own, then compared).
fn bench_nacrithfs(
    engine: &Engine,
    name: &str,
    flags: u16,
    data: &[u8],
    file: &str,
    min_secs: f64,
) -> Result<Row, BenchError> {
    let codec = |source| BenchError::Codec {
        what: format!("{name} on {file}"),
        source,
    };
    let opts = CompressOptions {
        flags: Flags(flags),
        verify: false,
        ..Default::default()
    };
    let (csecs, cruns, c) =
        timed(min_secs, || engine.compress(data, &opts, None)).map_err(codec)?;
    let crss = self_peak_rss_kib();
    let (dsecs, druns, out) =
        timed(min_secs, || engine.decompress(&c.blob, None)).map_err(codec)?;
    if out != data {
        return Err(BenchError::RoundTrip {
            compressor: name.into(),
            file: file.into(),
        });
    }
    let mut row = Row::new(
        name,
        data.len() as u64,
        c.blob.len() as u64,
        csecs,
        cruns,
        dsecs,
        druns,
    );
    row.compress_peak_rss_kib = crss;
    row.decompress_peak_rss_kib = self_peak_rss_kib();
    row.tokens = Some(c.stats.tokens);
    Ok(row)
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The machine, from /proc and /etc/os-release (blank where unreadable).
pub fn machine() -> Machine {
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once([':', '=']))
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
    };
    let cpuinfo = read_trimmed("/proc/cpuinfo").unwrap_or_default();
    let meminfo = read_trimmed("/proc/meminfo").unwrap_or_default();
    let os = read_trimmed("/etc/os-release").unwrap_or_default();
    let mem_kib: f64 = field(&meminfo, "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpu: field(&cpuinfo, "model name").unwrap_or_default(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        os: field(&os, "PRETTY_NAME").unwrap_or_default(),
    }
}

pub(crate) fn default_files() -> Vec<PathBuf> {
    DEFAULT_FILES
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect()
}

fn load_engine(args: &ModelArgs) -> Result<Engine, BenchError> {
    Ok(args.engine()?)
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), BenchError> {
    std::fs::write(path, data).map_err(io_err(path.display()))
}

/// Measures every file, prints the tables and writes OUT/bench.{csv,json} and the plots.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    if !(args.min_secs >= 0.0 && args.min_secs <= 3600.0) {
        return Err(BenchError::Usage(
            "--min-secs must be between 0 and 3600".into(),
        ));
    }
    std::fs::create_dir_all(&args.out).map_err(io_err(args.out.display()))?;
    if let Some(csv) = &args.plot_engine {
        let text = std::fs::read_to_string(csv).map_err(|source| PlotError::Read {
            path: csv.clone(),
            source,
        })?;
        let out = args.out.join("throughput.png");
        plot::throughput(&out, &parse_engine_csv(csv, &text)?)?;
        eprintln!("bench: wrote {}", out.display());
        if args.files.is_empty() {
            return Ok(());
        }
    }
    let files = if args.files.is_empty() {
        default_files()
    } else {
        args.files.clone()
    };
    if files.is_empty() {
        return Err(BenchError::Usage(format!(
            "no FILES given and none of {} exists",
            DEFAULT_FILES.join(", ")
        )));
    }
    // Read every input first, so a bad path fails before minutes of measuring.
    let inputs = files
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|d| (p, d))
                .map_err(|source| BenchError::NoInput {
                    path: p.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tmp = tempfile::tempdir().map_err(io_err("temporary directory"))?;
    let mut report = Report {
        nacrithfs_version: env!("CARGO_PKG_VERSION").into(),
        machine: machine(),
        min_secs: args.min_secs,
        ..Default::default()
    };
    let mut externals = Vec::new();
    for x in EXTERNALS {
        match external::find_program(x.program) {
            Some(p) => {
                report.tools.push((
                    x.name.to_string(),
                    external::version(&p).unwrap_or_default(),
                ));
                externals.push((x, p));
            }
            None => eprintln!(
                "bench: {} not installed, skipped (scripts/install-deps.sh installs it)",
                x.program
            ),
        }
    }
    let engine = load_engine(&args.model)?;
    report.model = Some(ModelInfo {
        path: engine.model().path().display().to_string(),
        fingerprint: engine.model().fingerprint().to_string(),
        build: engine.model().descriptor().to_string(),
        streams: engine.config().streams,
        threads: args.model.threads,
    });
    let mut nacrith: Vec<(&str, u16)> = vec![("nacrithfs raw", Flags::LLM)];
    if !args.no_ensemble {
        nacrith.push(("nacrithfs default", Flags::DEFAULT));
    }

    for (path, data) in &inputs {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let mut f = FileReport {
            file: name.clone(),
            path: path.display().to_string(),
            bytes: data.len() as u64,
            h0: entropy(data, 0),
            h1: entropy(data, 1),
            h2: entropy(data, 2),
            results: Vec::new(),
        };
        for (x, program) in &externals {
            eprintln!("bench: {name}: {}", x.name);
            f.results.push(bench_external(
                x,
                program,
                path,
                f.bytes,
                tmp.path(),
                args.min_secs,
            )?);
        }
        for (label, flags) in &nacrith {
            eprintln!("bench: {name}: {label}");
            f.results.push(bench_nacrithfs(
                &engine,
                label,
                *flags,
                data,
                &name,
                args.min_secs,
            )?);
        }
        report.files.push(f);
    }

    let m = &report.machine;
    println!(
        "Machine: {} ({} cores, {} GiB), {}, kernel {}\n",
        m.cpu, m.cores, m.memory_gib, m.os, m.kernel
    );
    print!("{}", report::markdown(&report));
    write_file(&args.out.join("bench.csv"), report::csv(&report).as_bytes())?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| BenchError::Io {
        what: "bench.json".into(),
        source: e.into(),
    })?;
    write_file(&args.out.join("bench.json"), &json)?;
    plot::bits_per_byte(&args.out.join("bpb.png"), &report.files)?;
    eprintln!(
        "bench: wrote {}/bench.csv, bench.json and bpb.png",
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_repeats_until_min_secs_and_keeps_the_last_result() {
        let mut n = 0;
        let (mean, runs, last) = timed::<_, ()>(0.02, || {
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
            Ok(n)
        })
        .unwrap();
        assert!(runs >= 4 && last == runs as i32, "{runs} {last}");
        assert!((0.004..0.02).contains(&mean), "{mean}");
        let (_, runs, _) = timed::<_, ()>(0.0, || Ok(())).unwrap();
        assert_eq!(runs, 1);
        assert!(timed::<(), _>(1.0, || Err("boom")).is_err());
    }

    #[test]
    fn machine_reads_proc() {
        let m = machine();
        assert!(m.cores >= 1 && !m.kernel.is_empty(), "{m:?}");
    }
}
