//! The `nacrithfs` commands: their arguments and what each one does.

use crate::args::{ModelArgs, ShardArgs, WindowArgs};
use crate::error::CliError;
use crate::file_io::{is_dash, write_atomic, write_stdout, Input, Output};
use clap::{Parser, Subcommand};
use nacrithfs_engine::{CompressOptions, Engine, DEFAULT_CHUNK_SIZE};
use nacrithfs_fs::store::codec::{BlobOut, Meter, Source};
use nacrithfs_pack::{LazyEngine, PackOptions, VerifyOptions};
use nc06::format::{Blob, ExtentKind};
use std::ffi::OsStr;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "nacrithfs",
    version,
    about = "Neural lossless compression (SmolLM2 + arithmetic coding) and a compressing FUSE filesystem"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compress one file into an NC06 blob (verified by decoding before it is written).
    Compress {
        /// Input file, or - for stdin.
        input: PathBuf,
        /// Output file, or - for stdout (default: INPUT.nc06).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Target size of independently coded text chunks, in bytes.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: usize,
        #[command(flatten)]
        window: WindowArgs,
        /// Predictors for text, comma-separated: llm (always), ngram, match, bias, skip,
        /// linear (the reference's linear mixer); "raw" or "llm" alone for the model alone.
        #[arg(long, default_value = "llm,ngram")]
        predictors: String,
        /// Skip decoding the blob back before writing it (faster, not recommended).
        #[arg(long)]
        no_verify: bool,
        /// Inputs larger than this many MiB are compressed this many MiB at a time
        /// (the blob a mount writes for them): memory stays a few times this,
        /// whatever the input's size.
        #[arg(long, default_value_t = WINDOW_MB, value_parser = clap::value_parser!(u32).range(1..=1024))]
        window_mb: u32,
        /// Overwrite OUTPUT if it exists.
        #[arg(short, long)]
        force: bool,
        /// Do not print the summary line on stderr.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Decompress an NC06 blob.
    Decompress {
        /// Input blob, or - for stdin.
        input: PathBuf,
        /// Output file, or - for stdout (default: INPUT without .nc06).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Decode this many MiB of the file at a time: memory stays a few times this,
        /// whatever the file's size.
        #[arg(long, default_value_t = WINDOW_MB, value_parser = clap::value_parser!(u32).range(1..=1024))]
        window_mb: u32,
        /// Overwrite OUTPUT if it exists.
        #[arg(short, long)]
        force: bool,
    },
    /// Show a blob's header, extents, chunks and fingerprint.
    Info {
        blob: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Measure the engine: tokens/s and KB/s of compress and decompress at several
    /// stream counts, beside llama.cpp's raw lockstep decode rate for the same calls.
    BenchEngine {
        /// English text to cut the streams from.
        file: PathBuf,
        /// Stream counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        streams_list: Vec<u32>,
        /// Tokens coded by each stream.
        #[arg(long, default_value_t = 256)]
        tokens_per_stream: usize,
        /// Predictors, as for compress.
        #[arg(long, default_value = "llm")]
        predictors: String,
        #[command(flatten)]
        window: WindowArgs,
        /// Also write the rows as CSV here.
        #[arg(long)]
        csv: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Ablation of the ensemble: the model's logits for the files are computed once
    /// (cached) and replayed through each predictor configuration; prints bits/byte,
    /// skipped tokens and time per token for each.
    BenchEnsemble {
        /// Text files (default: ../shared/corpus/sample_{3k,50k,100k}.txt).
        files: Vec<PathBuf>,
        /// Where the logits are cached (about 200 KB per token).
        #[arg(long, default_value = "bench-out/logits")]
        cache: PathBuf,
        /// Configurations, separated by ';', each a predictor list as for compress.
        #[arg(
            long,
            default_value = "llm;ngram;match;bias;ngram,match;ngram,match,bias;ngram,match,bias,skip;linear,ngram,match,bias;linear,ngram,match,bias,skip"
        )]
        configs: String,
        /// Log-mixer parameters: lr_llm,lr_ngram,lr_match,lr_bias,w_ngram0,w_match0,skip_bits.
        #[arg(long, value_delimiter = ',')]
        mix_params: Vec<f32>,
        /// Text chunk size in bytes.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: usize,
        #[command(flatten)]
        window: WindowArgs,
        /// Also print how well the model's top-token probability matches its hit rate.
        #[arg(long)]
        calibration: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Mount BACKING on MNT: files written to MNT are stored in BACKING, compressed in
    /// the background. Stays in the foreground until unmounted or sent SIGINT/SIGTERM,
    /// or detaches once ready with --daemon.
    Mount(crate::mount_cmd::MountArgs),
    /// Unmount MNT and wait for its daemon to finish (everything written is on disk
    /// when it returns). Files still queued are compressed at the next mount.
    Umount {
        mountpoint: PathBuf,
        /// Detach now even if files are open in it; it goes once they are closed.
        #[arg(long)]
        lazy: bool,
        /// How long to wait for the daemon to exit, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Show a mount's compression counters.
    Status {
        mountpoint: PathBuf,
        /// Print them as one line of JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Block until a mount has nothing queued or compressing, then show its counters.
    Wait {
        mountpoint: PathBuf,
        /// Give up (non-zero exit) after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Compare nacrithfs with gzip, bzip2, xz, zstd and brotli on the same files: tables,
    /// CSV/JSON and PNG plots (see docs/BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
    /// Compress every file under SRC into DEST, laid out as a mount's backing directory
    /// (mount DEST afterwards). Split the work over processes or machines with
    /// --shard I/N (or a Kubernetes Indexed Job / Slurm array); rerun a shard to resume it.
    Pack {
        src: PathBuf,
        dest: PathBuf,
        #[command(flatten)]
        shard: ShardArgs,
        #[command(flatten)]
        model: ModelArgs,
        /// Input bytes compressed together in one model run, so that small files share
        /// its streams; a killed shard loses at most one batch (default: --streams x 16 KiB).
        #[arg(long)]
        batch_bytes: Option<u64>,
        /// Files larger than this many MiB are compressed alone, this many MiB at a
        /// time (the blob a mount writes for them): memory stays a few times this.
        #[arg(long, default_value_t = WINDOW_MB, value_parser = clap::value_parser!(u32).range(1..=1024))]
        window_mb: u32,
    },
    /// Decode a packed tree (or any backing directory) into plain files under OUT,
    /// sharded like pack.
    Unpack {
        packed: PathBuf,
        out: PathBuf,
        #[command(flatten)]
        shard: ShardArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Decode the blobs of a packed tree and check them against their checksums and the
    /// merged manifest. Run it on the machines that will read the data: a different
    /// build or GPU may predict differently, and this is where it shows.
    Verify {
        packed: PathBuf,
        /// Manifest to check against (default: PACKED/.nacrithfs/manifest.jsonl if present).
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        shard: ShardArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Merge the shard manifests of a packed tree into PACKED/.nacrithfs/manifest.jsonl,
    /// once every shard has finished.
    MergeManifests {
        packed: PathBuf,
        /// Merge the manifests of N shards (needed only when several shard counts were run).
        #[arg(long, value_name = "N")]
        shards: Option<u32>,
    },
}

impl Command {
    /// The log level when RUST_LOG does not say: batch commands log their progress.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Pack { .. }
            | Command::Unpack { .. }
            | Command::Verify { .. }
            | Command::MergeManifests { .. } => "info",
            _ => "warn",
        }
    }
}

/// The default of `--window-mb`: the mount's.
const WINDOW_MB: u32 = (nacrithfs_codec::STREAM_WINDOW >> 20) as u32;

/// Reads all of `path` (`-` for stdin): for inputs a command needs whole (a text to
/// benchmark, a blob to describe).
fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    if is_dash(path) {
        std::io::stdin().lock().read_to_end(&mut buf)?;
        return Ok(buf);
    }
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|source| CliError::NoInput {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(buf)
}

/// Where `compress` writes by default: `INPUT.nc06`, byte for byte (a file name that is
/// not UTF-8 keeps its bytes).
fn compressed_name(input: &Path) -> PathBuf {
    let mut name = input.as_os_str().to_owned();
    name.push(".nc06");
    PathBuf::from(name)
}

/// Where `decompress` writes by default: INPUT without its `.nc06`, byte for byte;
/// `None` when there is no such suffix (or nothing before it).
fn decompressed_name(input: &Path) -> Option<PathBuf> {
    let stem = input.as_os_str().as_bytes().strip_suffix(b".nc06")?;
    if stem.is_empty() || stem.ends_with(b"/") {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(stem)))
}

fn load_engine(args: &ModelArgs) -> Result<Engine, CliError> {
    Ok(args.engine()?)
}

fn spinner(what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} {pos} tokens ({per_sec}, {elapsed})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Compress {
            input,
            output,
            model,
            chunk_size,
            window,
            predictors,
            no_verify,
            window_mb,
            force,
            quiet,
        } => {
            let flags = crate::args::predictors(&predictors)?;
            let window = window.window()?;
            if chunk_size < 64 {
                return Err(CliError::Usage("--chunk-size must be at least 64".into()));
            }
            let output = output.unwrap_or_else(|| {
                if is_dash(&input) {
                    PathBuf::from("-")
                } else {
                    compressed_name(&input)
                }
            });
            let src = Input::open(&input)?;
            let window_bytes = (window_mb as u64) << 20;
            let whole = src.len <= window_bytes;
            // Made before the model loads, so an existing output is refused at once;
            // a blob for stdout that is not made whole goes through a temporary file
            // (its header is written last).
            let out = if whole && is_dash(&output) {
                None
            } else {
                Some(Output::create(&output, force)?)
            };
            let engine = load_engine(&model)?;
            let opts = CompressOptions {
                chunk_size,
                window,
                flags,
                verify: !no_verify,
                ..Default::default()
            };
            let pb = spinner("compressing");
            let inc = |n: u64| pb.inc(n);
            let stats = if whole {
                // A file of at most one window, in memory: the whole-file choices
                // (all of it binary when that is smaller) apply.
                let data = src.read_all(&input)?;
                let c = engine
                    .compress(&data, &opts, Some(&inc))
                    .map_err(|source| CliError::Codec {
                        what: input.display().to_string(),
                        source,
                    })?;
                pb.finish_and_clear();
                match out {
                    Some(out) => out.write_all(&c.blob)?,
                    None => write_stdout(&c.blob)?,
                }
                c.stats
            } else {
                let out = out.ok_or_else(|| CliError::Usage("no output".into()))?;
                let read = |off, len| src.read(off, len, &input);
                let scratch = || out.scratch();
                let job = nacrithfs_codec::Streamed {
                    engine: &engine,
                    opts: &opts,
                    window: window_bytes as usize,
                    keep_larger: true,
                    frames: None,
                };
                let src = Source {
                    len: src.len,
                    read: &read,
                };
                let blob = BlobOut {
                    file: out.file(),
                    scratch: &scratch,
                };
                let stats = job
                    .compress(&src, &blob, &Meter::default(), Some(&inc))
                    .map_err(|e| CliError::coding(&input, e))?;
                pb.finish_and_clear();
                out.finish()?;
                stats
            };
            let s = &stats;
            if quiet {
                return Ok(());
            }
            // On stderr, so it never mixes with a blob written to stdout.
            eprintln!(
                "nacrithfs: {}: {} -> {} bytes ({:.4} bits/byte), {} tokens in {} chunks ({} skipped), encode {:.1}s (model {:.1}s), verify {:.1}s",
                input.display(),
                s.original,
                s.compressed,
                if s.original > 0 { s.compressed as f64 * 8.0 / s.original as f64 } else { 0.0 },
                s.tokens,
                s.chunks,
                s.skipped,
                s.encode_secs,
                s.model_secs,
                s.verify_secs
            );
            Ok(())
        }
        Command::Decompress {
            input,
            output,
            model,
            window_mb,
            force,
        } => {
            let output = match output {
                Some(o) => o,
                None if is_dash(&input) => PathBuf::from("-"),
                None => match decompressed_name(&input) {
                    Some(name) => name,
                    None => {
                        return Err(CliError::Usage(format!(
                            "{}: no .nc06 suffix; name the output with -o",
                            input.display()
                        )))
                    }
                },
            };
            // Parse first: bad input is reported before the model is loaded.
            let (src, blob, header_len) = open_blob(&input)?;
            let out = if is_dash(&output) {
                None
            } else {
                Some(Output::create(&output, force)?)
            };
            let engine = model.decoder_for(blob.header.fingerprint)?;
            let pb = spinner("decompressing");
            let inc = |n: u64| pb.inc(n);
            let window = (window_mb as usize) << 20;
            // To stdout as it is decoded (every chunk and frame is checked before it
            // goes out; a failed whole-file check still fails the command); to a
            // file through a temporary one that appears only once all of it checked.
            let decode = |w: &mut dyn Write| {
                nacrithfs_codec::decompress_streamed(
                    &engine,
                    &blob,
                    header_len,
                    src.file.clone(),
                    w,
                    window,
                    Some(&inc),
                )
                .map_err(|e| CliError::coding(&input, e))
            };
            match out {
                None => {
                    let mut w =
                        std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                    decode(&mut w)?;
                    w.flush()?;
                }
                Some(out) => {
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
                    decode(&mut w)?;
                    w.flush().map_err(|e| CliError::CantCreate {
                        path: out.path().to_path_buf(),
                        source: nacrithfs_fs::FsError::io("writing", e),
                    })?;
                    drop(w);
                    out.finish()?;
                }
            }
            pb.finish_and_clear();
            Ok(())
        }
        Command::Mount(args) => crate::mount_cmd::mount(args),
        Command::Umount {
            mountpoint,
            lazy,
            timeout,
        } => crate::mount_cmd::umount(&mountpoint, lazy, std::time::Duration::from_secs(timeout)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "nacrithfs", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Status { mountpoint, json } => {
            let s = nacrithfs_fs::mount::status(&mountpoint)?;
            if json {
                print!("{}", s.to_json());
            } else {
                println!("{s}");
            }
            Ok(())
        }
        Command::Wait {
            mountpoint,
            timeout,
        } => {
            let t = timeout.map(std::time::Duration::from_secs);
            let s = nacrithfs_fs::mount::wait(&mountpoint, t)?;
            println!("{s}");
            Ok(())
        }
        Command::BenchEnsemble {
            files,
            cache,
            configs,
            mix_params,
            chunk_size,
            window,
            calibration,
            model,
        } => {
            let lab = crate::bench::ensemble::LabOptions {
                cache_dir: &cache,
                configs: &configs,
                mix: &mix_params,
                chunk_size,
                window: window.window()?,
                calibration,
            };
            Ok(crate::bench::ensemble::run_cli(&files, &lab, &model)?)
        }
        Command::BenchEngine {
            file,
            streams_list,
            tokens_per_stream,
            predictors,
            window,
            csv,
            model,
        } => {
            let flags = crate::args::predictors(&predictors)?;
            let window = window.window()?;
            let text = read_input(&file)?;
            let engine = load_engine(&model)?;
            let predictor = nc06::predict::PredictorConfig {
                flags,
                temperature: 1.0,
                precision: engine.precision(),
            };
            let m = engine.model();
            println!(
                "{} backend, on {}",
                m.backend().name(),
                m.device()
                    .unwrap_or(if m.offloaded() { "the GPU" } else { "the CPU" })
            );
            // The tokenizer's own rate (each backend has its own: the portable engine's,
            // or llama.cpp's), on the whole file.
            let t = std::time::Instant::now();
            let n_tokens = m.tokenize(&text).len();
            let secs = t.elapsed().as_secs_f64();
            println!(
                "tokenizer: {} bytes to {n_tokens} tokens in {:.1} ms ({:.1} MB/s)",
                text.len(),
                secs * 1e3,
                text.len() as f64 / secs.max(1e-9) / 1e6
            );
            println!();
            println!("| streams | mode | tokens | seconds | tokens/s | KB/s | % of raw | model s | predictor+coder s | bits/byte | RSS MiB |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|");
            let mut raw_rate = 0.0;
            let rows = nacrithfs_engine::bench::run(engine.model().clone(), &text, &streams_list, tokens_per_stream.max(1), window, predictor, |r| {
                if r.mode == "raw" {
                    raw_rate = r.tokens_per_s();
                }
                println!(
                    "| {} | {} | {} | {:.2} | {:.1} | {:.3} | {:.0} % | {:.2} | {:.2} | {} | {:.0} |",
                    r.streams,
                    r.mode,
                    r.tokens,
                    r.seconds,
                    r.tokens_per_s(),
                    r.kb_per_s(),
                    100.0 * r.tokens_per_s() / raw_rate.max(1e-9),
                    r.model_secs,
                    r.cpu_secs,
                    r.bits_per_byte.map(|b| format!("{b:.3}")).unwrap_or_default(),
                    r.rss_mib
                );
            })
            .map_err(|source| CliError::Codec { what: file.display().to_string(), source })?;
            if let Some(path) = csv {
                let mut out = String::from(nacrithfs_engine::bench::BenchRow::CSV_HEADER);
                out.push('\n');
                for r in &rows {
                    out.push_str(&r.csv());
                    out.push('\n');
                }
                write_atomic(&path, out.as_bytes(), true)?;
            }
            Ok(())
        }
        Command::Bench(args) => Ok(crate::bench::run(args)?),
        Command::Pack {
            src,
            dest,
            shard,
            model,
            batch_bytes,
            window_mb,
        } => {
            let shard = shard.resolve("pack")?;
            let engine = LazyEngine::new(|| model.engine(), model.options());
            let compress = CompressOptions::default();
            let batch_bytes =
                batch_bytes.unwrap_or(model.streams.max(1) as u64 * compress.chunk_size as u64);
            let opts = PackOptions {
                src,
                dest,
                shard,
                compress,
                batch_bytes,
                window: (window_mb as usize) << 20,
            };
            let report = nacrithfs_pack::pack(&opts, &engine)?;
            println!("{report}");
            Ok(())
        }
        Command::Unpack {
            packed,
            out,
            shard,
            model,
        } => {
            let shard = shard.resolve("unpack")?;
            let engine = LazyEngine::new(|| model.engine(), model.options());
            let report = nacrithfs_pack::unpack(&packed, &out, shard, &engine)?;
            println!("{report}");
            Ok(())
        }
        Command::Verify {
            packed,
            manifest,
            shard,
            model,
        } => {
            let shard = shard.resolve("verify")?;
            let engine = LazyEngine::new(|| model.engine(), model.options());
            let report = nacrithfs_pack::verify(
                &VerifyOptions {
                    dest: packed,
                    shard,
                    manifest,
                },
                &engine,
            )?;
            println!("{report}");
            Ok(())
        }
        Command::MergeManifests { packed, shards } => {
            let dir = packed.join(nacrithfs_fs::store::backing::INTERNAL_DIR);
            let summary = nacrithfs_pack::merge(&dir, shards)?;
            println!("{summary}");
            Ok(())
        }
        Command::Info { blob: path, model } => {
            let (src, blob, _) = open_blob(&path)?;
            // What the file says: a blob is written with the lowest version that holds it.
            let mut version = [blob.version()];
            let _ = src.file.read_exact_at(&mut version, 4);
            print_info(&path, version[0], src.len, &blob, &model);
            Ok(())
        }
    }
}

/// Opens the blob `path` (`-` for stdin) and reads its header and tables: the blob
/// without its payload, and where the payload starts. A blob followed by anything is
/// refused.
fn open_blob(path: &Path) -> Result<(Input, Blob, usize), CliError> {
    let src = Input::open(path)?;
    let (blob, header_len) =
        nacrithfs_codec::read_header(&src.file).map_err(|e| CliError::coding(path, e))?;
    let end = header_len as u64 + blob.payload_len();
    if src.len > end {
        return Err(CliError::Codec {
            what: path.display().to_string(),
            source: nc06::format::FormatError::Inconsistent(format!(
                "{} bytes of trailing garbage",
                src.len - end
            ))
            .into(),
        });
    }
    Ok((src, blob, header_len))
}

/// Describes the blob `path` of `stored` bytes, NC06 version `version`.
fn print_info(path: &Path, version: u8, stored: u64, blob: &Blob, model: &ModelArgs) {
    let h = &blob.header;
    let text: u64 = blob
        .extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Text)
        .map(|e| e.len)
        .sum();
    let zeros: u64 = blob
        .extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Zero)
        .map(|e| e.len)
        .sum();
    println!("file:         {}", path.display());
    println!("format:       NC06 version {version}");
    println!(
        "original:     {} bytes (crc32c {:08x})",
        h.original_len, h.original_crc
    );
    println!(
        "compressed:   {} bytes, ratio {:.3}, {:.4} bits/byte",
        stored,
        if stored == 0 {
            0.0
        } else {
            h.original_len as f64 / stored as f64
        },
        if h.original_len > 0 {
            stored as f64 * 8.0 / h.original_len as f64
        } else {
            0.0
        }
    );
    println!(
        "fingerprint:  {} ({}; {} backend)",
        h.fingerprint,
        nacrithfs_engine::model::known_by_digest(&h.fingerprint.model)
            .map_or("a model fetch-model.sh does not know", |m| m.name),
        match nacrithfs_engine::model::Backend::of(&h.fingerprint) {
            nacrithfs_engine::model::Backend::Portable => "portable",
            nacrithfs_engine::model::Backend::Llama => "llama.cpp",
        }
    );
    println!("predictors:   {} (flags {:#06x})", h.flags, h.flags.0);
    println!(
        "window:       {} tokens, slide {}; temperature {}; chunk size {}; coder total 2^{}",
        h.window.ctx,
        h.window.slide,
        h.temperature,
        h.chunk_size,
        h.precision.bits()
    );
    println!(
        "extents:      {} ({} text bytes, {} binary bytes{})",
        blob.extents.len(),
        text,
        h.original_len - text - zeros,
        if zeros > 0 {
            format!(", {zeros} zero bytes stored as holes")
        } else {
            String::new()
        }
    );
    let tokens: u64 = blob.chunks.iter().map(|c| c.tokens as u64).sum();
    let stream: u64 = blob.chunks.iter().map(|c| c.stream_len as u64).sum();
    println!(
        "text chunks:  {} ({} tokens, {} stream bytes{})",
        blob.chunks.len(),
        tokens,
        stream,
        if text > 0 {
            format!(
                ", {:.4} bits/byte of text",
                stream as f64 * 8.0 / text as f64
            )
        } else {
            String::new()
        }
    );
    for f in blob.frames.iter().enumerate() {
        println!(
            "binary frame: {} {} -> {} bytes ({})",
            f.0,
            f.1.raw_len,
            f.1.stored_len,
            f.1.method.name()
        );
    }
    // The model decompress would use: the named one, else the blob's own if cached.
    if let Ok(engine) = model.decoder_for(h.fingerprint) {
        let m = engine.model();
        let ok = m.fingerprint() == h.fingerprint || blob.chunks.is_empty();
        println!(
            "this build:   {} with {} ({})",
            m.fingerprint(),
            m.path().display(),
            if ok {
                "can decode"
            } else {
                "DIFFERENT: cannot decode the text"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn output_names_keep_the_bytes_of_non_utf8_names() {
        let raw = PathBuf::from(std::ffi::OsString::from_vec(b"dir/caf\xe9.txt".to_vec()));
        let c = compressed_name(&raw);
        assert_eq!(c.as_os_str().as_bytes(), b"dir/caf\xe9.txt.nc06");
        assert_eq!(decompressed_name(&c), Some(raw));
        assert_eq!(decompressed_name(Path::new("a.txt")), None);
        assert_eq!(decompressed_name(Path::new(".nc06")), None);
        assert_eq!(decompressed_name(Path::new("d/.nc06")), None);
        assert_eq!(
            decompressed_name(Path::new("x.nc06")),
            Some(PathBuf::from("x"))
        );
    }
}
