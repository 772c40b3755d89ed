//! `pack`: compress this shard's files of SRC into the backing layout at DEST, in
//! batches that share the model's streams (a file larger than one window alone, a
//! window at a time); files already packed are skipped.

use super::*;

/// Packs this shard's files of `opts.src` into `opts.dest` (see the module docs of
/// [`crate::pack`]); writes the shard's manifest when every file is done.
pub fn pack(opts: &PackOptions, engine: &LazyEngine) -> Result<Report, PackError> {
    let shard = opts.shard;
    let src = existing_dir(&opts.src)?;
    let dest = output_dir(&opts.dest, &src)?;
    let tree = walk(&src, Some(INTERNAL_DIR))?;
    if shard.index == 0 {
        for (p, why) in &tree.skipped {
            log::warn!("{}: not packed ({why})", src.join(p).display());
        }
    }
    let mine = shard_items(&tree.items, shard);
    // Beside other shards, never beside a mount of DEST (which would not see these
    // files appear and could compress over them).
    let _lock = lock_shared(&dest)?;
    let internal = dest.join(INTERNAL_DIR);
    let staging = Staging::open(internal.join("tmp"), format!("pack-{}", shard.tag()))?;
    // An earlier run's manifest stops describing DEST the moment this run starts.
    let final_path = internal.join(manifest::shard_name(shard));
    match std::fs::remove_file(&final_path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(PackError::Io {
                path: final_path,
                source: e,
            })
        }
        _ => {}
    }
    let bytes_total = mine.iter().map(|i| i.size).sum();
    let header = Header::new(
        Some(shard.index),
        shard.count,
        plan::digest(&tree.items),
        mine.len() as u64,
        bytes_total,
    );
    let partial = PartialManifest::create(&internal, shard, &header)?;
    mirror_dirs(&src, &dest, &tree.dirs)?;
    log::info!(
        "pack {shard}: {} of {} files, {} of {} bytes, {} -> {}",
        mine.len(),
        tree.items.len(),
        bytes_total,
        tree.items.iter().map(|i| i.size).sum::<u64>(),
        src.display(),
        dest.display()
    );

    let mut run = PackRun {
        src,
        dest,
        shard,
        staging,
        engine,
        opts,
        partial,
        entries: Vec::with_capacity(mine.len()),
        report: Report::new("pack", shard, mine.len()),
        tally: Tally::new("pack", shard, mine.len(), bytes_total),
        batch: Vec::new(),
        batch_bytes: 0,
    };
    for item in &mine {
        run.item(item)?;
    }
    run.flush()?;
    let PackRun {
        mut entries,
        mut report,
        tally,
        partial,
        ..
    } = run;
    tally.finish()?;
    manifest::sort(&mut entries);
    manifest::write(&final_path, &header, &entries)?;
    partial.remove()?;
    report.manifest = Some(final_path);
    report.fingerprint = engine.loaded().map(|e| e.model().fingerprint());
    Ok(report)
}

/// Most files compressed in one model run (each holds an open file until then).
const BATCH_FILES: usize = 256;

/// A file read and waiting for its batch.
struct Pending {
    item: Item,
    src: PathBuf,
    dest: PathBuf,
    /// The open source, whose metadata the blob gets.
    file: File,
    data: Vec<u8>,
    /// Its manifest entry, less what the blob adds.
    entry: Entry,
}

/// What one entry needs after the cheap checks.
enum Step {
    Done(Entry, bool),
    Compress(Pending),
}

/// One pack shard under way.
struct PackRun<'a, 'e> {
    src: PathBuf,
    dest: PathBuf,
    shard: Shard,
    staging: Staging,
    engine: &'a LazyEngine<'e>,
    opts: &'a PackOptions,
    partial: PartialManifest,
    entries: Vec<Entry>,
    report: Report,
    tally: Tally,
    batch: Vec<Pending>,
    batch_bytes: u64,
}

impl PackRun<'_, '_> {
    fn item(&mut self, item: &Item) -> Result<(), PackError> {
        match self.step(item) {
            Ok(Step::Done(entry, worked)) => self.record(entry, item.size, worked),
            Ok(Step::Compress(p)) => {
                self.batch_bytes += p.data.len() as u64;
                self.batch.push(p);
                if self.batch_bytes >= self.opts.batch_bytes.max(1)
                    || self.batch.len() >= BATCH_FILES
                {
                    self.flush()?;
                }
                Ok(())
            }
            Err(e) => self.tally.fail(item.size, e),
        }
    }

    /// Counts a finished entry and lists it in the partial manifest.
    fn record(&mut self, entry: Entry, size: u64, worked: bool) -> Result<(), PackError> {
        self.partial.append(&entry)?;
        self.report.bytes += if entry.kind == EntryKind::Symlink {
            0
        } else {
            entry.size
        };
        self.report.stored += entry.stored;
        self.tally.ok(&mut self.report, size, worked);
        self.entries.push(entry);
        Ok(())
    }

    /// Handles symlinks, empty files and files already packed; reads the others.
    fn step(&self, item: &Item) -> Result<Step, PackError> {
        let (sp, dp) = (self.src.join(&item.rel), self.dest.join(&item.rel));
        let index = self.shard.index;
        if item.kind == ItemKind::Symlink {
            let target = std::fs::read_link(&sp).map_err(PackError::io(&sp))?;
            let worked = mirror_symlink(&self.staging, &target, &dp)?;
            return Ok(Step::Done(symlink_entry(&item.rel, target, index), worked));
        }
        let mut f = File::open(&sp).map_err(PackError::io(&sp))?;
        let md = f.metadata().map_err(PackError::io(&sp))?;
        if !md.is_file() {
            return Err(PackError::Mismatch {
                path: sp,
                why: "no longer a regular file".into(),
            });
        }
        if md.len() > self.opts.window as u64 {
            return self.large(item, &sp, &dp, f);
        }
        let data = read_all(&mut f, &sp)?;
        let crc = crc32c::crc32c(&data);
        let mut entry = Entry {
            rel: item.rel.clone(),
            kind: EntryKind::Blob,
            size: data.len() as u64,
            sha256: sha256_hex(&data),
            crc32c: crc,
            stored: 0,
            fingerprint: None,
            needs_model: None,
            target: None,
            shard: index,
        };
        if data.is_empty() {
            // Empty files stay empty plaintext, as in the mount.
            entry.kind = EntryKind::Plain;
            let done = std::fs::symlink_metadata(&dp).is_ok_and(|m| m.is_file() && m.len() == 0)
                && !is_blob_path(&dp).map_err(PackError::io(&dp))?;
            if !done {
                let tmp = self.staging.file(&[], &f, false)?;
                self.staging.commit(tmp, &dp)?;
            }
            return Ok(Step::Done(entry, !done));
        }
        if let Some((stored, fp, text)) = packed_already(&dp, data.len() as u64, crc)? {
            entry.stored = stored;
            entry.fingerprint = Some(fingerprint_str(&fp));
            entry.needs_model = Some(text);
            return Ok(Step::Done(entry, false));
        }
        Ok(Step::Compress(Pending {
            item: item.clone(),
            src: sp,
            dest: dp,
            file: f,
            data,
            entry,
        }))
    }

    /// A file larger than one window: hashed, then (unless packed already) compressed
    /// on its own a window at a time, never held whole.
    fn large(&self, item: &Item, sp: &Path, dp: &Path, f: File) -> Result<Step, PackError> {
        let want = stream::digest(&f, sp)?;
        let mut entry = Entry {
            rel: item.rel.clone(),
            kind: EntryKind::Blob,
            size: want.len,
            sha256: String::new(),
            crc32c: want.crc,
            stored: 0,
            fingerprint: None,
            needs_model: None,
            target: None,
            shard: self.shard.index,
        };
        if let Some((stored, fp, text)) = packed_already(dp, want.len, want.crc)? {
            entry.stored = stored;
            entry.fingerprint = Some(fingerprint_str(&fp));
            entry.needs_model = Some(text);
            entry.sha256 = want.sha256_hex();
            return Ok(Step::Done(entry, false));
        }
        let engine = self.engine.get()?;
        let mut tmp = self.staging.empty()?;
        let (stored, text) = stream::compress_into(
            (engine, &self.opts.compress, self.opts.window),
            &self.staging,
            &f,
            sp,
            &want,
            &mut tmp,
        )?;
        self.staging.seal(&mut tmp, &f, true)?;
        self.staging.commit(tmp, dp)?;
        log::debug!("{}: {} -> {stored} bytes", item.rel.display(), want.len);
        entry.stored = stored;
        entry.fingerprint = Some(fingerprint_str(&engine.model().fingerprint()));
        entry.needs_model = Some(text);
        entry.sha256 = want.sha256_hex();
        Ok(Step::Done(entry, true))
    }

    /// Compresses the batch in one model run and commits each blob. When the run fails
    /// as a whole, each file is tried alone, so one bad file cannot sink the others.
    fn flush(&mut self) -> Result<(), PackError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if batch.is_empty() {
            return Ok(());
        }
        let engine = self.engine.get()?;
        let compress = &self.opts.compress;
        let data: Vec<&[u8]> = batch.iter().map(|p| &p.data[..]).collect();
        let results = match engine.compress_batch(&data, compress, None) {
            Ok(r) => r,
            Err(nacrithfs_engine::Error::Model(m)) => return Err(PackError::Model(m)),
            Err(e) if batch.len() == 1 => vec![Err(e)],
            Err(e) => {
                log::warn!(
                    "pack {}: a batch of {} files failed ({e}); compressing them one by one",
                    self.shard,
                    batch.len()
                );
                data.iter()
                    .map(|d| engine.compress(d, compress, None))
                    .collect()
            }
        };
        drop(data);
        let fingerprint = fingerprint_str(&engine.model().fingerprint());
        for (p, r) in batch.into_iter().zip(results) {
            let size = p.item.size;
            let done = r
                .map_err(|source| PackError::Codec {
                    path: p.src.clone(),
                    source,
                })
                .and_then(|c| {
                    let tmp = self.staging.file(&c.blob, &p.file, true)?;
                    self.staging.commit(tmp, &p.dest)?;
                    log::debug!(
                        "{}: {} -> {} bytes",
                        p.item.rel.display(),
                        p.data.len(),
                        c.blob.len()
                    );
                    let mut entry = p.entry;
                    entry.stored = c.blob.len() as u64;
                    entry.fingerprint = Some(fingerprint.clone());
                    entry.needs_model = Some(c.stats.chunks > 0);
                    Ok(entry)
                });
            match done {
                Ok(entry) => self.record(entry, size, true)?,
                Err(e) => self.tally.fail(size, e)?,
            }
        }
        Ok(())
    }
}

/// A blob at `dest` that holds exactly `len` bytes of CRC-32C `crc`: its size,
/// fingerprint and whether it has text. A blob is renamed into place only after it was
/// verified, so finding one is proof enough.
fn packed_already(
    dest: &Path,
    len: u64,
    crc: u32,
) -> Result<Option<(u64, Fingerprint, bool)>, PackError> {
    match std::fs::symlink_metadata(dest) {
        Ok(md) if md.is_file() => {}
        _ => return Ok(None),
    }
    if !is_blob_path(dest).map_err(PackError::io(dest))? {
        return Ok(None);
    }
    let file = File::open(dest).map_err(PackError::io(dest))?;
    let stored = file.metadata().map_err(PackError::io(dest))?.len();
    match nacrithfs_codec::read_header(&file) {
        Ok((b, _)) if b.header.original_len == len && b.header.original_crc == crc => {
            Ok(Some((stored, b.header.fingerprint, !b.chunks.is_empty())))
        }
        Ok(_) => Ok(None),
        Err(e) => {
            log::warn!(
                "{}: unreadable blob ({}), packing it again",
                dest.display(),
                e.report()
            );
            Ok(None)
        }
    }
}
