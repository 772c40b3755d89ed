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

use super::blob_cache::{blob_id, BlobId};
use super::inode::Table;
use super::overlay::{Overlay, Seg};
use super::types::Ino;
use super::{lock, read_full_at};
use super::{Core, Entry};
use crate::error::{FsError, FsResult, IoContext};
use crate::store::atomic::AtomicFile;
use crate::store::backing;
use crate::store::{OpenBlob, Stat};
use log::Level;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// A node's content while it is open.
#[derive(Clone)]
pub(super) enum Content {
    /// Plaintext in the backing file.
    Plain(Arc<File>),
    /// A blob: parsed for random access, with the file it was read from and the
    /// changes logged after it.
    Blob {
        blob: Arc<dyn OpenBlob>,
        key: BlobId,
        file: Arc<File>,
        overlay: Arc<Mutex<Live>>,
    },
}

/// What [`Core::change_overlay`] did.
pub(super) enum Changed<T> {
    /// The change is in the blob's overlay log.
    Logged(T),
    /// The content is plaintext: change it through this fd.
    Plain(Arc<File>),
}

/// A blob's overlay while the file is open. Retired when the file's content is
/// replaced (folded into plaintext, or a new blob committed): a change that finds it
/// retired goes to the new content instead of to a file no name reaches.
pub(super) struct Live {
    pub overlay: Overlay,
    pub retired: bool,
}

impl Content {
    /// Lets go of a node's content when no handle holds it. A blob's overlay is
    /// retired: a change that took it before is made again through the content loaded
    /// next, which replays every record logged here, and a fold that decoded from it
    /// does not install what it decoded. Never two live overlays of one file, whose
    /// records would overwrite each other's.
    pub fn let_go(self) {
        if let Content::Blob { overlay, .. } = self {
            lock(&overlay).retired = true;
        }
    }

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
            self.blob_content(Arc::new(f), &e.show())?
        } else {
            Content::Plain(Arc::new(f))
        };
        if let Some(n) = t.get_mut(ino) {
            n.content = Some(c.clone());
        }
        Ok(c)
    }

    /// The content of the blob file `file`: the blob opened, its overlay replayed.
    pub(super) fn blob_content(&self, file: Arc<File>, shown: &str) -> FsResult<Content> {
        let md = Stat::of(&file).ctx(shown)?;
        let blob = self
            .codec
            .open(file.clone())
            .map_err(|err| err.in_file(shown))?;
        let logged = backing::is_logged_file(&file).ctx(shown)?;
        let overlay = Overlay::load(&file, blob.stored_len(), blob.len(), logged)
            .map_err(|err| err.in_file(shown))?;
        Ok(Content::Blob {
            key: blob_id(&md, &*blob),
            blob,
            file,
            overlay: Arc::new(Mutex::new(Live {
                overlay,
                retired: false,
            })),
        })
    }

    /// Reads up to `size` bytes at `offset` of a node's content: a blob's from its
    /// overlay where it was written and decoded from the blob elsewhere (only the
    /// pieces the range touches).
    pub(super) fn read_content(&self, c: &Content, offset: u64, size: u64) -> FsResult<Vec<u8>> {
        match c {
            Content::Plain(f) => {
                let mut buf = vec![0u8; size as usize];
                let n = read_full_at(f, &mut buf, offset).ctx("pread")?;
                buf.truncate(n);
                Ok(buf)
            }
            Content::Blob {
                blob,
                key,
                file,
                overlay,
            } => {
                let plan = lock(overlay).overlay.plan(offset, size);
                self.read_planned(blob, *key, file, &plan, true)
            }
        }
    }

    /// The bytes of a read [`Overlay::plan`] made. Outside the overlay's lock: logged
    /// bytes are never rewritten, and a blob decode may take the model a while.
    /// `reader`: a user's read (see [`BlobCache::read`]).
    pub(super) fn read_planned(
        &self,
        blob: &Arc<dyn OpenBlob>,
        key: BlobId,
        file: &File,
        plan: &[Seg],
        reader: bool,
    ) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        for seg in plan {
            match *seg {
                Seg::Log { at, len } => {
                    let from = out.len();
                    out.resize(from + len as usize, 0);
                    let n =
                        read_full_at(file, &mut out[from..], at).ctx("reading the overlay log")?;
                    if n as u64 != len {
                        return Err(crate::store::codec::damaged("overlay log cut short"));
                    }
                }
                Seg::Blob { off, len } => {
                    let bytes = self.blobs.read(blob, key, off, len, reader)?;
                    if bytes.len() as u64 != len {
                        return Err(crate::store::codec::damaged(
                            "blob shorter than its header says",
                        ));
                    }
                    out.extend(bytes);
                }
                Seg::Zero { len } => out.resize(out.len() + len as usize, 0),
            }
        }
        Ok(out)
    }

    /// Applies `change` to the overlay of node `ino`'s blob while the blob is still its
    /// content. When the content is (or became) plaintext, or the overlay has grown too
    /// long and the file was folded into plaintext, returns the plaintext's fd for the
    /// caller to change instead (found under the same table lock, so a plaintext write
    /// takes it once). Counts as a modification.
    pub(super) fn change_overlay<T>(
        &self,
        ino: Ino,
        change: impl Fn(&mut Overlay, &File) -> FsResult<T>,
    ) -> FsResult<Changed<T>> {
        loop {
            let (file, overlay) = {
                let mut t = self.table();
                let c = self.load_content(&mut t, ino)?;
                t.modified(ino);
                match c {
                    Content::Plain(f) => return Ok(Changed::Plain(f)),
                    Content::Blob { file, overlay, .. } => (file, overlay),
                }
            };
            let mut live = lock(&overlay);
            if live.retired {
                continue;
            }
            if live.overlay.needs_fold() {
                drop(live);
                log::info!(
                    "{}: the overlay log has grown long; folding it into plaintext",
                    self.describe(ino)
                );
                return self.ensure_plain(ino).map(Changed::Plain);
            }
            let r = change(&mut live.overlay, &file);
            drop(live);
            return r
                .map(Changed::Logged)
                .map_err(|e| e.in_file(self.describe(ino)));
        }
    }

    /// Makes the node's content plaintext (decoding a blob fully, with its overlay
    /// applied) and returns its fd. Counts as a modification. The plaintext is decoded
    /// into a temporary file a span of pieces at a time ([`DECODE_SPAN`]), outside the
    /// table lock, so the memory it takes does not grow with the file.
    pub(super) fn ensure_plain(&self, ino: Ino) -> FsResult<Arc<File>> {
        loop {
            let (blob, key, like, overlay) = {
                let mut t = self.table();
                let c = self.load_content(&mut t, ino)?;
                t.modified(ino);
                match c {
                    Content::Plain(f) => return Ok(f),
                    Content::Blob {
                        blob,
                        key,
                        file,
                        overlay,
                    } => (blob, key, file, overlay),
                }
            };
            log::debug!("inode {ino}: decoding for write");
            let snapshot = lock(&overlay).overlay.clone();
            let tmp = self
                .backing
                .prepare_with(&like, false, |f| {
                    self.decode_into(&blob, key, &like, &snapshot, f)
                })
                .map_err(|e| e.in_file(self.describe(ino)))?;
            let mut t = self.table();
            let mut live = lock(&overlay);
            // Unchanged: still the node's content (this overlay, not another loaded
            // over the same blob since), and no record logged while it was decoded.
            let unchanged = !live.retired
                && live.overlay.log_end() == snapshot.log_end()
                && matches!(
                    t.get(ino).and_then(|n| n.content.as_ref()),
                    Some(Content::Blob { overlay: o, .. }) if Arc::ptr_eq(o, &overlay)
                );
            if unchanged {
                self.replace_blob_file(&mut t, ino, &like, tmp)?;
                live.retired = true;
            }
        }
    }

    /// Decodes all of a blob's file, with its overlay applied, into `f`,
    /// [`DECODE_SPAN`] bytes at a time. Zeros past what the blob still shows (a file
    /// extended by a truncate), and any span that decodes to zeros only (a hole of the
    /// blob), are left as a hole: `truncate -s 1T` costs no disk.
    fn decode_into(
        &self,
        blob: &Arc<dyn OpenBlob>,
        key: BlobId,
        file: &File,
        overlay: &Overlay,
        f: &mut AtomicFile,
    ) -> FsResult<()> {
        let size = overlay.size();
        let mut off = 0;
        while off < size {
            let mut pos = off;
            for seg in overlay.plan(off, DECODE_SPAN) {
                if let Seg::Zero { len } = seg {
                    pos += len;
                    continue;
                }
                let bytes =
                    self.read_planned(blob, key, file, std::slice::from_ref(&seg), false)?;
                // Zeros (the blob's holes among them) stay a hole.
                if bytes.iter().any(|&b| b != 0) {
                    f.file().write_all_at(&bytes, pos).ctx(f.name())?;
                }
                pos += bytes.len() as u64;
            }
            off = off.saturating_add(DECODE_SPAN);
        }
        f.file().set_len(size).ctx(f.name())
    }

    /// [`Core::ensure_plain`] for a node no handle may hold open (`link`): the content
    /// it loads is let go again when nothing has it open.
    pub(super) fn make_plain(&self, ino: Ino) -> FsResult<()> {
        let r = self.ensure_plain(ino).map(drop);
        if let Some(n) = self.table().get_mut(ino) {
            n.let_go_if_closed();
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

    /// Sets the size; to 0 without decoding anything (a damaged blob too), and of a
    /// blob as a record in its overlay.
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
                let retire = match t.get(ino).and_then(|n| n.content.clone()) {
                    Some(Content::Blob { overlay, .. }) => Some(overlay),
                    _ => None,
                };
                let live = retire.as_ref().map(|o| lock(o));
                self.replace_blob_file(&mut t, ino, &file, tmp)?;
                if let Some(mut live) = live {
                    live.retired = true;
                }
                return Ok(());
            }
            if !loaded {
                if let Some(n) = t.get_mut(ino) {
                    n.content = Some(Content::Plain(file.clone()));
                }
            }
            return file.set_len(0).ctx(self.describe_locked(&t, ino));
        }
        match self.change_overlay(ino, |o, f| o.set_size(f, size))? {
            Changed::Logged(()) => Ok(()),
            Changed::Plain(f) => f.set_len(size).ctx(self.describe(ino)),
        }
    }
}

/// How many bytes of pieces one decode call covers when a blob is decoded whole: text
/// chunks in one call are decoded in one lockstep batch, and this bounds the bytes held.
pub(super) const DECODE_SPAN: u64 = 8 << 20;
