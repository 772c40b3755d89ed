//! What an open file's handles share: its content, plaintext or blob, and the
//! conversions between the two that writes and truncates need.
//!
//! A node that is open holds its content, `Plain` (an fd on the backing plaintext) or
//! `Blob` (the parsed blob plus an fd on it). All handles of a node share it, and it
//! survives unlink, so an unlinked open file stays readable and writable.

use super::blob_cache::{blob_key, BlobKey};
use super::inode::{backing_id, Table};
use super::types::Ino;
use super::Core;
use crate::error::{FsError, FsResult, IoContext};
use crate::store::backing::{self, BPath, STATE_XATTR};
use crate::store::xattr::fremove_xattr;
use crate::store::OpenBlob;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
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
    /// Opens a node's backing file (never through a symlink), read-write when allowed.
    pub(super) fn open_backing(&self, t: &Table, ino: Ino) -> FsResult<(BPath, File)> {
        let path = self.path_of(t, ino)?;
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::ETXTBSY)
                ) =>
            {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .ctx(path.display())?
            }
            Err(e) => return Err(FsError::io(path.display(), e)),
        };
        Ok((path, f))
    }

    /// The node's content, opening it from the backing file if no handle holds it.
    pub(super) fn load_content(&self, t: &mut Table, ino: Ino) -> FsResult<Content> {
        if let Some(c) = t.get(ino).and_then(|n| n.content.clone()) {
            return Ok(c);
        }
        let (path, f) = self.open_backing(t, ino)?;
        let c = if backing::is_blob_file(&f).ctx(path.display())? {
            let md = f.metadata().ctx(path.display())?;
            let mut bytes = Vec::with_capacity(md.len() as usize);
            (&f).read_to_end(&mut bytes).ctx(path.display())?;
            Content::Blob {
                blob: self
                    .codec
                    .open(bytes)
                    .map_err(|e| e.in_file(path.display()))?,
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

    /// Replaces a blob node's content with plaintext `data` (under the table lock).
    fn replace_with_plain(&self, t: &mut Table, ino: Ino, data: &[u8]) -> FsResult<()> {
        let old = self.load_content(t, ino)?;
        let Content::Blob { file: like, .. } = &old else {
            // Already plaintext: rewrite in place.
            let f = old.file();
            f.set_len(0).ctx("truncate")?;
            f.write_all_at(data, 0).ctx("pwrite")?;
            return Ok(());
        };
        self.replace_blob_file(t, ino, like, data)
    }

    /// Replaces the blob file `like` of node `ino` with plaintext `data` (under the lock).
    fn replace_blob_file(
        &self,
        t: &mut Table,
        ino: Ino,
        like: &Arc<File>,
        data: &[u8],
    ) -> FsResult<()> {
        let orphan = t.get(ino).is_some_and(|n| n.is_orphan());
        let md = like.metadata().ctx("fstat")?;
        if md.nlink() > 1 && !orphan {
            // Hard-linked: a rename would split the links, so rewrite in place.
            like.set_len(0).ctx("truncate")?;
            like.write_all_at(data, 0).ctx("pwrite")?;
            fremove_xattr(like, STATE_XATTR).ctx("fremovexattr")?;
            like.sync_all().ctx("fsync")?;
            if let Some(n) = t.get_mut(ino) {
                n.content = Some(Content::Plain(like.clone()));
            }
            return Ok(());
        }
        let tmp = self.backing.prepare(data, like, false)?;
        let f = if orphan {
            tmp.into_unlinked()?
        } else {
            let path = self.path_of(t, ino)?;
            self.backing.commit(tmp, &path)?
        };
        let nmd = f.metadata().ctx("fstat")?;
        if t.get(ino).is_none() {
            return Ok(());
        }
        t.rebind(ino, backing_id(&nmd));
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
            return file.set_len(0).ctx("truncate");
        }
        let f = self.ensure_plain(ino)?;
        f.set_len(size).ctx("truncate")
    }
}
