//! Temporary files renamed into place: every file pack or unpack writes appears whole
//! or not at all.
//!
//! Each shard names its temporary files with its own prefix (`pack-2-of-8-…`), so a
//! rerun of a killed shard deletes exactly the leftovers of that shard while the other
//! shards keep writing theirs into the same directory.

use super::PackError;
use nacrithfs_fs::store::{backing, AtomicFile};
use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// A shard's temporary files in one directory.
pub(super) struct Staging {
    dir: PathBuf,
    prefix: String,
    seq: Cell<u64>,
}

impl Staging {
    /// Creates `dir` (private: temporary files hold plaintext) and deletes this
    /// prefix's leftovers from an earlier run.
    pub fn open(dir: PathBuf, prefix: String) -> Result<Staging, PackError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(PackError::io(&dir))?;
        let s = Staging {
            dir,
            prefix,
            seq: Cell::new(0),
        };
        let n = s.clean()?;
        if n > 0 {
            log::info!(
                "deleted {n} temporary files of an interrupted run from {}",
                s.dir.display()
            );
        }
        Ok(s)
    }

    /// Deletes this prefix's temporary files; returns how many.
    pub fn clean(&self) -> Result<usize, PackError> {
        let mut n = 0;
        let own = format!("{}-", self.prefix);
        for e in std::fs::read_dir(&self.dir).map_err(PackError::io(&self.dir))? {
            let e = e.map_err(PackError::io(&self.dir))?;
            if e.file_name().to_str().is_some_and(|s| s.starts_with(&own)) {
                std::fs::remove_file(e.path()).map_err(PackError::io(e.path()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Removes the directory if it is empty (other shards may still use it).
    pub fn remove_dir_if_empty(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// Recreates the directory when a finishing shard removed it (see
    /// [`Staging::remove_dir_if_empty`]); true if the caller should try again.
    fn gone(&self, errno: Option<i32>) -> bool {
        errno == Some(libc::ENOENT)
            && std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .is_ok()
    }

    /// A fresh name for a temporary symlink.
    fn next(&self) -> PathBuf {
        let n = self.seq.get();
        self.seq.set(n + 1);
        self.dir
            .join(format!("{}-{}-l{n}.tmp", self.prefix, std::process::id()))
    }

    /// Writes `data` into a new temporary file with `like`'s metadata (mode, owner,
    /// times, user xattrs) and, for a blob, the blob marker, synced; the caller
    /// renames it into place with [`Staging::commit`].
    pub fn file(&self, data: &[u8], like: &File, blob: bool) -> Result<AtomicFile, PackError> {
        let mut f = self.create()?;
        backing::stage(&mut f, data, like, blob)?;
        Ok(f)
    }

    /// A new empty temporary file, for content written a piece at a time; then
    /// [`Staging::seal`] and [`Staging::commit`].
    pub fn empty(&self) -> Result<AtomicFile, PackError> {
        Ok(self.create()?)
    }

    /// A new unlinked scratch file beside the temporary files (on the same
    /// filesystem): gone when it is closed, whatever happens.
    pub fn scratch(&self) -> nacrithfs_fs::FsResult<File> {
        self.create()?.into_unlinked()
    }

    fn create(&self) -> nacrithfs_fs::FsResult<AtomicFile> {
        match AtomicFile::create_in(&self.dir, &self.prefix) {
            Err(e) if self.gone(Some(e.errno())) => AtomicFile::create_in(&self.dir, &self.prefix),
            r => r,
        }
    }

    /// Gives a temporary file whose content is written `like`'s metadata and, for a
    /// blob, the blob marker, and syncs it: [`Staging::file`] after the fact.
    pub fn seal(&self, f: &mut AtomicFile, like: &File, blob: bool) -> Result<(), PackError> {
        backing::seal(f, like, blob)?;
        Ok(())
    }

    /// A new temporary symlink to `target`.
    pub fn symlink(&self, target: &Path) -> Result<PathBuf, PackError> {
        let mut retried = false;
        loop {
            let path = self.next();
            match std::os::unix::fs::symlink(target, &path) {
                Ok(()) => return Ok(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if !retried && self.gone(e.raw_os_error()) => retried = true,
                Err(e) => return Err(PackError::Io { path, source: e }),
            }
        }
    }

    /// Renames a staged file over `target` and syncs the directory.
    pub fn commit(&self, tmp: AtomicFile, target: &Path) -> Result<(), PackError> {
        tmp.commit(target)?;
        Ok(())
    }

    /// Renames a temporary symlink over `target` and syncs the directory.
    pub fn commit_symlink(&self, tmp: &Path, target: &Path) -> Result<(), PackError> {
        if let Err(source) = std::fs::rename(tmp, target) {
            let _ = std::fs::remove_file(tmp);
            return Err(PackError::Io {
                path: target.to_path_buf(),
                source,
            });
        }
        nacrithfs_fs::store::atomic::sync_parent(target);
        Ok(())
    }
}
