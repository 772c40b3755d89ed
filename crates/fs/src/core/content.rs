//! What an open file's handles share: its content, plaintext or blob, and the
//! conversions between the two that writes, truncates and links need.
//!
//! A node that is open holds its content, `Plain` (an fd on the backing plaintext) or
//! `Blob` (the parsed blob plus an fd on it). All handles of a node share it, and it
//! survives unlink, so an unlinked open file stays readable and writable.
//!
//! A blob is never rewritten in place: it becomes plaintext by renaming a complete,
//! fsynced plaintext file over its one name, so a crash or a full disk at any point
//! leaves the blob or the plaintext, never a part. That is why a blob keeps one link
//! (`link` decodes it first).

use super::blob_cache::{blob_key, BlobKey};
use super::inode::Table;
use super::types::Ino;
use super::{Core, Entry};
use crate::error::{FsError, FsResult, IoContext};
use crate::store::backing::{self, is_blob_at};
use crate::store::{OpenBlob, Stat};
use log::Level;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A node's content while it is open.
#[derive(Clone)]
pub(super) enum Content {
    /// Plaintext in the backing file.
    Plain(Arc<File>),
    /// A blob: parsed for random access, with the file it was read from.
    Blob {
        blob: Arc<dyn OpenBlob>,
        key: BlobKey,
        file: Arc<File>,
    },
}

impl Content {
    /// The backing file.
    pub fn file(&self) -> &Arc<File> {
        match self {
            Content::Plain(f) => f,
            Content::Blob { file, .. } => file,
        }
    }
}

impl Core {
    /// Opens a node's backing file, which must be a regular file (never through a
    /// symlink, never a FIFO or device swapped in), read-write when allowed.
    pub(super) fn open_backing(&self, t: &Table, ino: Ino) -> FsResult<(Entry, File)> {
        let e = self.entry(t, ino)?;
        let f = match e.dir.open_regular(&e.name, true) {
            Ok(f) => f,
            Err(err) if matches!(err.errno(), libc::EROFS | libc::EACCES | libc::ETXTBSY) => {
                e.dir.open_regular(&e.name, false)?
            }
            Err(err) => return Err(err),
        };
        Ok((e, f))
    }

    /// The node's content, opening it from the backing file if no handle holds it.
    pub(super) fn load_content(&self, t: &mut Table, ino: Ino) -> FsResult<Content> {
        if let Some(c) = t.get(ino).and_then(|n| n.content.clone()) {
            return Ok(c);
        }
        let (e, f) = self.open_backing(t, ino)?;
        let c = if backing::is_blob_file(&f).ctx(e.show())? {
            let md = Stat::of(&f).ctx(e.show())?;
            let mut bytes = Vec::with_capacity(md.len() as usize);
            (&f).read_to_end(&mut bytes).ctx(e.show())?;
            Content::Blob {
                blob: self
                    .codec
                    .open(bytes)
                    .map_err(|err| err.in_file(e.show()))?,
                key: blob_key(&md),
                file: Arc::new(f),
            }
        } else {
            Content::Plain(Arc::new(f))
        };
        if let Some(n) = t.get_mut(ino) {
            n.content = Some(c.clone());
        }
        Ok(c)
    }

    /// Whether node `ino` is a compressed file.
    pub(super) fn is_blob(&self, ino: Ino) -> FsResult<bool> {
        let t = self.table();
        match t.get(ino).and_then(|n| n.content.as_ref()) {
            Some(c) => Ok(matches!(c, Content::Blob { .. })),
            None if t.node(ino)?.kind == super::Kind::File => {
                let e = self.entry(&t, ino)?;
                is_blob_at(&e.dir, &e.name)
            }
            None => Ok(false),
        }
    }

    /// Makes the node's content plaintext (decoding a blob fully) and returns its fd.
    /// Counts as a modification.
    pub(super) fn ensure_plain(&self, ino: Ino) -> FsResult<Arc<File>> {
        loop {
            let (blob, key) = {
                let mut t = self.table();
                let c = self.load_content(&mut t, ino)?;
                t.modified(ino);
                match c {
                    Content::Plain(f) => return Ok(f),
                    Content::Blob { blob, key, .. } => (blob, key),
                }
            };
            log::debug!("inode {ino}: decoding for write");
            let data = blob
                .decode(0..blob.extents().len())
                .map_err(|e| e.in_file(self.describe(ino)))?;
            let mut t = self.table();
            let unchanged = matches!(
                t.get(ino).and_then(|n| n.content.as_ref()),
                Some(Content::Blob { key: k, .. }) if *k == key
            );
            if unchanged {
                self.replace_with_plain(&mut t, ino, &data)?;
            }
        }
    }

    /// [`Core::ensure_plain`] for a node no handle may hold open (`link`): the content
    /// it loads is let go again when nothing has it open.
    pub(super) fn make_plain(&self, ino: Ino) -> FsResult<()> {
        let r = self.ensure_plain(ino).map(drop);
        if let Some(n) = self.table().get_mut(ino) {
            if n.opens == 0 {
                n.content = None;
            }
        }
        r
    }

    /// Replaces a blob node's content with plaintext `data` (under the table lock).
    fn replace_with_plain(&self, t: &mut Table, ino: Ino, data: &[u8]) -> FsResult<()> {
        let old = self.load_content(t, ino)?;
        let Content::Blob { file: like, .. } = &old else {
            // Already plaintext: rewrite in place.
            let f = old.file();
            f.set_len(0).ctx(self.describe_locked(t, ino))?;
            f.write_all_at(data, 0).ctx(self.describe_locked(t, ino))?;
            return Ok(());
        };
        self.replace_blob_file(t, ino, like, data)
    }

    /// Replaces the blob file `like` of node `ino` with plaintext `data` (under the
    /// lock): a complete, fsynced plaintext file renamed over the blob's name, never a
    /// rewrite in place. A blob that another tool hard-linked in BACKING is split from
    /// its other names, which keep the old content, whole.
    fn replace_blob_file(
        &self,
        t: &mut Table,
        ino: Ino,
        like: &Arc<File>,
        data: &[u8],
    ) -> FsResult<()> {
        let orphan = t.get(ino).is_some_and(|n| n.is_orphan());
        let md = Stat::of(like.as_ref()).ctx(self.describe_locked(t, ino))?;
        if orphan && md.nlink() > 0 {
            // Unlinked by every name this mount knows, but still linked elsewhere in
            // BACKING (made there by another tool): there is no name to rename over.
            return Err(FsError::new(
                libc::EIO,
                Level::Warn,
                format!(
                    "{}: a compressed file hard-linked outside the mount cannot be changed through this handle; change it through one of its names",
                    self.describe_locked(t, ino)
                ),
            ));
        }
        let tmp = self.backing.prepare(data, like, false)?;
        let f = if orphan {
            tmp.into_unlinked()?
        } else {
            let e = self.entry(t, ino)?;
            if md.nlink() > 1 {
                log::warn!(
                    "{}: compressed and hard-linked outside the mount; this name gets the plaintext, the other names keep the compressed file",
                    e.show()
                );
            }
            self.backing.commit(tmp, &e.dir, &e.name)?
        };
        let nmd = Stat::of(&f).ctx(self.describe_locked(t, ino))?;
        if t.get(ino).is_none() {
            return Ok(());
        }
        t.rebind(ino, nmd.id());
        if let Some(n) = t.get_mut(ino) {
            n.content = Some(Content::Plain(Arc::new(f)));
        }
        Ok(())
    }

    /// Sets the size; to 0 without decoding anything (a damaged blob too).
    pub(super) fn truncate(&self, ino: Ino, size: u64) -> FsResult<()> {
        if size == 0 {
            let mut t = self.table();
            t.modified(ino);
            let (file, loaded) = match t.get(ino).and_then(|n| n.content.clone()) {
                Some(c) => (c.file().clone(), true),
                None => (Arc::new(self.open_backing(&t, ino)?.1), false),
            };
            if backing::is_blob_file(&file).ctx(self.describe_locked(&t, ino))? {
                return self.replace_blob_file(&mut t, ino, &file, &[]);
            }
            if !loaded {
                if let Some(n) = t.get_mut(ino) {
                    n.content = Some(Content::Plain(file.clone()));
                }
            }
            return file.set_len(0).ctx(self.describe_locked(&t, ino));
        }
        let f = self.ensure_plain(ino)?;
        f.set_len(size).ctx(self.describe(ino))
    }
}
