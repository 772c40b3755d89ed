//! Compression in the background: the queue's workers, and committing a blob over the
//! plaintext it was made from, atomically with the inode table.

use super::blob_cache::blob_key;
use super::content::Content;
use super::inode::backing_id;
use super::types::{Ino, Kind};
use super::{Core, Status};
use crate::error::{FsResult, IoContext};
use crate::store::backing;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Core {
    /// The live counters.
    pub fn status(&self) -> Status {
        let (queued, active) = self.queue.counts();
        let writing = self
            .table()
            .nodes()
            .filter(|n| n.dirty() && n.writers > 0 && !n.is_orphan())
            .count();
        let c = &self.counters;
        Status {
            queued: queued as u64,
            compressing: active as u64,
            writing: writing as u64,
            compressed: c.compressed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            bytes_before: c.bytes_before.load(Ordering::Relaxed),
            bytes_after: c.bytes_after.load(Ordering::Relaxed),
        }
    }

    pub(super) fn publish(&self) {
        self.backing.publish_status(&self.status().to_json());
    }

    /// Runs one worker: takes queued files and compresses them until shutdown.
    pub fn worker(&self) {
        while let Some(ino) = self.queue.pop() {
            self.run_job(ino);
        }
    }

    /// Runs the queue to empty on the calling thread, exactly as a worker would (for
    /// tests).
    pub fn drain(&self) {
        while self.queue.counts().0 > 0 {
            if let Some(ino) = self.queue.pop() {
                self.run_job(ino);
            }
        }
    }

    /// Stops the workers once their current job is done.
    pub fn shutdown(&self) {
        self.queue.shutdown();
    }

    /// One popped job: compress, and on failure leave the file plaintext until it
    /// changes again.
    fn run_job(&self, ino: Ino) {
        if let Err(e) = self.compress_one(ino) {
            log::warn!(
                "{}: compression failed, the file stays plaintext: {}",
                self.describe(ino),
                e.report()
            );
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.table().mark_clean(ino);
        }
        self.queue.done();
        self.publish();
    }

    /// Compresses one file and atomically replaces its plaintext with the blob, unless
    /// it changed or was opened for writing meanwhile (then it is queued again).
    fn compress_one(&self, ino: Ino) -> FsResult<()> {
        let (path, id, gen) = {
            let t = self.table();
            let Some(n) = t.get(ino) else {
                return Ok(());
            };
            if n.is_orphan() || n.writers > 0 || n.kind != Kind::File {
                return Ok(()); // gone, or its last writer's close queues it again
            }
            (self.path_of(&t, ino)?, n.id, n.gen())
        };
        let f = File::open(&path).ctx(path.display())?;
        let md = f.metadata().ctx(path.display())?;
        if backing_id(&md) != id || backing::is_blob_file(&f).ctx(path.display())? {
            return Ok(());
        }
        if md.len() == 0 || md.nlink() > 1 {
            // Empty files stay empty plaintext; hard-linked files stay plaintext (a
            // rename would split their links).
            self.table().mark_clean(ino);
            return Ok(());
        }
        let mut data = Vec::with_capacity(md.len() as usize);
        (&f).read_to_end(&mut data).ctx(path.display())?;
        let t0 = std::time::Instant::now();
        let blob = self
            .codec
            .compress(&data)
            .map_err(|e| e.in_file(path.display()))?;
        let tmp = self.backing.prepare(&blob, &f, true)?;
        let mut t = self.table();
        let ok = t
            .get(ino)
            .is_some_and(|n| n.gen() == gen && n.writers == 0 && !n.is_orphan() && n.id == id);
        let path_now = if ok { self.path_of(&t, ino).ok() } else { None };
        let still = path_now
            .as_ref()
            .and_then(|p| std::fs::symlink_metadata(p).ok())
            .is_some_and(|m| backing_id(&m) == id && m.nlink() == 1);
        let (Some(target), true) = (path_now, still) else {
            drop(t);
            drop(tmp);
            log::debug!("inode {ino}: changed while compressing; queued again");
            let requeue = {
                let mut t = self.table();
                t.mark_dirty(ino);
                t.get(ino).is_some_and(|n| n.wants_compression())
            };
            if requeue {
                self.queue.push(ino);
            }
            return Ok(());
        };
        let tf = self.backing.commit(tmp, &target)?;
        let nmd = tf.metadata().ctx("fstat")?;
        let opened = if t.get(ino).is_some_and(|n| n.content.is_some()) {
            Some(self.codec.open(blob.clone()))
        } else {
            None
        };
        if let Some(n) = t.get_mut(ino) {
            if let Some(Ok(b)) = opened {
                n.content = Some(Content::Blob {
                    blob: b,
                    key: blob_key(&nmd),
                    file: Arc::new(tf),
                });
            } else if opened.is_some() {
                n.content = None;
            }
        }
        t.mark_clean(ino);
        t.rebind(ino, backing_id(&nmd));
        drop(t);
        self.blobs.set_len(blob_key(&nmd), data.len() as u64);
        let c = &self.counters;
        c.compressed.fetch_add(1, Ordering::Relaxed);
        c.bytes_before
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        c.bytes_after
            .fetch_add(blob.len() as u64, Ordering::Relaxed);
        log::info!(
            "{}: {} -> {} bytes in {:.1}s",
            target.display(),
            data.len(),
            blob.len(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
