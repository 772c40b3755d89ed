//! Manifests: what each shard packed, one JSON object per line, and their merge.
//!
//! `DEST/.nacrithfs/manifest-I-of-N.jsonl` is shard I's manifest. Its first line
//! describes the shard (`{"manifest":"nacrithfs-pack","version":1,"shard":I,"shards":N,
//! "plan":…,"files":…,"bytes":…}`, where `files`/`bytes` are what the plan gave it);
//! every further line is one file, in path-byte order:
//!
//! ```json
//! {"path":"docs/a.txt","kind":"blob","size":1234,"sha256":"…","crc32c":"1a2b3c4d","stored":402,"fingerprint":"<model>:<backend>","needs_model":true,"shard":0}
//! ```
//!
//! `kind` is `blob` (an NC06 blob), `plain` (stored as is: empty files) or `symlink`
//! (with `target`; `size`, `sha256` and `crc32c` describe the target's bytes). Paths that
//! are not UTF-8 are written as `path_hex` / `target_hex` instead. `fingerprint` is the
//! model and build that coded a blob; `needs_model` is false for blobs without text,
//! which decode anywhere.
//!
//! While a shard runs it appends lines to `manifest-I-of-N.jsonl.partial` (one `write`
//! per line: a kill leaves whole lines), for anyone watching. The real manifest is
//! written, sorted, through a temporary file and a rename once every file of the shard
//! is done, so its presence means "shard finished". The merge writes
//! `DEST/.nacrithfs/manifest.jsonl` the same way, with the header's `shard` left out.

use super::{PackError, Shard};
use nc06::Fingerprint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The `manifest` field of every header.
pub const MANIFEST_KIND: &str = "nacrithfs-pack";
/// The version of the manifest format this build writes.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the merged manifest inside `DEST/.nacrithfs`.
pub const MERGED_NAME: &str = "manifest.jsonl";

/// File name of a shard's finished manifest.
pub fn shard_name(shard: Shard) -> String {
    format!("manifest-{}.jsonl", shard.tag())
}

/// File name of a shard's manifest while it runs.
pub fn partial_name(shard: Shard) -> String {
    format!("{}.partial", shard_name(shard))
}

/// The first line of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Always `nacrithfs-pack` ([`MANIFEST_KIND`]): tells a manifest from other JSON lines.
    pub manifest: String,
    /// [`MANIFEST_VERSION`] of the writer.
    pub version: u32,
    /// The shard that wrote it; `None` once merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// Shards of the run.
    pub shards: u32,
    /// Digest of the file list the assignment was computed from ([`super::plan::digest`]).
    pub plan: String,
    /// Entries that follow.
    pub files: u64,
    /// Original bytes of those entries.
    pub bytes: u64,
}

impl Header {
    /// The header of a manifest of `files` entries of `bytes` in all.
    pub fn new(shard: Option<u32>, shards: u32, plan: String, files: u64, bytes: u64) -> Header {
        Header {
            manifest: MANIFEST_KIND.into(),
            version: MANIFEST_VERSION,
            shard,
            shards,
            plan,
            files,
            bytes,
        }
    }
}

/// How an entry is stored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// As an NC06 blob.
    Blob,
    /// As plaintext (empty files).
    Plain,
    /// As a symlink.
    Symlink,
}

/// One file of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "RawEntry", into = "RawEntry")]
pub struct Entry {
    /// Its path under the tree.
    pub rel: PathBuf,
    /// How it is stored.
    pub kind: EntryKind,
    /// Original size.
    pub size: u64,
    /// SHA-256 of the original bytes, hex.
    pub sha256: String,
    /// CRC-32C of the original bytes.
    pub crc32c: u32,
    /// Bytes in DEST (0 for symlinks).
    pub stored: u64,
    /// `model:backend` in hex, for blobs.
    pub fingerprint: Option<String>,
    /// Whether decoding the blob needs the model (it has text chunks).
    pub needs_model: Option<bool>,
    /// A symlink's target.
    pub target: Option<PathBuf>,
    /// The shard that wrote it.
    pub shard: u32,
}

/// The JSON shape of [`Entry`]: paths as strings, or hex when they are not UTF-8.
#[derive(Serialize, Deserialize)]
struct RawEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    kind: EntryKind,
    size: u64,
    sha256: String,
    crc32c: String,
    stored: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    needs_model: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_hex: Option<String>,
    shard: u32,
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A path as (UTF-8 string, hex) with exactly one set.
fn split_path(p: &Path) -> (Option<String>, Option<String>) {
    match p.to_str() {
        Some(s) => (Some(s.to_string()), None),
        None => (None, Some(hex(p.as_os_str().as_bytes()))),
    }
}

fn join_path(s: Option<String>, h: Option<String>, what: &str) -> Result<Option<PathBuf>, String> {
    match (s, h) {
        (Some(s), None) => Ok(Some(PathBuf::from(s))),
        (None, Some(h)) => unhex(&h)
            .map(|b| Some(PathBuf::from(OsString::from_vec(b))))
            .ok_or_else(|| format!("bad {what}_hex")),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(format!("both {what} and {what}_hex")),
    }
}

impl From<Entry> for RawEntry {
    fn from(e: Entry) -> RawEntry {
        let (path, path_hex) = split_path(&e.rel);
        let (target, target_hex) = e.target.as_deref().map(split_path).unwrap_or((None, None));
        RawEntry {
            path,
            path_hex,
            kind: e.kind,
            size: e.size,
            sha256: e.sha256,
            crc32c: format!("{:08x}", e.crc32c),
            stored: e.stored,
            fingerprint: e.fingerprint,
            needs_model: e.needs_model,
            target,
            target_hex,
            shard: e.shard,
        }
    }
}

impl TryFrom<RawEntry> for Entry {
    type Error = String;
    fn try_from(r: RawEntry) -> Result<Entry, String> {
        let rel = join_path(r.path, r.path_hex, "path")?.ok_or("no path")?;
        if rel.as_os_str().is_empty()
            || rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("{}: not a plain relative path", rel.display()));
        }
        let target = join_path(r.target, r.target_hex, "target")?;
        if (r.kind == EntryKind::Symlink) != target.is_some() {
            return Err("a target is given exactly for symlinks".into());
        }
        let crc32c =
            u32::from_str_radix(&r.crc32c, 16).map_err(|_| format!("bad crc32c {:?}", r.crc32c))?;
        if r.sha256.len() != 64 || unhex(&r.sha256).is_none() {
            return Err(format!("bad sha256 {:?}", r.sha256));
        }
        Ok(Entry {
            rel,
            kind: r.kind,
            size: r.size,
            sha256: r.sha256,
            crc32c,
            stored: r.stored,
            fingerprint: r.fingerprint,
            needs_model: r.needs_model,
            target,
            shard: r.shard,
        })
    }
}

/// `model:backend` in hex.
pub fn fingerprint_str(f: &Fingerprint) -> String {
    format!("{}:{}", hex(&f.model), hex(&f.backend))
}

/// SHA-256 in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

fn line<T: Serialize>(v: &T) -> String {
    // Serialising these plain structs cannot fail.
    let mut s = serde_json::to_string(v).unwrap_or_default();
    s.push('\n');
    s
}

/// A shard's manifest while it runs: whole lines appended as files finish.
pub struct PartialManifest {
    file: File,
    path: PathBuf,
}

impl PartialManifest {
    /// Starts `dir`'s partial manifest of `shard` afresh.
    pub fn create(dir: &Path, shard: Shard, header: &Header) -> Result<PartialManifest, PackError> {
        let path = dir.join(partial_name(shard));
        let file = File::create(&path).map_err(PackError::io(&path))?;
        let mut m = PartialManifest { file, path };
        m.write(&line(header))?;
        Ok(m)
    }

    fn write(&mut self, s: &str) -> Result<(), PackError> {
        // One write call per line, so a killed process leaves no half line behind.
        self.file
            .write_all(s.as_bytes())
            .map_err(PackError::io(&self.path))
    }

    /// Appends one entry line.
    pub fn append(&mut self, e: &Entry) -> Result<(), PackError> {
        self.write(&line(e))
    }

    /// Deletes the partial manifest (its final form has been written).
    pub fn remove(self) -> Result<(), PackError> {
        std::fs::remove_file(&self.path).map_err(PackError::io(&self.path))
    }
}

/// Sorts entries by path bytes.
pub fn sort(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        a.rel
            .as_os_str()
            .as_bytes()
            .cmp(b.rel.as_os_str().as_bytes())
    });
}

/// Writes a whole manifest to `path` through a synced temporary file and a rename.
pub fn write(path: &Path, header: &Header, entries: &[Entry]) -> Result<(), PackError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let r = (|| {
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        f.write_all(line(header).as_bytes())?;
        for e in entries {
            f.write_all(line(e).as_bytes())?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(d) = path.parent() {
            File::open(d)?.sync_all()?;
        }
        Ok(())
    })();
    r.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        PackError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Reads a whole manifest.
pub fn read(path: &Path) -> Result<(Header, Vec<Entry>), PackError> {
    let f = File::open(path).map_err(|source| PackError::NoInput {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |line: usize, why: String| PackError::Manifest {
        path: path.to_path_buf(),
        line,
        why,
    };
    let mut lines = BufReader::new(f).lines();
    let first = lines
        .next()
        .ok_or_else(|| bad(1, "empty".into()))?
        .map_err(PackError::io(path))?;
    let header: Header = serde_json::from_str(&first).map_err(|e| bad(1, e.to_string()))?;
    if header.manifest != MANIFEST_KIND || header.version != MANIFEST_VERSION {
        return Err(bad(
            1,
            format!("not a version {MANIFEST_VERSION} {MANIFEST_KIND} manifest"),
        ));
    }
    let mut entries = Vec::new();
    for (i, l) in lines.enumerate() {
        let l = l.map_err(PackError::io(path))?;
        entries.push(serde_json::from_str::<Entry>(&l).map_err(|e| bad(i + 2, e.to_string()))?);
    }
    Ok((header, entries))
}

/// What a merge produced.
#[derive(Clone, Debug)]
pub struct MergeSummary {
    /// The merged manifest.
    pub path: PathBuf,
    /// Shards merged.
    pub shards: u32,
    /// Entries.
    pub files: u64,
    /// Original bytes.
    pub bytes: u64,
    /// Stored bytes.
    pub stored: u64,
    /// Blobs per fingerprint (blobs that need the model only).
    pub fingerprints: BTreeMap<String, u64>,
}

impl fmt::Display for MergeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "merged {} shards into {}: {} files, {} bytes stored in {} ({:.3} bits/byte)",
            self.shards,
            self.path.display(),
            self.files,
            self.bytes,
            self.stored,
            if self.bytes > 0 {
                self.stored as f64 * 8.0 / self.bytes as f64
            } else {
                0.0
            }
        )?;
        for (fp, n) in &self.fingerprints {
            write!(f, "\n  {n} blobs need the model and build {fp}")?;
        }
        Ok(())
    }
}

/// The shard manifests in `dir`: (shard, finished?) for every `manifest-I-of-N.jsonl`
/// and `.partial` file.
fn list(dir: &Path) -> Result<Vec<(Shard, bool)>, PackError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|source| PackError::NoInput {
        path: dir.to_path_buf(),
        source,
    })? {
        let e = e.map_err(PackError::io(dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("manifest-") else {
            continue;
        };
        let (rest, done) = match rest.strip_suffix(".jsonl") {
            Some(r) => (r, true),
            None => match rest.strip_suffix(".jsonl.partial") {
                Some(r) => (r, false),
                None => continue,
            },
        };
        let Some((i, n)) = rest.split_once("-of-") else {
            continue;
        };
        if let Ok(s) = format!("{i}/{n}").parse::<Shard>() {
            out.push((s, done));
        }
    }
    out.sort_by_key(|(s, d)| (s.count, s.index, *d));
    Ok(out)
}

/// Merges the N shard manifests in `dir` (`DEST/.nacrithfs`) into `dir/manifest.jsonl`.
/// `shards` picks N when manifests of several shard counts are present. Refuses unless
/// every shard has finished, all planned over the same tree, and no file is listed
/// twice or missing.
pub fn merge(dir: &Path, shards: Option<u32>) -> Result<MergeSummary, PackError> {
    let found = list(dir)?;
    let n = match shards {
        Some(n) => n,
        None => {
            let mut counts: Vec<u32> = found.iter().map(|(s, _)| s.count).collect();
            counts.dedup();
            match counts[..] {
                [n] => n,
                [] => {
                    return Err(PackError::Incomplete(format!(
                        "{}: no shard manifests (has `nacrithfs pack` run?)",
                        dir.display()
                    )))
                }
                _ => {
                    return Err(PackError::Usage(format!(
                        "{}: manifests of {counts:?} shards; pick one with --shards",
                        dir.display()
                    )))
                }
            }
        }
    };
    let mut missing = Vec::new();
    for i in 0..n {
        let s = Shard::new(i, n).map_err(PackError::Usage)?;
        if !found.contains(&(s, true)) {
            let state = if found.contains(&(s, false)) {
                "unfinished"
            } else {
                "not started"
            };
            missing.push(format!("{s} {state}"));
        }
    }
    if !missing.is_empty() {
        return Err(PackError::Incomplete(format!(
            "{} of {n} shards have no manifest yet ({}): run them (again) before merging",
            missing.len(),
            missing.join(", ")
        )));
    }
    let mut plan: Option<(String, Shard)> = None;
    let mut all: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    for i in 0..n {
        let s = Shard { index: i, count: n };
        let path = dir.join(shard_name(s));
        let (h, entries) = read(&path)?;
        let bad = |why: String| PackError::Manifest {
            path: path.clone(),
            line: 1,
            why,
        };
        if h.shard != Some(i) || h.shards != n {
            return Err(bad(format!(
                "header says shard {:?} of {}, expected {s}",
                h.shard, h.shards
            )));
        }
        match &plan {
            None => plan = Some((h.plan.clone(), s)),
            Some((p, first)) if *p != h.plan => {
                return Err(bad(format!(
                    "shard {s} planned over a different file list than shard {first} (did the source change between runs?): rerun every shard, then merge"
                )))
            }
            Some(_) => {}
        }
        if entries.len() as u64 != h.files {
            return Err(bad(format!(
                "{} files listed, {} planned",
                entries.len(),
                h.files
            )));
        }
        for e in entries {
            if e.shard != i {
                return Err(bad(format!(
                    "{}: listed with shard {}",
                    e.rel.display(),
                    e.shard
                )));
            }
            let key = e.rel.as_os_str().as_bytes().to_vec();
            if let Some(prev) = all.insert(key, e) {
                return Err(bad(format!(
                    "{}: also listed by shard {}",
                    prev.rel.display(),
                    prev.shard
                )));
            }
        }
    }
    let entries: Vec<Entry> = all.into_values().collect();
    let mut fingerprints = BTreeMap::new();
    for e in &entries {
        if let (Some(fp), Some(true)) = (&e.fingerprint, e.needs_model) {
            *fingerprints.entry(fp.clone()).or_insert(0) += 1;
        }
    }
    let bytes = entries
        .iter()
        .filter(|e| e.kind != EntryKind::Symlink)
        .map(|e| e.size)
        .sum();
    let stored = entries.iter().map(|e| e.stored).sum();
    let header = Header::new(
        None,
        n,
        plan.map(|p| p.0).unwrap_or_default(),
        entries.len() as u64,
        bytes,
    );
    let path = dir.join(MERGED_NAME);
    write(&path, &header, &entries)?;
    Ok(MergeSummary {
        path,
        shards: n,
        files: entries.len() as u64,
        bytes,
        stored,
        fingerprints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &[u8], shard: u32) -> Entry {
        Entry {
            rel: PathBuf::from(OsString::from_vec(p.to_vec())),
            kind: EntryKind::Blob,
            size: 10,
            sha256: sha256_hex(p),
            crc32c: 0xdeadbeef,
            stored: 5,
            fingerprint: Some("00:11".into()),
            needs_model: Some(true),
            target: None,
            shard,
        }
    }

    #[test]
    fn entries_round_trip_including_non_utf8_paths() {
        let mut link = entry(b"l", 0);
        link.kind = EntryKind::Symlink;
        link.target = Some(PathBuf::from(OsString::from_vec(b"../\xff".to_vec())));
        for e in [entry(b"a/b.txt", 1), entry(b"odd\xfe\xffname", 0), link] {
            let s = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Entry>(&s).unwrap(), e, "{s}");
        }
        let s = serde_json::to_string(&entry(b"a/b.txt", 1)).unwrap();
        assert!(
            s.starts_with(r#"{"path":"a/b.txt","kind":"blob","size":10,"sha256":""#),
            "{s}"
        );
        assert!(s.contains(r#""crc32c":"deadbeef""#));
        for bad in [
            r#"{"path":"../x","kind":"plain","size":0,"sha256":"00","crc32c":"0","stored":0,"shard":0}"#,
            r#"{"kind":"plain"}"#,
        ] {
            assert!(serde_json::from_str::<Entry>(bad).is_err(), "{bad}");
        }
    }

    fn shard_manifest(dir: &Path, s: Shard, plan: &str, entries: &[Entry]) {
        let h = Header::new(Some(s.index), s.count, plan.into(), entries.len() as u64, 0);
        write(&dir.join(shard_name(s)), &h, entries).unwrap();
    }

    #[test]
    fn merge_checks_completeness_plans_and_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let (s0, s1) = (Shard { index: 0, count: 2 }, Shard { index: 1, count: 2 });
        assert!(matches!(merge(dir, None), Err(PackError::Incomplete(_))));
        shard_manifest(dir, s0, "p", &[entry(b"b", 0), entry(b"d", 0)]);
        let mut partial =
            PartialManifest::create(dir, s1, &Header::new(Some(1), 2, "p".into(), 1, 0)).unwrap();
        partial.append(&entry(b"a", 1)).unwrap();
        let e = merge(dir, None).unwrap_err().to_string();
        assert!(e.contains("1/2 unfinished"), "{e}");
        shard_manifest(dir, s1, "q", &[entry(b"a", 1)]);
        assert!(merge(dir, None)
            .unwrap_err()
            .to_string()
            .contains("different file list"));
        shard_manifest(dir, s1, "p", &[entry(b"b", 1)]);
        assert!(merge(dir, None)
            .unwrap_err()
            .to_string()
            .contains("also listed"));
        shard_manifest(dir, s1, "p", &[entry(b"a", 1), entry(b"c", 1)]);
        partial.remove().unwrap();
        let m = merge(dir, None).unwrap();
        assert_eq!((m.files, m.bytes, m.stored), (4, 40, 20));
        let (h, entries) = read(&m.path).unwrap();
        assert_eq!((h.shard, h.shards, h.files), (None, 2, 4));
        let names: Vec<_> = entries
            .iter()
            .map(|e| e.rel.to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        // Another shard count present: the merge needs to be told which.
        shard_manifest(dir, Shard { index: 0, count: 1 }, "p", &[entry(b"a", 0)]);
        assert!(matches!(merge(dir, None), Err(PackError::Usage(_))));
        assert_eq!(merge(dir, Some(1)).unwrap().files, 1);
    }

    #[test]
    fn torn_or_foreign_manifests_are_refused_with_a_line_number() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let h = line(&Header::new(Some(0), 1, "p".into(), 1, 0));
        std::fs::write(&p, format!("{h}{{\"path\":\"a\",\"ki")).unwrap();
        assert!(matches!(read(&p), Err(PackError::Manifest { line: 2, .. })));
        std::fs::write(&p, "{\"manifest\":\"other\",\"version\":1,\"shards\":1,\"plan\":\"\",\"files\":0,\"bytes\":0}\n").unwrap();
        assert!(matches!(read(&p), Err(PackError::Manifest { line: 1, .. })));
    }
}
