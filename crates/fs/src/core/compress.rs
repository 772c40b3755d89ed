//! Compression in the background: the queue's workers, and committing a blob over the
//! plaintext it was made from, atomically with the inode table.
//!
//! A failed compression (a full disk, a model error) or a panicking one is logged with
//! the file's name and tried again later, with backoff ([`RETRY_DELAYS`]); the file
//! stays plaintext meanwhile, and a change to it starts afresh.

use super::blob_cache::{blob_id, blob_key, BlobId};
use super::content::Content;
use super::status::JobStatus;
use super::types::{Ino, Kind};
use super::{lock, Core, Entry, Status};
use crate::error::{FsError, FsResult, IoContext};
use crate::store::codec::{within, BlobOut, Meter, Source};
use crate::store::{backing, Stat};
use crate::store::{AtomicFile, OpenBlob};
use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use std::time::Instant;

/// How long a file waits after its n-th failed compression before the next attempt;
/// after the last, it stays plaintext until it changes (or the next mount).
pub const RETRY_DELAYS: [Duration; 6] = [
    Duration::from_secs(2),
    Duration::from_secs(8),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(1800),
];

/// A compression in progress, as `status` shows it.
pub(super) struct ActiveJob {
    shown: String,
    bytes: u64,
    meter: Arc<Meter>,
    started: Instant,
}

/// Removes a job from the registry of active ones, however its compression ends.
struct Registered<'a>(&'a Core, Ino);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.0.active).remove(&self.1);
    }
}

/// Files under this many bytes are kept plain without running the codec: a blob's
/// header alone takes about 50.
pub const MIN_COMPRESSIBLE: usize = 64;

/// Test hook: with `NACRITHFS_FAULT=panic:N` the first N compressions panic, so
/// tests/faults.rs can check that a panicking compressor is survived.
fn injected_panic() -> bool {
    static LEFT: OnceLock<AtomicU64> = OnceLock::new();
    let left = LEFT.get_or_init(|| {
        let n = std::env::var("NACRITHFS_FAULT")
            .ok()
            .and_then(|v| v.strip_prefix("panic:").and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        AtomicU64::new(n)
    });
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

impl Core {
    /// The live counters.
    pub fn status(&self) -> Status {
        let q = self.queue.counts();
        let writing = self
            .table()
            .nodes()
            .filter(|n| n.dirty() && n.writers > 0 && !n.is_orphan())
            .count();
        let c = &self.counters;
        let jobs: Vec<JobStatus> = lock(&self.active)
            .values()
            .map(|j| {
                let (done, total) = j.meter.get();
                let secs = j.started.elapsed().as_secs_f64();
                let eta = (done > 0 && total > done)
                    .then(|| (secs * (total - done) as f64 / done as f64) as u64);
                JobStatus {
                    path: j.shown.clone(),
                    bytes: j.bytes,
                    done,
                    total,
                    secs: secs as u64,
                    eta_secs: eta,
                }
            })
            .collect();
        let compressed = c.compressed.load(Ordering::Relaxed);
        // The queue at the pace of the files compressed so far, on every compressor.
        let eta_secs = (compressed > 0).then(|| {
            let per_file =
                c.compress_ms.load(Ordering::Relaxed) as f64 / 1000.0 / compressed as f64;
            let workers = c.workers.load(Ordering::Relaxed).max(1) as f64;
            let current = jobs.iter().filter_map(|j| j.eta_secs).max().unwrap_or(0);
            current + (per_file * q.queued as f64 / workers) as u64
        });
        Status {
            jobs,
            eta_secs,
            pid: std::process::id(),
            queued: q.queued as u64,
            compressing: q.active as u64,
            writing: writing as u64,
            retrying: q.retrying as u64,
            compressed: c.compressed.load(Ordering::Relaxed),
            kept_plain: c.kept_plain.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            bytes_before: c.bytes_before.load(Ordering::Relaxed),
            bytes_after: c.bytes_after.load(Ordering::Relaxed),
            model_decodes: self.codec.model_decodes(),
            frames_reused: self.codec.frames_reused(),
            read_ahead: self.blobs.read_ahead_count(),
        }
    }

    pub(super) fn publish(&self) {
        self.backing.publish_status(&self.status().to_json());
    }

    /// Runs one worker: takes queued files and compresses them until shutdown.
    pub fn worker(&self) {
        self.counters.workers.fetch_add(1, Ordering::Relaxed);
        while let Some(ino) = self.queue.pop() {
            self.run_job(ino);
        }
        self.counters.workers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Runs the queue to empty on the calling thread, exactly as a worker would (for
    /// tests). Files waiting for a retry are not waited for; after [`Core::shutdown`]
    /// nothing is run.
    pub fn drain(&self) {
        while self.queue.counts().queued > 0 {
            match self.queue.pop() {
                Some(ino) => self.run_job(ino),
                None => break,
            }
        }
    }

    /// Stops the workers once their current job is done.
    pub fn shutdown(&self) {
        self.queue.shutdown();
    }

    /// One popped job: compress; on a failure or a panic, log it and try again later.
    fn run_job(&self, ino: Ino) {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if injected_panic() {
                panic!("NACRITHFS_FAULT: injected compressor panic");
            }
            self.compress_one(ino)
        }));
        let no_space = matches!(&r, Ok(Err(e)) if e.errno() == libc::ENOSPC);
        let why = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.report()),
            Err(p) => Some(format!(
                "the compressor panicked: {}",
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default()
            )),
        };
        if let Some(why) = why {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            let attempt = {
                let mut t = self.table();
                t.get_mut(ino).map(|n| {
                    n.failures += 1;
                    n.no_space = no_space;
                    n.failures
                })
            };
            let delay = attempt.and_then(|a| RETRY_DELAYS.get(a as usize - 1));
            match delay {
                Some(d) => {
                    log::warn!(
                        "{}: compression failed, the file stays plaintext; trying again in {}s: {why}",
                        self.describe(ino),
                        d.as_secs()
                    );
                    self.queue.push_after(ino, *d);
                }
                None => {
                    log::warn!(
                        "{}: compression failed, the file stays plaintext until it changes: {why}",
                        self.describe(ino)
                    );
                    self.table().mark_clean(ino);
                }
            }
        }
        self.queue.done();
        self.publish();
    }

    /// Compression would not make the file smaller: it stays plaintext, marked so that
    /// it is not compressed again until it changes (as zstd and btrfs keep such data
    /// as it is). Under the table lock, like a commit, and only if nothing changed.
    fn keep_plain(
        &self,
        ino: Ino,
        gen: u64,
        id: (u64, u64),
        f: &std::fs::File,
        shown: &str,
        why: &str,
    ) -> FsResult<()> {
        let mut t = self.table();
        if !t.unchanged(ino, gen, id) {
            drop(t);
            return self.changed_meanwhile(ino);
        }
        backing::mark_plain(f).map_err(|e| e.in_file(shown))?;
        // The marker is an xattr change: no compression in flight may commit over it.
        t.meta_changed(ino);
        t.mark_clean(ino);
        if let Some(n) = t.get_mut(ino) {
            n.failures = 0;
        }
        drop(t);
        self.counters.kept_plain.fetch_add(1, Ordering::Relaxed);
        log::info!("{shown}: kept as it is ({why})");
        Ok(())
    }

    /// A file that changed (or went) while it was compressed: nothing is committed; it
    /// is queued again if it can be, once it settles.
    fn changed_meanwhile(&self, ino: Ino) -> FsResult<()> {
        log::debug!("inode {ino}: changed while compressing; queued again");
        let requeue = {
            let mut t = self.table();
            t.mark_dirty(ino);
            t.get(ino).is_some_and(|n| n.wants_compression())
        };
        if requeue {
            self.queue.push_settled(ino, self.settle);
        }
        Ok(())
    }

    /// Compresses one file and atomically replaces its plaintext with the blob, unless
    /// it changed or was opened for writing meanwhile (then it is queued again).
    fn compress_one(&self, ino: Ino) -> FsResult<()> {
        let (entry, id, gen, no_space) = {
            let t = self.table();
            let Some(n) = t.get(ino) else {
                return Ok(());
            };
            if n.is_orphan() || n.writers > 0 || n.kind != Kind::File {
                return Ok(()); // gone, or its last writer's close queues it again
            }
            (self.entry(&t, ino)?, n.id, n.gen(), n.no_space)
        };
        let shown = entry.show();
        if no_space {
            // Retrying after a full disk: not before there is room for the blob.
            let s = self.statfs()?;
            let free = s.bavail.saturating_mul(s.frsize.max(1) as u64);
            if free < entry.stat()?.len() {
                return Err(FsError::new(
                    libc::ENOSPC,
                    log::Level::Debug,
                    format!("{shown}: still no room to stage its blob"),
                ));
            }
        }
        // Never through a symlink, never a FIFO or device that replaced the file.
        let f = entry.dir.open_regular(&entry.name, false)?;
        let md = Stat::of(&f).ctx(&shown)?;
        let logged = backing::is_logged_file(&f).ctx(&shown)?;
        if md.id() != id || (!logged && backing::is_blob_file(&f).ctx(&shown)?) {
            return Ok(());
        }
        if logged {
            return self.recompress_one(ino, Arc::new(f), id, gen, &shown);
        }
        if backing::is_kept_plain(&f).map_err(|e| e.in_file(&shown))? {
            self.table().mark_clean(ino);
            return Ok(());
        }
        if md.is_empty() || md.nlink() > 1 {
            // Empty files stay empty plaintext; hard-linked files stay plaintext (a
            // rename would split their links).
            self.table().mark_clean(ino);
            return Ok(());
        }
        let size = md.len();
        if size < MIN_COMPRESSIBLE as u64 || size > self.max_compress_bytes {
            // A blob has a header of about 50 bytes: a file this small can only grow.
            // Marked like incompressible data, so it is not read again until it changes.
            let why = if size < MIN_COMPRESSIBLE as u64 {
                format!("{size} bytes; compression would not make it smaller")
            } else {
                format!(
                    "{size} bytes, over the {} MiB that the mount compresses (--max-file-mb)",
                    self.max_compress_bytes >> 20
                )
            };
            return self.keep_plain(ino, gen, id, &f, &shown, &why);
        }
        // Not held open while the codec works: each window the codec reads opens the
        // file again, so a file removed meanwhile gives its space back at once (the
        // disk may be full; that may be why it is removed), and a file replaced or
        // changed meanwhile ends the compression at its next window.
        drop(f);
        let job = self.register(ino, &shown, size);
        let read = |off: u64, len: u64| -> FsResult<Vec<u8>> {
            let f = reopen(&entry, id).ok_or_else(|| changed(&shown))?;
            if !self.unchanged(ino, gen, id) {
                return Err(changed(&shown));
            }
            let mut buf = vec![0; usize::try_from(len).map_err(|_| changed(&shown))?];
            f.read_exact_at(&mut buf, off).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    changed(&shown)
                } else {
                    FsError::io("reading", e).in_file(&shown)
                }
            })?;
            Ok(buf)
        };
        let mut tmp = self.backing.temp_file()?;
        let blob_len = match self.run_codec(&tmp, |out| {
            self.codec.compress(
                &Source {
                    len: size,
                    read: &read,
                },
                out,
                &job.meter,
            )
        }) {
            Ok(n) => n,
            Err(_) if !self.unchanged(ino, gen, id) => return self.changed_meanwhile(ino),
            Err(e) => return Err(e.in_file(&shown)),
        };
        let Some(f) = reopen(&entry, id) else {
            return self.changed_meanwhile(ino);
        };
        if blob_len >= size {
            let why = format!("{size} bytes; compression would not make it smaller");
            return self.keep_plain(ino, gen, id, &f, &shown, &why);
        }
        self.backing.seal(&mut tmp, &f, true)?;
        if let Some(done) = self.commit_blob(ino, id, gen, tmp, size, blob_len, &job)? {
            // What was just coded is in the cache as decoded, from the plaintext file
            // (still open here, though the blob replaced it), each piece checked
            // against the blob's checksum of it.
            match self.committed_blob(done) {
                Ok((new, new_key)) => {
                    let n = self.blobs.seed(&*new, new_key, |off, len| {
                        let mut buf = vec![0; usize::try_from(len).ok()?];
                        f.read_exact_at(&mut buf, off).ok().map(|()| buf)
                    });
                    log::debug!("{shown}: {n} decoded pieces cached from the plaintext");
                }
                Err(e) => log::debug!("{shown}: no decoded pieces cached: {}", e.report()),
            }
        }
        Ok(())
    }

    /// The blob just installed, opened (it is already if the file is open), with its
    /// cache key.
    fn committed_blob(&self, done: Committed) -> FsResult<(Arc<dyn OpenBlob>, BlobId)> {
        match done.content {
            Some(Content::Blob { blob, key, .. }) => Ok((blob, key)),
            _ => self
                .codec
                .open(done.file)
                .map(|b| (b.clone(), blob_id(&done.stat, &*b))),
        }
    }

    /// Runs the codec with `tmp` as the blob's file, and scratch files beside it.
    fn run_codec(
        &self,
        tmp: &AtomicFile,
        code: impl FnOnce(&BlobOut<'_>) -> FsResult<u64>,
    ) -> FsResult<u64> {
        let scratch = || self.backing.temp_file()?.into_unlinked();
        code(&BlobOut {
            file: tmp.file(),
            scratch: &scratch,
        })
    }

    /// [`Table::unchanged`](super::inode::Table::unchanged) under a lock of its own.
    fn unchanged(&self, ino: Ino, gen: u64, id: (u64, u64)) -> bool {
        self.table().unchanged(ino, gen, id)
    }

    /// Registers a compression of `bytes` bytes for `status`, until the guard drops.
    fn register(&self, ino: Ino, shown: &str, bytes: u64) -> Job<'_> {
        let meter = Arc::new(Meter::default());
        let started = Instant::now();
        lock(&self.active).insert(
            ino,
            ActiveJob {
                shown: shown.to_string(),
                bytes,
                meter: meter.clone(),
                started,
            },
        );
        Job {
            meter,
            started,
            _registered: Registered(self, ino),
        }
    }

    /// Compresses again a blob with an overlay log: the untouched text chunks are
    /// copied into the new blob as they are, and only what the log changed (the
    /// chunks it touches, whole) goes to the model. A file the changes made too small
    /// or too large to compress becomes plaintext, to be kept plain as any other.
    fn recompress_one(
        &self,
        ino: Ino,
        file: Arc<std::fs::File>,
        id: (u64, u64),
        gen: u64,
        shown: &str,
    ) -> FsResult<()> {
        let Content::Blob {
            blob,
            key,
            file,
            overlay,
        } = self.blob_content(file, shown)?
        else {
            return Ok(());
        };
        let (size, clean, plan) = {
            let live = lock(&overlay);
            let o = &live.overlay;
            (o.size(), o.clean(), o.clone())
        };
        if size < MIN_COMPRESSIBLE as u64 || size > self.max_compress_bytes {
            log::debug!("{shown}: {size} bytes after its changes; to plaintext");
            drop((blob, file));
            self.make_plain(ino)?;
            return self.changed_meanwhile(ino);
        }
        let job = self.register(ino, shown, size);
        let read = |off: u64, len: u64| {
            if !self.unchanged(ino, gen, id) {
                return Err(changed(shown));
            }
            self.read_planned(&blob, key, &file, &plan.plan(off, len), false)
        };
        let mut tmp = self.backing.temp_file()?;
        let new_len = match self.run_codec(&tmp, |out| {
            let src = Source {
                len: size,
                read: &read,
            };
            self.codec.recompress(&*blob, &clean, &src, out, &job.meter)
        }) {
            Ok(n) => n,
            Err(_) if !self.unchanged(ino, gen, id) => return self.changed_meanwhile(ino),
            Err(e) => return Err(e.in_file(shown)),
        };
        if new_len >= size {
            log::debug!("{shown}: no longer smaller compressed; to plaintext");
            drop((blob, file, tmp));
            self.make_plain(ino)?;
            return self.changed_meanwhile(ino);
        }
        self.backing.seal(&mut tmp, &file, true)?;
        if let Some(done) = self.commit_blob(ino, id, gen, tmp, size, new_len, &job)? {
            match self.committed_blob(done) {
                Ok((new, new_key)) => {
                    // The chunks the change touched, as they were just coded: from the
                    // old blob's pieces (decoded to code them) and the log, through the
                    // plan that was coded. Then what was decoded of the old blob and is
                    // in the new one stays decoded.
                    let n = self.blobs.seed(&*new, new_key, |off, len| {
                        if within(&clean, off, off + len) {
                            return None;
                        }
                        self.read_planned(&blob, key, &file, &plan.plan(off, len), false)
                            .ok()
                    });
                    log::debug!("{shown}: {n} changed chunks cached as coded");
                    self.blobs
                        .carry_over((&*blob, key), (&*new, new_key), &clean)
                }
                Err(e) => log::debug!("{shown}: decoded pieces not kept: {}", e.report()),
            }
        }
        Ok(())
    }

    /// Installs the sealed blob `tmp` (of `blob_len` bytes, of an original of `size`
    /// bytes) over node `ino`'s file, unless it changed meanwhile (then it is queued
    /// again). Returns what was installed.
    #[allow(clippy::too_many_arguments)]
    fn commit_blob(
        &self,
        ino: Ino,
        id: (u64, u64),
        gen: u64,
        tmp: AtomicFile,
        size: u64,
        blob_len: u64,
        job: &Job<'_>,
    ) -> FsResult<Option<Committed>> {
        let mut t = self.table();
        let now = if t.unchanged(ino, gen, id) {
            self.entry(&t, ino).ok()
        } else {
            None
        };
        let still = now
            .as_ref()
            .and_then(|e| e.stat().ok())
            .is_some_and(|m| m.id() == id && m.nlink() == 1);
        let (Some(target), true) = (now, still) else {
            drop(t);
            drop(tmp);
            return self.changed_meanwhile(ino).map(|()| None);
        };
        let tf = Arc::new(self.backing.commit(tmp, &target.dir, &target.name)?);
        let nmd = Stat::of(&tf).ctx(target.show())?;
        let content = if t.get(ino).is_some_and(|n| n.content.is_some()) {
            self.blob_content(tf.clone(), &target.show()).ok()
        } else {
            None
        };
        if let Some(n) = t.get_mut(ino) {
            n.failures = 0;
            if let Some(Content::Blob { overlay, .. }) = &n.content {
                lock(overlay).retired = true;
            }
            n.content = content.clone();
        }
        t.mark_clean(ino);
        t.rebind(ino, nmd.id());
        drop(t);
        self.blobs.set_len(blob_key(&nmd), size);
        let c = &self.counters;
        let secs = job.started.elapsed();
        c.compress_ms
            .fetch_add(secs.as_millis() as u64, Ordering::Relaxed);
        c.compressed.fetch_add(1, Ordering::Relaxed);
        c.bytes_before.fetch_add(size, Ordering::Relaxed);
        c.bytes_after.fetch_add(blob_len, Ordering::Relaxed);
        log::info!(
            "{}: {} -> {} bytes in {:.1}s",
            target.show(),
            size,
            blob_len,
            secs.as_secs_f64()
        );
        Ok(Some(Committed {
            file: tf,
            stat: nmd,
            content,
        }))
    }
}

/// A blob installed over a file.
struct Committed {
    file: Arc<std::fs::File>,
    /// The blob file's status.
    stat: Stat,
    /// The node's content, opened from the blob, when the file is open.
    content: Option<Content>,
}

/// `entry`'s file opened again, if it is still the backing inode `id`.
fn reopen(entry: &Entry, id: (u64, u64)) -> Option<std::fs::File> {
    entry
        .dir
        .open_regular(&entry.name, false)
        .ok()
        .filter(|f| Stat::of(f).is_ok_and(|m| m.id() == id))
}

/// A read for a compression that found its file changed or gone: the compression is
/// given up (the caller sees the new generation and queues the file again).
fn changed(shown: &str) -> FsError {
    FsError::refused(libc::ESTALE, format!("{shown}: changed while compressing"))
}

/// A compression registered for `status`.
struct Job<'a> {
    meter: Arc<Meter>,
    started: Instant,
    _registered: Registered<'a>,
}
