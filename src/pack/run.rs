//! The three per-shard operations: pack (SRC → backing layout), unpack (backing layout
//! → plain tree) and verify (decode every blob and check it).
//!
//! All three share a shape: walk the tree, take this shard's entries, mirror every
//! directory (each shard does it; `mkdir` is idempotent), then handle the entries one by
//! one, skipping those already done. A failing entry is reported and the others go on;
//! the shard then fails as a whole, and a rerun retries only what is not done. Only a
//! missing model stops a shard at once.

use super::manifest::{
    self, fingerprint_str, sha256_hex, Entry, EntryKind, Header, PartialManifest,
};
use super::plan::{self, shard_items, walk, Item, ItemKind};
use super::progress::Meter;
use super::staging::Staging;
use super::{LazyEngine, PackError, Shard};
use crate::engine::CompressOptions;
use crate::format::Blob;
use crate::model::Fingerprint;
use crate::store::backing::{is_blob_file, is_blob_path, INTERNAL_DIR};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Directory inside an unpack's output that holds its temporary files (removed when
/// the last shard finishes).
const UNPACK_TMP: &str = ".nacrithfs-unpack";

pub struct PackOptions {
    pub src: PathBuf,
    pub dest: PathBuf,
    pub shard: Shard,
    /// The mount's defaults unless there is a reason to differ.
    pub compress: CompressOptions,
    /// Input bytes compressed in one model run: small files share its streams. A killed
    /// shard loses at most one batch of work. The CLI's default fills every stream with
    /// one chunk (streams × chunk size).
    pub batch_bytes: u64,
}

pub struct VerifyOptions {
    pub dest: PathBuf,
    pub shard: Shard,
    /// Manifest to check against (default: `DEST/.nacrithfs/manifest.jsonl` if present).
    pub manifest: Option<PathBuf>,
}

/// What one shard did.
#[derive(Clone, Debug)]
pub struct Report {
    pub op: &'static str,
    pub shard: Shard,
    /// Entries of this shard.
    pub files: u64,
    /// Entries that took work (compressed, decoded).
    pub worked: u64,
    /// Entries found already done.
    pub skipped: u64,
    /// Original bytes of the entries.
    pub bytes: u64,
    /// Bytes the entries take in the packed tree.
    pub stored: u64,
    /// Verify: files in the packed tree that the manifest does not list.
    pub unlisted: u64,
    pub manifest: Option<PathBuf>,
    /// The fingerprint of this machine's model and build, if it was loaded.
    pub fingerprint: Option<Fingerprint>,
}

impl Report {
    fn new(op: &'static str, shard: Shard, files: usize) -> Report {
        Report {
            op,
            shard,
            files: files as u64,
            worked: 0,
            skipped: 0,
            bytes: 0,
            stored: 0,
            unlisted: 0,
            manifest: None,
            fingerprint: None,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bpb = if self.bytes > 0 {
            self.stored as f64 * 8.0 / self.bytes as f64
        } else {
            0.0
        };
        match self.op {
            "pack" => write!(
                f,
                "pack {}: {} files ({} packed, {} already packed), {} -> {} bytes ({bpb:.3} bits/byte)",
                self.shard, self.files, self.worked, self.skipped, self.bytes, self.stored
            )?,
            "unpack" => write!(
                f,
                "unpack {}: {} files ({} written, {} already there), {} bytes",
                self.shard, self.files, self.worked, self.skipped, self.bytes
            )?,
            _ => write!(f, "verify {}: {} files ok ({} blobs decoded), {} bytes", self.shard, self.files, self.worked, self.bytes)?,
        }
        if self.unlisted > 0 {
            write!(f, "; {} files not in the manifest", self.unlisted)?;
        }
        if let Some(m) = &self.manifest {
            write!(f, "; manifest {}", m.display())?;
        }
        if let Some(fp) = &self.fingerprint {
            write!(f, "; this build: {fp}")?;
        }
        Ok(())
    }
}

/// `dir` made absolute; it must exist and be a directory.
fn existing_dir(dir: &Path) -> Result<PathBuf, PackError> {
    let no = |source| PackError::NoInput {
        path: dir.to_path_buf(),
        source,
    };
    let p = dir.canonicalize().map_err(no)?;
    if !p.is_dir() {
        return Err(no(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    Ok(p)
}

/// `dir`, created if needed, made absolute; refused (before anything is created) if it
/// and `input` contain each other.
fn output_dir(dir: &Path, input: &Path) -> Result<PathBuf, PackError> {
    disjoint(input, &resolve(dir)?)?;
    std::fs::create_dir_all(dir).map_err(PackError::io(dir))?;
    dir.canonicalize().map_err(PackError::io(dir))
}

/// `p` made absolute with symlinks resolved as far as it exists, creating nothing.
fn resolve(p: &Path) -> Result<PathBuf, PackError> {
    let abs = std::path::absolute(p).map_err(PackError::io(p))?;
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut c) = base.canonicalize() {
            c.extend(rest.iter().rev());
            return Ok(c);
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                base = parent;
            }
            _ => return Ok(abs.clone()),
        }
    }
}

fn disjoint(a: &Path, b: &Path) -> Result<(), PackError> {
    if a.starts_with(b) || b.starts_with(a) {
        return Err(PackError::Usage(format!(
            "{} and {} must not contain each other",
            a.display(),
            b.display()
        )));
    }
    Ok(())
}

fn read_all(f: &mut File, path: &Path) -> Result<Vec<u8>, PackError> {
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(PackError::io(path))?;
    Ok(data)
}

/// Creates every directory of `dirs` under `to`, with `from`'s modes (plus owner rwx,
/// so that other shards can still write into it) and, when allowed, owners.
fn mirror_dirs(from: &Path, to: &Path, dirs: &[PathBuf]) -> Result<(), PackError> {
    for rel in dirs {
        let (s, d) = (from.join(rel), to.join(rel));
        let md = std::fs::symlink_metadata(&s).map_err(PackError::io(&s))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => {
                // Not permitted unless root: then the directory is simply ours.
                let _ = std::os::unix::fs::lchown(&d, Some(md.uid()), Some(md.gid()));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let dm = std::fs::symlink_metadata(&d).map_err(PackError::io(&d))?;
                if !dm.is_dir() {
                    return Err(PackError::Io {
                        path: d,
                        source: io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "exists and is not a directory",
                        ),
                    });
                }
            }
            Err(e) => return Err(PackError::Io { path: d, source: e }),
        }
        let mode = (md.mode() & 0o7777) | 0o700;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
            .map_err(PackError::io(&d))?;
    }
    Ok(())
}

/// Whether `path` is already a regular file of `len` bytes with CRC-32C `crc`.
fn same_plain(path: &Path, len: u64, crc: u32) -> Result<bool, PackError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_file() && md.len() == len => {}
        _ => return Ok(false),
    }
    let data = std::fs::read(path).map_err(PackError::io(path))?;
    Ok(crc32c::crc32c(&data) == crc)
}

/// Makes `dest` a symlink to `target` unless it already is one. Returns whether it
/// wrote anything.
fn mirror_symlink(staging: &Staging, target: &Path, dest: &Path) -> Result<bool, PackError> {
    if std::fs::read_link(dest).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    let tmp = staging.symlink(target)?;
    staging.commit(&tmp, dest)?;
    Ok(true)
}

fn symlink_entry(rel: &Path, target: PathBuf, shard: u32) -> Entry {
    let b = target.as_os_str().as_bytes();
    Entry {
        rel: rel.to_path_buf(),
        kind: EntryKind::Symlink,
        size: b.len() as u64,
        sha256: sha256_hex(b),
        crc32c: crc32c::crc32c(b),
        stored: 0,
        fingerprint: None,
        needs_model: None,
        target: Some(target),
        shard,
    }
}

/// Whether an error means no file can succeed (the model cannot be loaded or run).
fn fatal(e: PackError) -> Result<PackError, PackError> {
    match e {
        PackError::Model(_) => Err(e),
        PackError::Codec {
            source: crate::Error::Model(m),
            ..
        } => Err(PackError::Model(m)),
        other => Ok(other),
    }
}

/// Counts a shard's entries as they finish or fail, with the progress meter.
struct Tally {
    op: &'static str,
    shard: Shard,
    total: usize,
    meter: Meter,
    failures: Vec<PackError>,
}

impl Tally {
    fn new(op: &'static str, shard: Shard, total: usize, bytes: u64) -> Tally {
        Tally {
            op,
            shard,
            total,
            meter: Meter::new(op, shard, total as u64, bytes),
            failures: Vec::new(),
        }
    }

    fn ok(&mut self, report: &mut Report, size: u64, worked: bool) {
        if worked {
            report.worked += 1;
        } else {
            report.skipped += 1;
        }
        self.meter.done(size, worked);
    }

    /// Records a failed entry; a fatal error (no model) is returned instead.
    fn fail(&mut self, size: u64, e: PackError) -> Result<(), PackError> {
        let e = fatal(e)?;
        self.meter.log(
            log::Level::Error,
            &format!("{} {}: {e}", self.op, self.shard),
        );
        self.meter.done(size, false);
        self.failures.push(e);
        Ok(())
    }

    /// Ok when no entry failed.
    fn finish(mut self) -> Result<(), PackError> {
        self.meter.finish();
        if self.failures.is_empty() {
            return Ok(());
        }
        let failed = self.failures.len();
        let first = Box::new(self.failures.swap_remove(0));
        Err(PackError::Failed {
            op: self.op,
            shard: self.shard,
            failed,
            total: self.total,
            first,
        })
    }
}

/// Runs `one` over `items`, keeping count; fails at the first fatal error, and at the
/// end if any item failed.
fn each<T>(
    op: &'static str,
    shard: Shard,
    items: &[T],
    size: impl Fn(&T) -> u64,
    report: &mut Report,
    mut one: impl FnMut(&T, &mut Report) -> Result<bool, PackError>,
) -> Result<(), PackError> {
    let mut tally = Tally::new(op, shard, items.len(), items.iter().map(&size).sum());
    for item in items {
        match one(item, report) {
            Ok(worked) => tally.ok(report, size(item), worked),
            Err(e) => tally.fail(size(item), e)?,
        }
    }
    tally.finish()
}

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
                self.staging.commit(&tmp, &dp)?;
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
            Err(crate::Error::Model(m)) => return Err(PackError::Model(m)),
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
                    self.staging.commit(&tmp, &p.dest)?;
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
    let bytes = std::fs::read(dest).map_err(PackError::io(dest))?;
    match Blob::parse(&bytes) {
        Ok(b) if b.header.original_len == len && b.header.original_crc == crc => Ok(Some((
            bytes.len() as u64,
            b.header.fingerprint,
            !b.chunks.is_empty(),
        ))),
        Ok(_) => Ok(None),
        Err(e) => {
            log::warn!(
                "{}: unreadable blob ({e}), packing it again",
                dest.display()
            );
            Ok(None)
        }
    }
}

/// Writes this shard's files of the packed tree `packed` as plain files into `out`.
pub fn unpack(
    packed: &Path,
    out: &Path,
    shard: Shard,
    engine: &LazyEngine,
) -> Result<Report, PackError> {
    let root = existing_dir(packed)?;
    let out = output_dir(out, &root)?;
    let tree = walk(&root, Some(INTERNAL_DIR))?;
    let mine = shard_items(&tree.items, shard);
    let staging = Staging::open(out.join(UNPACK_TMP), format!("unpack-{}", shard.tag()))?;
    mirror_dirs(&root, &out, &tree.dirs)?;
    log::info!(
        "unpack {shard}: {} of {} files, {} -> {}",
        mine.len(),
        tree.items.len(),
        root.display(),
        out.display()
    );
    let mut report = Report::new("unpack", shard, mine.len());
    let r = each(
        "unpack",
        shard,
        &mine,
        |i| i.size,
        &mut report,
        |item, report| {
            let (bp, op) = (root.join(&item.rel), out.join(&item.rel));
            if item.kind == ItemKind::Symlink {
                let target = std::fs::read_link(&bp).map_err(PackError::io(&bp))?;
                return mirror_symlink(&staging, &target, &op);
            }
            let mut f = File::open(&bp).map_err(PackError::io(&bp))?;
            let data = read_all(&mut f, &bp)?;
            report.stored += data.len() as u64;
            let codec = |source: crate::Error| PackError::Codec {
                path: bp.clone(),
                source,
            };
            if !is_blob_file(&f).map_err(PackError::io(&bp))? {
                report.bytes += data.len() as u64;
                if same_plain(&op, data.len() as u64, crc32c::crc32c(&data))? {
                    return Ok(false);
                }
                let tmp = staging.file(&data, &f, false)?;
                staging.commit(&tmp, &op)?;
                return Ok(true);
            }
            let blob = Blob::parse(&data).map_err(|e| codec(e.into()))?;
            report.bytes += blob.header.original_len;
            if same_plain(&op, blob.header.original_len, blob.header.original_crc)? {
                return Ok(false);
            }
            drop(blob);
            let plain = engine.get()?.decompress(&data, None).map_err(codec)?;
            let tmp = staging.file(&plain, &f, false)?;
            staging.commit(&tmp, &op)?;
            Ok(true)
        },
    );
    staging.remove_dir_if_empty();
    r?;
    report.fingerprint = engine.loaded().map(|e| e.model().fingerprint());
    Ok(report)
}

/// Decodes this shard's blobs of the packed tree and checks them: every checksum in the
/// blob and, with a manifest, size and SHA-256 against it, plus files it lists that
/// are missing.
pub fn verify(opts: &VerifyOptions, engine: &LazyEngine) -> Result<Report, PackError> {
    let shard = opts.shard;
    let root = existing_dir(&opts.dest)?;
    let manifest_path = match &opts.manifest {
        Some(m) => Some(m.clone()),
        None => Some(root.join(INTERNAL_DIR).join(manifest::MERGED_NAME)).filter(|p| p.exists()),
    };
    let mut expected: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    if let Some(m) = &manifest_path {
        let (h, entries) = manifest::read(m)?;
        if h.shard.is_some() {
            log::warn!("{}: a single shard's manifest; files of other shards will show as not in the manifest", m.display());
        }
        expected = entries
            .into_iter()
            .map(|e| (e.rel.as_os_str().as_bytes().to_vec(), e))
            .collect();
    }
    let tree = walk(&root, Some(INTERNAL_DIR))?;
    // The union of what is there and what should be there, in path-byte order.
    let mut all: BTreeMap<Vec<u8>, (Option<Item>, Option<Entry>)> = BTreeMap::new();
    for i in tree.items {
        let k = i.rel.as_os_str().as_bytes().to_vec();
        all.entry(k).or_default().0 = Some(i);
    }
    for (k, e) in expected {
        all.entry(k).or_default().1 = Some(e);
    }
    let keys: Vec<Item> = all
        .values()
        .map(|(i, e)| match (i, e) {
            (Some(i), _) => i.clone(),
            (None, Some(e)) => Item {
                rel: e.rel.clone(),
                kind: ItemKind::File,
                size: e.stored,
            },
            (None, None) => unreachable!("every key has an item or an entry"),
        })
        .collect();
    let mine = shard_items(&keys, shard);
    log::info!(
        "verify {shard}: {} of {} files of {}",
        mine.len(),
        keys.len(),
        root.display()
    );
    let mut report = Report::new("verify", shard, mine.len());
    report.manifest = manifest_path.clone();
    let have_manifest = manifest_path.is_some();
    each(
        "verify",
        shard,
        &mine,
        |i| i.size,
        &mut report,
        |key, report| {
            let Some((item, entry)) = all.get(key.rel.as_os_str().as_bytes()) else {
                return Ok(false);
            };
            let path = root.join(&key.rel);
            let mismatch = |why: String| PackError::Mismatch {
                path: path.clone(),
                why,
            };
            let Some(item) = item else {
                return Err(mismatch("listed in the manifest but missing".into()));
            };
            if entry.is_none() && have_manifest {
                report.unlisted += 1;
                log::warn!("{}: not in the manifest", path.display());
            }
            if item.kind == ItemKind::Symlink {
                let target = std::fs::read_link(&path).map_err(PackError::io(&path))?;
                if let Some(e) = entry {
                    if e.target.as_deref() != Some(target.as_path()) {
                        return Err(mismatch(format!(
                            "symlink to {}, the manifest says {:?}",
                            target.display(),
                            e.target
                        )));
                    }
                }
                return Ok(false);
            }
            let mut f = File::open(&path).map_err(PackError::io(&path))?;
            let data = read_all(&mut f, &path)?;
            let blob = is_blob_file(&f).map_err(PackError::io(&path))?;
            let plain = if blob {
                engine
                    .get()?
                    .decompress(&data, None)
                    .map_err(|source| PackError::Codec {
                        path: path.clone(),
                        source,
                    })?
            } else {
                data
            };
            report.bytes += plain.len() as u64;
            if let Some(e) = entry {
                let kind = if blob {
                    EntryKind::Blob
                } else {
                    EntryKind::Plain
                };
                if e.kind != kind {
                    return Err(mismatch(format!(
                        "stored as {kind:?}, the manifest says {:?}",
                        e.kind
                    )));
                }
                if e.size != plain.len() as u64 || e.sha256 != sha256_hex(&plain) {
                    return Err(mismatch(format!(
                        "decodes to {} bytes that differ from the manifest's {} bytes",
                        plain.len(),
                        e.size
                    )));
                }
            }
            Ok(blob)
        },
    )?;
    report.fingerprint = engine.loaded().map(|e| e.model().fingerprint());
    Ok(report)
}
