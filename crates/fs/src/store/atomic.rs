//! Files that appear whole or not at all: the one temp-file-then-rename writer that
//! the backing store, `pack`, the CLI and the benchmarks share.

use super::dir::Dir;
use crate::error::{FsResult, IoContext};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A file written under a temporary name, fsynced, then renamed over its target, and
/// the target's directory fsynced, so a crash leaves the old content or the new, never
/// a part. Dropped before it is committed, the temporary file is deleted.
///
/// The temporary file and the rename are relative to directory descriptors: the kernel
/// never walks a path to them again.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    tmp: TempName,
}

/// Deletes the temporary file when dropped, unless it was renamed into place.
#[derive(Debug)]
struct TempName {
    dir: Arc<Dir>,
    name: OsString,
    gone: bool,
}

impl Drop for TempName {
    fn drop(&mut self) {
        if !self.gone {
            let _ = self.dir.remove(&self.name, false);
        }
    }
}

/// Distinguishes the temporary files of one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

impl AtomicFile {
    /// A new, empty temporary file `DIR/PREFIX-PID-N.tmp` (`DIR/PID-N.tmp` with an
    /// empty prefix) of mode 0600: it may hold the plaintext of a file that others may
    /// not read. The pid lets a later run tell its own files from leftovers.
    pub fn create_at(dir: &Arc<Dir>, prefix: &str) -> FsResult<AtomicFile> {
        let sep = if prefix.is_empty() { "" } else { "-" };
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let name = OsString::from(format!("{prefix}{sep}{}-{n}.tmp", std::process::id()));
            let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
            match dir.open_file(&name, flags, 0o600) {
                Ok(file) => {
                    return Ok(AtomicFile {
                        file,
                        tmp: TempName {
                            dir: dir.clone(),
                            name,
                            gone: false,
                        },
                    })
                }
                Err(e) if e.errno() == libc::EEXIST => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// [`AtomicFile::create_at`] in the directory at `dir` (a path the caller trusts,
    /// such as a command's output directory).
    pub fn create_in(dir: &Path, prefix: &str) -> FsResult<AtomicFile> {
        AtomicFile::create_at(&Arc::new(Dir::open(dir)?), prefix)
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary file's name in its directory, for messages.
    pub fn name(&self) -> String {
        self.tmp.dir.show(&self.tmp.name)
    }

    /// Writes all of `data` at the current position.
    pub fn write_all(&mut self, data: &[u8]) -> FsResult<()> {
        self.file.write_all(data).ctx(self.name())
    }

    /// Flushes the content and metadata to disk; committing does it too.
    pub fn sync(&self) -> FsResult<()> {
        self.file.sync_all().ctx(self.name())
    }

    /// Syncs the file, renames it over `target` (a path), then syncs `target`'s
    /// directory. Returns the file, which is now `target`. If the rename fails, the
    /// temporary file is deleted and the target is untouched.
    pub fn commit(self, target: &Path) -> FsResult<File> {
        self.sync()?;
        let AtomicFile { file, mut tmp } = self;
        let parent = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let to = Dir::open(parent)?;
        let name = target.file_name().unwrap_or(OsStr::new("."));
        tmp.dir.rename(&tmp.name, &to, name, 0)?;
        tmp.gone = true;
        sync_logged(&to);
        Ok(file)
    }

    /// Syncs the file, renames it over `dir/name`, then syncs `dir`, calling `hook`
    /// right before and right after the rename (crash tests pause there; see
    /// [`crate::store::backing`]). Returns the file, which is now `dir/name`.
    pub fn commit_at(self, dir: &Dir, name: &OsStr, hook: impl Fn(&'static str)) -> FsResult<File> {
        self.sync()?;
        let AtomicFile { file, mut tmp } = self;
        hook("before-rename");
        tmp.dir.rename(&tmp.name, dir, name, 0)?;
        tmp.gone = true;
        hook("after-rename");
        sync_logged(dir);
        Ok(file)
    }

    /// Deletes the temporary name and keeps the open file: content for a node that has
    /// no name any more (it was unlinked while open).
    pub fn into_unlinked(self) -> FsResult<File> {
        let AtomicFile { file, mut tmp } = self;
        tmp.dir.remove(&tmp.name, false)?;
        tmp.gone = true;
        Ok(file)
    }
}

/// Syncs the directory holding `path` (a path the caller trusts), after a rename
/// into it; a failure is logged, as for [`AtomicFile::commit`].
pub fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match Dir::open(parent) {
        Ok(d) => sync_logged(&d),
        Err(e) => log::warn!("fsync of the directory failed: {}", e.report()),
    }
}

/// Syncs `dir` after a rename into it, so the rename survives a power loss. A failure
/// is logged: the rename itself has happened and cannot be taken back, and the content
/// it installed is complete and synced either way.
fn sync_logged(dir: &Dir) {
    if let Err(e) = dir.sync() {
        log::warn!("fsync of the directory failed: {}", e.report());
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
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        a.commit(&target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut b = AtomicFile::create_in(dir.path(), ".t").unwrap();
        b.write_all(b"abandoned").unwrap();
        drop(b);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let c = AtomicFile::create_in(dir.path(), "").unwrap();
        assert!(c.name().ends_with(".tmp"));
        let f = c.into_unlinked().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(f);
    }
}
