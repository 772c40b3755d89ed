//! `unpack`: decode this shard's files of a packed tree into plain files.

use super::*;

/// Writes this shard's files of the packed tree `packed` as plain files into `out`.
pub fn unpack(
    packed: &Path,
    out: &Path,
    shard: Shard,
    engine: &LazyEngine,
) -> Result<Report, PackError> {
    let root = existing_dir(packed)?;
    let _lock = lock_shared(&root)?;
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
            let codec = |source: nacrithfs_engine::Error| PackError::Codec {
                path: bp.clone(),
                source,
            };
            if !is_blob_file(&f).map_err(PackError::io(&bp))? {
                report.bytes += data.len() as u64;
                if same_plain(&op, data.len() as u64, crc32c::crc32c(&data))? {
                    return Ok(false);
                }
                let tmp = staging.file(&data, &f, false)?;
                staging.commit(tmp, &op)?;
                return Ok(true);
            }
            let blob = Blob::parse(&data).map_err(|e| codec(e.into()))?;
            report.bytes += blob.header.original_len;
            if same_plain(&op, blob.header.original_len, blob.header.original_crc)? {
                return Ok(false);
            }
            let plain = engine
                .decoder(&blob)?
                .decompress(&data, None)
                .map_err(codec)?;
            drop(blob);
            let tmp = staging.file(&plain, &f, false)?;
            staging.commit(tmp, &op)?;
            Ok(true)
        },
    );
    staging.remove_dir_if_empty();
    r?;
    report.fingerprint = engine.loaded().map(|e| e.model().fingerprint());
    Ok(report)
}
