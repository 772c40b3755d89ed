//! Files that appear whole or not at all: the one temp-file-then-rename writer that
//! the backing store, `pack`, the CLI and the benchmarks share.

use crate::error::{FsError, FsResult, IoContext};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file written under a temporary name, fsynced, then renamed over its target, and
/// the target's directory fsynced, so a crash leaves the old content or the new, never
/// a part. Dropped before [`AtomicFile::commit`], the temporary file is deleted.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    tmp: TempPath,
}

/// Deletes the temporary file when dropped, unless it was renamed into place.
#[derive(Debug)]
struct TempPath {
    path: PathBuf,
    renamed: bool,
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Distinguishes the temporary files of one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

impl AtomicFile {
    /// A new, empty temporary file `DIR/PREFIX-PID-N.tmp` (`DIR/PID-N.tmp` with an
    /// empty prefix) of mode 0600: it may hold the plaintext of a file that others may
    /// not read. The pid lets a later run tell its own files from leftovers.
    pub fn create_in(dir: &Path, prefix: &str) -> FsResult<AtomicFile> {
        let sep = if prefix.is_empty() { "" } else { "-" };
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!("{prefix}{sep}{}-{n}.tmp", std::process::id());
            let path = dir.join(name);
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(AtomicFile {
                        file,
                        tmp: TempPath {
                            path,
                            renamed: false,
                        },
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FsError::io(path.display(), e)),
            }
        }
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.tmp.path
    }

    /// Writes all of `data` at the current position.
    pub fn write_all(&mut self, data: &[u8]) -> FsResult<()> {
        self.file.write_all(data).ctx(self.tmp.path.display())
    }

    /// Flushes the content and metadata to disk; [`AtomicFile::commit`] does it too.
    pub fn sync(&self) -> FsResult<()> {
        self.file.sync_all().ctx(self.tmp.path.display())
    }

    /// Syncs the file, renames it over `target`, then syncs `target`'s directory.
    /// Returns the file, which is now `target`. If the rename fails, the temporary
    /// file is deleted and the target is untouched.
    pub fn commit(self, target: &Path) -> FsResult<File> {
        self.commit_with(target, |_| {})
    }

    /// Like [`AtomicFile::commit`], calling `hook` right before and right after the
    /// rename (crash tests pause there; see [`crate::store::backing`]).
    pub(crate) fn commit_with(self, target: &Path, hook: impl Fn(&'static str)) -> FsResult<File> {
        self.sync()?;
        let AtomicFile { file, mut tmp } = self;
        hook("before-rename");
        std::fs::rename(&tmp.path, target).map_err(|e| {
            FsError::io(
                format!("rename {} -> {}", tmp.path.display(), target.display()),
                e,
            )
        })?;
        tmp.renamed = true;
        hook("after-rename");
        sync_parent(target);
        Ok(file)
    }
}

impl AtomicFile {
    /// Deletes the temporary name and keeps the open file: content for a node that has
    /// no name any more (it was unlinked while open).
    pub fn into_unlinked(self) -> FsResult<File> {
        let AtomicFile { file, mut tmp } = self;
        std::fs::remove_file(&tmp.path).ctx(tmp.path.display())?;
        tmp.renamed = true;
        Ok(file)
    }
}

/// Syncs the directory holding `path`, so a rename into it survives a power loss.
/// A failure is logged: the rename itself has happened and cannot be taken back.
pub fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!("{}: fsync of the directory failed: {e}", dir.display());
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        std::fs::write(&target, b"old").unwrap();
        let mut a = AtomicFile::create_in(dir.path(), ".t").unwrap();
        a.write_all(b"new").unwrap();
        let tmp = a.path().to_path_buf();
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        a.commit(&target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(!tmp.exists());
        let mut b = AtomicFile::create_in(dir.path(), ".t").unwrap();
        b.write_all(b"abandoned").unwrap();
        let tmp = b.path().to_path_buf();
        drop(b);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
