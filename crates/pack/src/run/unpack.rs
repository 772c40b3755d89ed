//! `unpack`: decode this shard's files of a packed tree into plain files.

use super::*;
use std::sync::Arc;

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
            let f = Arc::new(File::open(&bp).map_err(PackError::io(&bp))?);
            let stored = f.metadata().map_err(PackError::io(&bp))?.len();
            report.stored += stored;
            if !is_blob_file(&f).map_err(PackError::io(&bp))? {
                report.bytes += stored;
                if same_plain(&op, stored, || Ok(stream::digest(&f, &bp)?.crc))? {
                    return Ok(false);
                }
                let mut tmp = staging.empty()?;
                stream::copy_plain(&f, &bp, &mut tmp)?;
                staging.seal(&mut tmp, &f, false)?;
                staging.commit(tmp, &op)?;
                return Ok(true);
            }
            let header = stream::blob_header(&f, &bp)?;
            let h = &header.0.header;
            report.bytes += h.original_len;
            if same_plain(&op, h.original_len, || Ok(h.original_crc))? {
                return Ok(false);
            }
            let mut tmp = staging.empty()?;
            stream::decode_into(engine, &f, &bp, &header, &mut tmp)?;
            staging.seal(&mut tmp, &f, false)?;
            staging.commit(tmp, &op)?;
            Ok(true)
        },
    );
    staging.remove_dir_if_empty();
    r?;
    report.fingerprint = engine.loaded().map(|e| e.model().fingerprint());
    Ok(report)
}
