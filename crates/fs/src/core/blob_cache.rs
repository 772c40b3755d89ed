//! What the core keeps of compressed files: their original lengths (read from blob
//! headers), their decoded extents in an LRU bounded in bytes, and one decode gate per
//! blob, so concurrent readers of the same chunks wait for one decode instead of each
//! running the model.

use super::lock;
use super::overlay::Overlay;
use super::read_full_at;
use crate::error::{FsResult, IoContext};
use crate::store::backing;
use crate::store::codec::damaged;
use crate::store::codec::BlobLens;
use crate::store::Stat;
use crate::store::{Codec, OpenBlob};
use lru::LruCache;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Identifies an immutable blob file: (dev, ino, ctime). A replaced or rewritten file
/// gets a new key, so cached headers and extents never go stale.
pub(super) type BlobKey = (u64, u64, i64, i64);

/// The [`BlobKey`] of the file `st` describes.
pub(super) fn blob_key(st: &Stat) -> BlobKey {
    let (s, ns) = st.ctime();
    (st.dev(), st.ino(), s, ns)
}

/// Decoded extents of blobs, bounded in bytes.
struct ExtentCache {
    lru: LruCache<(BlobKey, usize), Arc<Vec<u8>>>,
    bytes: usize,
    cap: usize,
}

impl ExtentCache {
    fn insert(&mut self, k: (BlobKey, usize), v: Arc<Vec<u8>>) {
        self.bytes += v.len();
        if let Some(old) = self.lru.put(k, v) {
            self.bytes -= old.len();
        }
        while self.bytes > self.cap {
            match self.lru.pop_lru() {
                Some((_, v)) => self.bytes -= v.len(),
                None => break,
            }
        }
    }
}

/// Headers, decoded extents and decode gates of the blobs the core reads.
pub(super) struct BlobCache {
    extents: Mutex<ExtentCache>,
    headers: Mutex<HashMap<BlobKey, u64>>,
    gates: Mutex<HashMap<BlobKey, Arc<Mutex<()>>>>,
}

impl BlobCache {
    /// A cache holding at most `cap` bytes of decoded extents.
    pub fn new(cap: usize) -> BlobCache {
        BlobCache {
            extents: Mutex::new(ExtentCache {
                lru: LruCache::unbounded(),
                bytes: 0,
                cap,
            }),
            headers: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// Records the original length of a blob just written.
    pub fn set_len(&self, key: BlobKey, len: u64) {
        lock(&self.headers).insert(key, len);
    }

    /// The size of the compressed file `f` (described by `md`): its blob's original
    /// length, changed by the records of its overlay log if it has one; cached by
    /// [`BlobKey`] (every record changes the file's ctime). `name` is for errors.
    pub fn size(
        &self,
        codec: &dyn Codec,
        f: &File,
        md: &Stat,
        name: &dyn std::fmt::Display,
    ) -> FsResult<u64> {
        let key = blob_key(md);
        if let Some(&len) = lock(&self.headers).get(&key) {
            return Ok(len);
        }
        let lens = Self::lengths(codec, f, name)?;
        let len = if md.len() == lens.stored {
            lens.original
        } else {
            let logged = backing::is_logged_file(f).ctx(format!("{name}: fgetxattr"))?;
            Overlay::load(f, lens.stored, lens.original, logged)
                .map_err(|e| e.in_file(name))?
                .size()
        };
        self.set_len(key, len);
        Ok(len)
    }

    /// The lengths a blob's header records, reading more of it while it goes on.
    fn lengths(codec: &dyn Codec, f: &File, name: &dyn std::fmt::Display) -> FsResult<BlobLens> {
        let mut want = 4096usize;
        loop {
            let mut buf = vec![0u8; want];
            let n = read_full_at(f, &mut buf, 0).ctx(format!("{name}: reading blob header"))?;
            buf.truncate(n);
            match codec.lengths(&buf).map_err(|e| e.in_file(name))? {
                Some(lens) => return Ok(lens),
                None if n < want => {
                    return Err(damaged("blob header truncated").in_file(name));
                }
                None => want *= 4,
            }
        }
    }

    /// Reads `[offset, offset+size)` of a blob, decoding only the extents not cached.
    /// Pieces stored plain are read straight from the blob's file, outside the gate
    /// and the LRU.
    pub fn read(
        &self,
        blob: &dyn OpenBlob,
        key: BlobKey,
        offset: u64,
        size: u64,
    ) -> FsResult<Vec<u8>> {
        let len = blob.len();
        if offset >= len || size == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + size).min(len);
        let ext = blob.extents();
        let first = ext.partition_point(|e| e.0 + e.1 <= offset);
        let last = ext.partition_point(|e| e.0 < end);
        let decoded = (first..last).any(|i| !blob.is_hole(i) && !blob.is_plain(i));
        let parts = if decoded {
            self.decoded(blob, key, first..last)?
        } else {
            vec![None; last - first]
        };
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (i, p) in (first..last).zip(parts) {
            let (s, l) = ext[i];
            let from = offset.max(s) - s;
            let to = end.min(s + l) - s;
            if blob.is_hole(i) {
                out.resize(out.len() + (to - from) as usize, 0);
            } else if blob.is_plain(i) {
                blob.read_plain(i, from..to, &mut out)?;
            } else {
                let p = p.ok_or_else(|| damaged("extent missing"))?;
                out.extend_from_slice(&p[from as usize..to as usize]);
            }
        }
        Ok(out)
    }

    /// The decoded bytes of each piece in `range` that is neither a hole nor plain
    /// (`None` for those), from the LRU or decoded under the blob's gate.
    fn decoded(
        &self,
        blob: &dyn OpenBlob,
        key: BlobKey,
        range: Range<usize>,
    ) -> FsResult<Vec<Option<Arc<Vec<u8>>>>> {
        let (first, last) = (range.start, range.end);
        let ext = blob.extents();
        let skip = |i: usize| blob.is_hole(i) || blob.is_plain(i);
        let gate = lock(&self.gates).entry(key).or_default().clone();
        let one = lock(&gate);
        let mut parts: Vec<Option<Arc<Vec<u8>>>> = {
            let mut c = lock(&self.extents);
            (first..last)
                .map(|i| {
                    if skip(i) {
                        None
                    } else {
                        c.lru.get(&(key, i)).cloned()
                    }
                })
                .collect()
        };
        // Runs of missing pieces, each decoded in one call (its text chunks share a
        // lockstep batch); holes and plain pieces are never decoded.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        // Whether the last run may grow: no hole or plain piece since it ended.
        let mut open = false;
        for i in first..last {
            if skip(i) {
                open = false;
            } else if parts[i - first].is_none() {
                match runs.last_mut() {
                    Some(r) if open => r.1 = i,
                    _ => runs.push((i, i)),
                }
                open = true;
            }
        }
        for (lo, hi) in runs {
            log::debug!("decoding extents {lo}..={hi} of blob {key:?}");
            let bytes = blob.decode(lo..hi + 1)?;
            let pieces: Vec<Arc<Vec<u8>>> = if lo == hi && bytes.len() as u64 == ext[lo].1 {
                // One piece (a random read's case): cached as decoded, not copied.
                vec![Arc::new(bytes)]
            } else {
                let mut at = 0usize;
                (lo..=hi)
                    .map(|i| {
                        let l = ext[i].1 as usize;
                        let piece = bytes
                            .get(at..at + l)
                            .ok_or_else(|| damaged(format!("extent {i} decoded too short")))?;
                        at += l;
                        Ok(Arc::new(piece.to_vec()))
                    })
                    .collect::<FsResult<_>>()?
            };
            let mut c = lock(&self.extents);
            for (i, v) in (lo..=hi).zip(pieces) {
                parts[i - first] = Some(v.clone());
                c.insert((key, i), v);
            }
        }
        drop(one);
        drop(gate);
        let mut g = lock(&self.gates);
        if g.get(&key).is_some_and(|g| Arc::strong_count(g) == 1) {
            g.remove(&key);
        }
        Ok(parts)
    }
}
