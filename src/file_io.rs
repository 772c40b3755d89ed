//! The files of `compress` and `decompress`: inputs read with `pread` (stdin and pipes
//! spooled to a temporary file first), outputs that appear whole or not at all.
//!
//! A file larger than one window is never held whole: compression reads it a window
//! at a time, decompression writes it a window at a time.

use crate::error::CliError;
use nacrithfs_fs::store::atomic::AtomicFile;
use nacrithfs_fs::FsError;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether `p` names stdin or stdout.
pub fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// An input, open for reads at any offset.
pub struct Input {
    /// The file (a spool of stdin or of a pipe: unlinked, in `$TMPDIR`).
    pub file: Arc<File>,
    /// Its length.
    pub len: u64,
}

impl Input {
    /// Opens `path` (`-` for stdin). What cannot be read at an offset (stdin, a pipe,
    /// a character device) is copied to an unlinked temporary file first.
    pub fn open(path: &Path) -> Result<Input, CliError> {
        let no_input = |source| CliError::NoInput {
            path: path.to_path_buf(),
            source,
        };
        if is_dash(path) {
            return Input::spool(&mut std::io::stdin().lock()).map_err(no_input);
        }
        let mut file = File::open(path).map_err(no_input)?;
        let md = file.metadata().map_err(no_input)?;
        if md.is_file() {
            return Ok(Input {
                file: Arc::new(file),
                len: md.len(),
            });
        }
        if md.is_dir() {
            return Err(no_input(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        Input::spool(&mut file).map_err(no_input)
    }

    fn spool(from: &mut dyn Read) -> std::io::Result<Input> {
        let mut file = tempfile::tempfile()?;
        let len = std::io::copy(from, &mut file)?;
        Ok(Input {
            file: Arc::new(file),
            len,
        })
    }

    /// `len` bytes at `off`, read whole (`what` names the input in the error).
    pub fn read(&self, off: u64, len: u64, what: &Path) -> Result<Vec<u8>, FsError> {
        let n = usize::try_from(len)
            .map_err(|_| FsError::new(libc::EFBIG, log::Level::Error, "a window beyond memory"))?;
        let mut buf = vec![0; n];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(|e| FsError::io("reading", e).in_file(what.display()))?;
        Ok(buf)
    }

    /// All of it (a file of at most one window).
    pub fn read_all(&self, what: &Path) -> Result<Vec<u8>, CliError> {
        self.read(0, self.len, what).map_err(|e| CliError::NoInput {
            path: what.to_path_buf(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })
    }
}

/// An output being written: a temporary file beside the target, renamed over it once
/// complete and synced; for stdout, an unlinked temporary file copied out at the end
/// (a blob's header is written last, at its start).
pub struct Output {
    target: PathBuf,
    file: Staged,
    /// Where scratch files go: beside the output (the same filesystem, so its space is
    /// what the output will need).
    dir: PathBuf,
}

enum Staged {
    Named(AtomicFile),
    Unlinked(File),
}

impl Output {
    /// Starts the output `path` (`-` for stdout); an existing file is refused unless
    /// `force`.
    pub fn create(path: &Path, force: bool) -> Result<Output, CliError> {
        let cant = |source| CliError::CantCreate {
            path: path.to_path_buf(),
            source,
        };
        if is_dash(path) {
            let dir = std::env::temp_dir();
            let file = AtomicFile::create_in(&dir, ".nacrithfs")
                .and_then(AtomicFile::into_unlinked)
                .map_err(cant)?;
            return Ok(Output {
                target: path.to_path_buf(),
                file: Staged::Unlinked(file),
                dir,
            });
        }
        if !force && path.exists() {
            return Err(CliError::Exists(path.to_path_buf()));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file = AtomicFile::create_in(&dir, ".nacrithfs").map_err(cant)?;
        Ok(Output {
            target: path.to_path_buf(),
            file: Staged::Named(file),
            dir,
        })
    }

    /// The output's file, to write at any offset.
    pub fn file(&self) -> &File {
        match &self.file {
            Staged::Named(f) => f.file(),
            Staged::Unlinked(f) => f,
        }
    }

    /// A scratch file beside the output, unlinked.
    pub fn scratch(&self) -> Result<File, FsError> {
        AtomicFile::create_in(&self.dir, ".nacrithfs")?.into_unlinked()
    }

    /// The output's path, for messages.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Writes all of the output and makes it appear.
    pub fn write_all(self, data: &[u8]) -> Result<(), CliError> {
        self.file()
            .write_all_at(data, 0)
            .map_err(|e| CliError::CantCreate {
                path: self.target.clone(),
                source: FsError::io("writing", e),
            })?;
        self.finish()
    }

    /// Makes the output appear: renamed over its target, or copied to stdout.
    pub fn finish(self) -> Result<(), CliError> {
        let cant = |source| CliError::CantCreate {
            path: self.target.clone(),
            source,
        };
        match self.file {
            Staged::Named(f) => f.commit(&self.target).map(drop).map_err(cant),
            Staged::Unlinked(f) => {
                let mut out = std::io::stdout().lock();
                let mut from = std::io::BufReader::with_capacity(1 << 20, &f);
                std::io::copy(&mut from, &mut out)?;
                out.flush()?;
                Ok(())
            }
        }
    }
}

/// Writes `data` to `path` through a temporary file in the same directory, renamed
/// into place only once complete and synced, so a crash never leaves a partial output
/// (`-`: to stdout).
pub fn write_atomic(path: &Path, data: &[u8], force: bool) -> Result<(), CliError> {
    if is_dash(path) {
        return write_stdout(data);
    }
    Output::create(path, force)?.write_all(data)
}

/// Writes `data` to stdout.
pub fn write_stdout(data: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(data)?;
    out.flush()?;
    Ok(())
}
