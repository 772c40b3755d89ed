//! How a command fails: one error type for the whole command line, each with the
//! sysexits.h code it exits with.

use crate::bench::BenchError;
use nacrithfs_engine::model::ModelError;
use nacrithfs_fs::mount::MountError;
use nacrithfs_fs::FsError;
use nacrithfs_pack::PackError;
use std::path::PathBuf;

/// A command failure with the exit code it maps to (sysexits.h): 64 usage, 65 bad
/// blob, 66 missing input, 69 model unavailable, 70 verification failed, 73 cannot
/// create output, 74 I/O error, 75 backing directory in use.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments (64).
    #[error("{0}")]
    Usage(String),
    /// An input that cannot be read (66).
    #[error("{}: {source}", .path.display())]
    NoInput {
        /// The input.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An output that cannot be written (73).
    #[error("{}: {}", .path.display(), .source.report())]
    CantCreate {
        /// The output.
        path: PathBuf,
        /// Why.
        source: FsError,
    },
    /// An output that exists, without `--force` (73).
    #[error("{}: exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// Other I/O (74).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// I/O on a file while it was coded (74).
    #[error("{}: {}", .path.display(), .source.report())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: FsError,
    },
    /// A blob that cannot be coded or decoded (65; 69 without a model; 70 when the
    /// verification failed).
    #[error("{what}: {source}")]
    Codec {
        /// The file.
        what: String,
        /// Why.
        source: nacrithfs_engine::Error,
    },
    /// The model cannot be loaded (69).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// `pack`, `unpack`, `verify` or `merge-manifests` failed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// A benchmark failed.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// The mount, `status` or `wait` failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A mount is busy (75: try again).
    #[error("{0}")]
    Busy(String),
}

fn codec_exit_code(e: &nacrithfs_engine::Error) -> i32 {
    use nacrithfs_engine::Error;
    match e {
        Error::Model(_) => 69,
        Error::VerifyFailed { .. } | Error::VerifyFailedFrame { .. } => 70,
        Error::Shared(e) => codec_exit_code(e),
        _ => 65,
    }
}

fn pack_exit_code(e: &PackError) -> i32 {
    match e {
        PackError::Usage(_) => 64,
        PackError::NoInput { .. } | PackError::Incomplete(_) => 66,
        PackError::Io { .. } | PackError::Store(_) => 74,
        PackError::Codec { source, .. } | PackError::Coding { source, .. } => {
            codec_exit_code(source)
        }
        PackError::Model(_) => 69,
        PackError::Mismatch { .. } | PackError::Manifest { .. } => 65,
        PackError::Failed { first, .. } => pack_exit_code(first),
    }
}

fn bench_exit_code(e: &BenchError) -> i32 {
    match e {
        BenchError::Usage(_) => 64,
        BenchError::NoInput { .. } => 66,
        BenchError::Model(_) => 69,
        BenchError::Codec { source, .. } => codec_exit_code(source),
        // A compressor that does not give back its input: the software failed.
        BenchError::RoundTrip { .. } => 70,
        BenchError::Io { .. }
        | BenchError::Store(_)
        | BenchError::Tool { .. }
        | BenchError::Plot(_) => 74,
    }
}

impl CliError {
    /// A failure of a streamed compression or decompression of `path`: the codec's
    /// own error when one is behind it (so a bad blob still exits 65 and a failed
    /// verification 70), I/O otherwise.
    pub fn coding(path: &std::path::Path, e: FsError) -> CliError {
        let codec = std::error::Error::source(&e)
            .is_some_and(|s| s.downcast_ref::<nacrithfs_engine::Error>().is_some());
        if !codec {
            return CliError::File {
                path: path.to_path_buf(),
                source: e,
            };
        }
        let what = format!("{}: {}", path.display(), e.message());
        match e
            .into_source()
            .map(|s| s.downcast::<nacrithfs_engine::Error>())
        {
            Some(Ok(source)) => CliError::Codec {
                what,
                source: *source,
            },
            _ => CliError::Io(std::io::Error::other(what)),
        }
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 64,
            CliError::NoInput { .. } => 66,
            CliError::CantCreate { .. } | CliError::Exists(_) => 73,
            CliError::Io(_) | CliError::File { .. } => 74,
            CliError::Codec { source, .. } => codec_exit_code(source),
            CliError::Model(_) => 69,
            CliError::Pack(e) => pack_exit_code(e),
            CliError::Bench(e) => bench_exit_code(e),
            CliError::Mount(MountError::Setup(_)) => 64,
            // EX_TEMPFAIL: another daemon serves BACKING; try again once it is gone.
            CliError::Mount(MountError::Busy(_)) => 75,
            CliError::Mount(MountError::Fs(_)) => 74,
            CliError::Busy(_) => 75,
        }
    }
}
