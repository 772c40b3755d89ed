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
use crate::store::atomic::AtomicFile;
use crate::store::backing::{self, is_blob_at};
use crate::store::{OpenBlob, Stat};
use log::Level;
use std::fs::File;
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
            let file = Arc::new(f);
            Content::Blob {
                blob: self
                    .codec
                    .open(file.clone())
                    .map_err(|err| err.in_file(e.show()))?,
                key: blob_key(&md),
                file,
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
    /// Counts as a modification. The plaintext is decoded into a temporary file a span
    /// of pieces at a time ([`DECODE_SPAN`]), outside the table lock, so the memory it
    /// takes does not grow with the file.
    pub(super) fn ensure_plain(&self, ino: Ino) -> FsResult<Arc<File>> {
        loop {
            let (blob, key, like) = {
                let mut t = self.table();
                let c = self.load_content(&mut t, ino)?;
                t.modified(ino);
                match c {
                    Content::Plain(f) => return Ok(f),
                    Content::Blob { blob, key, file } => (blob, key, file),
                }
            };
            log::debug!("inode {ino}: decoding for write");
            let tmp = self
                .backing
                .prepare_with(&like, false, |f| decode_into(blob.as_ref(), f))
                .map_err(|e| e.in_file(self.describe(ino)))?;
            let mut t = self.table();
            let unchanged = matches!(
                t.get(ino).and_then(|n| n.content.as_ref()),
                Some(Content::Blob { key: k, .. }) if *k == key
            );
            if unchanged {
                self.replace_blob_file(&mut t, ino, &like, tmp)?;
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

    /// Replaces the blob file `like` of node `ino` with the prepared plaintext `tmp`
    /// (under the lock): a complete, fsynced plaintext file renamed over the blob's
    /// name, never a rewrite in place. A blob that another tool hard-linked in BACKING is split from
    /// its other names, which keep the old content, whole.
    fn replace_blob_file(
        &self,
        t: &mut Table,
        ino: Ino,
        like: &Arc<File>,
        tmp: AtomicFile,
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
                let tmp = self.backing.prepare(&[], &file, false)?;
                return self.replace_blob_file(&mut t, ino, &file, tmp);
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

/// How many bytes of pieces one decode call covers when a blob is decoded whole: text
/// chunks in one call are decoded in one lockstep batch, and this bounds the bytes held.
pub(super) const DECODE_SPAN: u64 = 8 << 20;

/// Decodes all of `blob` into `f`, [`DECODE_SPAN`] bytes of pieces at a time.
fn decode_into(blob: &dyn OpenBlob, f: &mut AtomicFile) -> FsResult<()> {
    let pieces = blob.extents();
    let mut i = 0;
    while i < pieces.len() {
        let mut j = i + 1;
        while j < pieces.len() && pieces[j].0 + pieces[j].1 - pieces[i].0 <= DECODE_SPAN {
            j += 1;
        }
        f.write_all(&blob.decode(i..j)?)?;
        i = j;
    }
    Ok(())
}
