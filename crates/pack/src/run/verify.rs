//! `verify`: decode this shard's blobs and check them against their checksums and the
//! merged manifest.

use super::*;
use std::sync::Arc;

/// Decodes this shard's blobs of the packed tree and checks them: every checksum in the
/// blob and, with a manifest, size and SHA-256 against it, plus files it lists that
/// are missing.
pub fn verify(opts: &VerifyOptions, engine: &LazyEngine) -> Result<Report, PackError> {
    let shard = opts.shard;
    let root = existing_dir(&opts.dest)?;
    let _lock = lock_shared(&root)?;
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
            let f = Arc::new(File::open(&path).map_err(PackError::io(&path))?);
            let blob = is_blob_file(&f).map_err(PackError::io(&path))?;
            let plain = if blob {
                let header = stream::blob_header(&f, &path)?;
                let mut d = stream::Digest::new();
                stream::decode_blob(engine, &f, &path, &header, &mut d)?;
                d
            } else {
                stream::digest(&f, &path)?
            };
            report.bytes += plain.len;
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
                let len = plain.len;
                if e.size != len || e.sha256 != plain.sha256_hex() {
                    return Err(mismatch(format!(
                        "decodes to {len} bytes that differ from the manifest's {} bytes",
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
