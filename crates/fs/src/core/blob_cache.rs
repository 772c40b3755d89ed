//! What the core keeps of compressed files: their original lengths (read from blob
//! headers) and their decoded pieces, in an LRU bounded in bytes. A piece being
//! decoded is claimed, so a second reader of it waits for that decode instead of
//! running the model again, while readers of other pieces go on.
//!
//! A reader that reads a blob in order gets the pieces after its read decoded ahead,
//! in the background ([`BlobCache::read`]): a sequential `cat` of a file of many text
//! chunks has them decoded in full lockstep batches, and each read finds its chunks
//! decoded or being decoded instead of starting a decode of its own.

use super::lock;
use super::overlay::Overlay;
use super::read_full_at;
use crate::error::{FsResult, IoContext};
use crate::store::backing;
use crate::store::codec::BlobLens;
use crate::store::codec::{damaged, within};
use crate::store::Stat;
use crate::store::{Codec, OpenBlob};
use lru::LruCache;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Identifies an immutable blob file: (dev, ino, ctime). A replaced or rewritten file
/// gets a new key, so cached headers and extents never go stale.
pub(super) type BlobKey = (u64, u64, i64, i64);

/// The [`BlobKey`] of the file `st` describes.
pub(super) fn blob_key(st: &Stat) -> BlobKey {
    let (s, ns) = st.ctime();
    (st.dev(), st.ino(), s, ns)
}

/// Identifies a blob's decoded pieces: (dev, ino) of its file and the blob's
/// [`OpenBlob::identity`]. Unlike a [`BlobKey`] it stays when records are logged after
/// the blob (its pieces stay what they were), and a blob written at a reused inode
/// gets another.
pub(super) type BlobId = (u64, u64, u64);

/// The [`BlobId`] of `blob`, opened from the file `st` describes.
pub(super) fn blob_id(st: &Stat, blob: &dyn OpenBlob) -> BlobId {
    (st.dev(), st.ino(), blob.identity())
}

/// Decoded pieces, bounded in bytes, and the pieces being decoded.
struct State {
    lru: LruCache<(BlobId, usize), Arc<Vec<u8>>>,
    bytes: usize,
    cap: usize,
    /// Pieces a decode has claimed (see [`Claim`]), with the flag a reader sets when it
    /// waits for a read-ahead's pieces (none for a read's own decode).
    claimed: HashMap<(BlobId, usize), Option<Arc<AtomicBool>>>,
}

impl State {
    fn insert(&mut self, k: (BlobId, usize), v: Arc<Vec<u8>>) {
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

/// What a read-ahead thread shares with the reads.
struct Shared {
    state: Mutex<State>,
    /// Woken whenever a claim ends.
    landed: Condvar,
    /// Pieces decoded ahead of the reads.
    read_ahead: AtomicU64,
}

/// Pieces of one blob that one decode has taken on: a reader of them waits for it.
/// Dropped, decoded or not, it gives them up and wakes the waiters (who decode a
/// piece again themselves if it did not land).
struct Claim {
    shared: Arc<Shared>,
    key: BlobId,
    pieces: Vec<usize>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        for &i in &self.pieces {
            st.claimed.remove(&(self.key, i));
        }
        drop(st);
        self.shared.landed.notify_all();
    }
}

/// Headers and decoded pieces of the blobs the core reads.
pub(super) struct BlobCache {
    shared: Arc<Shared>,
    headers: Mutex<HashMap<BlobKey, u64>>,
    /// Where the last read of each blob ended: a read that starts there (or at 0)
    /// reads in order.
    next: Mutex<HashMap<BlobId, u64>>,
    /// Pieces that need the model decoded ahead of a reader that reads in order.
    ahead: usize,
}

/// Read positions remembered at most (one per blob being read); past this the map
/// starts afresh, which costs no more than a read-ahead.
const MAX_READERS: usize = 4096;

impl BlobCache {
    /// A cache holding at most `cap` bytes of decoded pieces, decoding up to `ahead`
    /// pieces that need the model ahead of a reader that reads in order (0: none).
    pub fn new(cap: usize, ahead: usize) -> BlobCache {
        BlobCache {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    cap,
                    claimed: HashMap::new(),
                }),
                landed: Condvar::new(),
                read_ahead: AtomicU64::new(0),
            }),
            headers: Mutex::new(HashMap::new()),
            next: Mutex::new(HashMap::new()),
            ahead,
        }
    }

    /// Pieces decoded ahead of the reads so far, for `status`.
    pub fn read_ahead_count(&self) -> u64 {
        self.shared.read_ahead.load(Ordering::Relaxed)
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

    /// Reads `[offset, offset+size)` of a blob, decoding only the pieces not cached.
    /// Pieces stored plain are read straight from the blob's file, outside the LRU.
    /// With `reader` (a user's read, not the compressor's), a read that starts where
    /// the last read of this blob ended then starts a decode of the pieces after it,
    /// in the background (see [`BlobCache::new`]).
    pub fn read(
        &self,
        blob: &Arc<dyn OpenBlob>,
        key: BlobId,
        offset: u64,
        size: u64,
        reader: bool,
    ) -> FsResult<Vec<u8>> {
        let len = blob.len();
        if offset >= len || size == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + size).min(len);
        let in_order = reader && self.ahead > 0 && self.in_order(key, offset, end);
        let ext = blob.extents();
        let first = ext.partition_point(|e| e.0 + e.1 <= offset);
        let last = ext.partition_point(|e| e.0 < end);
        // A read of holes and raw frames only (a random read of incompressible data)
        // takes no lock: none of its pieces is ever decoded.
        let decoded = (first..last).any(|i| !blob.is_hole(i) && !blob.is_plain(i));
        let parts = if decoded {
            self.shared.pieces(&**blob, key, first..last)?
        } else {
            vec![None; last - first]
        };
        if in_order {
            self.read_ahead(blob, key, last);
        }
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

    /// Moves the decoded pieces of blob `old` that the blob `new`, made from `old` and
    /// a change to it, holds unchanged: every piece of `new` that lies within `clean`
    /// (the bytes the change left as `old`'s, which `new` holds at the same offsets)
    /// and within one cached piece of `old` is cached for `new`. So a read or change
    /// after a compression again does not decode what was decoded before it (the
    /// bytes are the same; only the blob's key changed).
    pub fn carry_over(
        &self,
        old: (&dyn OpenBlob, BlobId),
        new: (&dyn OpenBlob, BlobId),
        clean: &[Range<u64>],
    ) {
        let ((old, old_key), (new, new_key)) = (old, new);
        let (oext, next) = (old.extents(), new.extents());
        // (new piece, old piece, where in the old piece), found outside the lock.
        let moves: Vec<(usize, usize, u64)> = (0..next.len())
            .filter(|&j| !new.is_hole(j) && !new.is_plain(j))
            .filter_map(|j| {
                let (s, l) = next[j];
                let i = oext.partition_point(|e| e.0 + e.1 <= s);
                let (os, ol) = *oext.get(i)?;
                (l > 0 && os <= s && s + l <= os + ol && within(clean, s, s + l)).then_some((
                    j,
                    i,
                    s - os,
                ))
            })
            .collect();
        if moves.is_empty() {
            return;
        }
        let mut st = lock(&self.shared.state);
        let mut moved = 0usize;
        for (j, i, at) in moves {
            let Some(v) = st.lru.peek(&(old_key, i)).cloned() else {
                continue;
            };
            let l = next[j].1 as usize;
            let piece = if at == 0 && v.len() == l {
                v
            } else {
                match v.get(at as usize..at as usize + l) {
                    Some(b) => Arc::new(b.to_vec()),
                    None => continue,
                }
            };
            st.insert((new_key, j), piece);
            moved += 1;
        }
        // The old blob is gone: its pieces would only take room.
        for i in 0..oext.len() {
            if let Some(v) = st.lru.pop(&(old_key, i)) {
                st.bytes -= v.len();
            }
        }
        drop(st);
        log::debug!("{moved} decoded pieces kept for blob {new_key:?} from {old_key:?}");
    }

    /// Caches the pieces of `blob` that need the model, from the first, as `read`
    /// (offset, length) gives them: the bytes of the file that was just compressed
    /// into `blob` (`None`: not this piece). A piece is cached only if the blob's own
    /// checksum says it is that piece ([`OpenBlob::is_original`]), and only up to half
    /// the cache, so a large file does not push out everything else. Reading a file
    /// back after its compression then does not run the model for what was just
    /// coded, at about 1 KB/s. Returns the pieces cached.
    pub fn seed(
        &self,
        blob: &dyn OpenBlob,
        key: BlobId,
        mut read: impl FnMut(u64, u64) -> Option<Vec<u8>>,
    ) -> usize {
        let budget = lock(&self.shared.state).cap / 2;
        let (mut bytes, mut seeded) = (0usize, 0usize);
        for (i, &(offset, len)) in blob.extents().iter().enumerate() {
            if !blob.needs_model(i) {
                continue;
            }
            let Ok(n) = usize::try_from(len) else { break };
            if bytes + n > budget {
                break;
            }
            let Some(v) = read(offset, len) else { continue };
            if !blob.is_original(i, &v) {
                // The file is not what was compressed (it could not change meanwhile
                // through the mount; something wrote the backing file itself).
                log::debug!("piece {i} of blob {key:?}: the file's bytes are not its own");
                break;
            }
            let mut st = lock(&self.shared.state);
            if !st.lru.contains(&(key, i)) && !st.claimed.contains_key(&(key, i)) {
                st.insert((key, i), Arc::new(v));
                seeded += 1;
            }
            bytes += n;
        }
        seeded
    }

    /// Whether a read of `offset..end` of blob `key` continues the last one (or starts
    /// the file); remembers where it ends.
    fn in_order(&self, key: BlobId, offset: u64, end: u64) -> bool {
        let mut next = lock(&self.next);
        let was = next.get(&key).copied();
        if was.is_none() && next.len() >= MAX_READERS {
            next.clear();
        }
        next.insert(key, end);
        offset == 0 || was == Some(offset)
    }

    /// Claims the pieces that need the model among the `ahead` from piece `from` that
    /// are neither cached nor claimed (at most a quarter of the cache's bytes of
    /// them), and decodes them in a thread of its own at background priority. They
    /// are claimed before the read returns, so the next read waits for them.
    fn read_ahead(&self, blob: &Arc<dyn OpenBlob>, key: BlobId, from: usize) {
        let ext = blob.extents();
        let to = from.saturating_add(self.ahead).min(ext.len());
        // Found outside the lock: a binary file's reads in order take it never.
        let slow: Vec<usize> = (from..to).filter(|&i| blob.needs_model(i)).collect();
        if slow.is_empty() {
            return;
        }
        let wanted = Arc::new(AtomicBool::new(false));
        let claim = {
            let mut st = lock(&self.shared.state);
            let budget = (st.cap / 4) as u64;
            let mut bytes = 0u64;
            let todo: Vec<usize> = slow
                .into_iter()
                .filter(|&i| !st.lru.contains(&(key, i)) && !st.claimed.contains_key(&(key, i)))
                .take_while(|&i| {
                    bytes += ext[i].1;
                    bytes <= budget
                })
                .collect();
            if todo.is_empty() {
                return;
            }
            self.shared.claim(&mut st, key, todo, Some(wanted.clone()))
        };
        let (shared, blob) = (self.shared.clone(), blob.clone());
        let spawned = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || {
                for (lo, hi) in runs(&claim.pieces) {
                    let r = blob
                        .decode_ahead(lo..hi + 1, wanted.clone())
                        .and_then(|bytes| shared.store(&*blob, key, lo, hi, bytes));
                    if let Err(e) = r {
                        // A read of the piece decodes it again, and reports.
                        log::debug!("read-ahead of blob {key:?}: {}", e.report());
                        return;
                    }
                    shared
                        .read_ahead
                        .fetch_add((hi + 1 - lo) as u64, Ordering::Relaxed);
                }
                drop(claim);
            });
        if let Err(e) = spawned {
            log::warn!("read-ahead not started: {e}");
        }
    }
}

/// Runs of consecutive numbers in `pieces` (sorted), as (first, last).
fn runs(pieces: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for &i in pieces {
        match out.last_mut() {
            Some(r) if r.1 + 1 == i => r.1 = i,
            _ => out.push((i, i)),
        }
    }
    out
}

/// Where a piece a read needs is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Have {
    /// A hole or a plain piece: never decoded.
    Skip,
    /// Decoded (cached, or by this read).
    Cached,
    /// Claimed by another decode.
    Claimed,
    /// To be decoded by this read.
    Missing,
}

impl Shared {
    /// Claims `pieces` of blob `key` in `st`; `wanted` for a read-ahead's.
    fn claim(
        self: &Arc<Self>,
        st: &mut State,
        key: BlobId,
        pieces: Vec<usize>,
        wanted: Option<Arc<AtomicBool>>,
    ) -> Claim {
        for &i in &pieces {
            st.claimed.insert((key, i), wanted.clone());
        }
        Claim {
            shared: self.clone(),
            key,
            pieces,
        }
    }

    /// The decoded bytes of each piece in `range` that is neither a hole nor plain
    /// (`None` for those): from the LRU, from another decode of them (waited for), or
    /// decoded here.
    fn pieces(
        self: &Arc<Self>,
        blob: &dyn OpenBlob,
        key: BlobId,
        range: Range<usize>,
    ) -> FsResult<Vec<Option<Arc<Vec<u8>>>>> {
        let (first, last) = (range.start, range.end);
        let mut parts: Vec<Option<Arc<Vec<u8>>>> = vec![None; last - first];
        let mut st = lock(&self.state);
        loop {
            let have: Vec<Have> = (first..last)
                .map(|i| {
                    if blob.is_hole(i) || blob.is_plain(i) {
                        Have::Skip
                    } else if parts[i - first].is_some() {
                        Have::Cached
                    } else if let Some(v) = st.lru.get(&(key, i)) {
                        parts[i - first] = Some(v.clone());
                        Have::Cached
                    } else if let Some(wanted) = st.claimed.get(&(key, i)) {
                        // A read-ahead's pieces are waited for now: they are no
                        // longer background work.
                        if let Some(w) = wanted {
                            w.store(true, Ordering::Relaxed);
                        }
                        Have::Claimed
                    } else {
                        Have::Missing
                    }
                })
                .collect();
            // Runs of missing pieces, each decoded in one call (its text chunks share
            // a lockstep batch; a cached piece inside a run is decoded with it rather
            // than splitting the batch); holes, plain and claimed pieces end a run.
            let mut decode: Vec<(usize, usize)> = Vec::new();
            let mut open = false;
            for (i, h) in (first..last).zip(&have) {
                match h {
                    Have::Skip | Have::Claimed => open = false,
                    Have::Cached => {}
                    Have::Missing => {
                        match decode.last_mut() {
                            Some(r) if open => r.1 = i,
                            _ => decode.push((i, i)),
                        }
                        open = true;
                    }
                }
            }
            if !decode.is_empty() {
                let mine = (first..last)
                    .zip(&have)
                    .filter(|(_, h)| **h == Have::Missing)
                    .map(|(i, _)| i)
                    .collect();
                let claim = self.claim(&mut st, key, mine, None);
                drop(st);
                for (lo, hi) in decode {
                    log::debug!("decoding extents {lo}..={hi} of blob {key:?}");
                    let bytes = blob.decode(lo..hi + 1)?;
                    for (i, v) in (lo..=hi).zip(self.store(blob, key, lo, hi, bytes)?) {
                        parts[i - first] = Some(v);
                    }
                }
                drop(claim);
                st = lock(&self.state);
            } else if have.contains(&Have::Claimed) {
                st = self.landed.wait(st).unwrap_or_else(PoisonError::into_inner);
            } else {
                return Ok(parts);
            }
        }
    }

    /// Cuts the decoded bytes of pieces `lo..=hi` into pieces, caches them and returns
    /// them.
    fn store(
        &self,
        blob: &dyn OpenBlob,
        key: BlobId,
        lo: usize,
        hi: usize,
        bytes: Vec<u8>,
    ) -> FsResult<Vec<Arc<Vec<u8>>>> {
        let ext = blob.extents();
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
        let mut st = lock(&self.state);
        for (i, v) in (lo..=hi).zip(&pieces) {
            st.insert((key, i), v.clone());
        }
        Ok(pieces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::StandInCodec;
    use std::io::Write;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// A stand-in blob that counts the pieces it decodes, in the foreground and ahead
    /// of the reads, and can be made slow or failing ahead.
    struct Counting {
        inner: Arc<dyn OpenBlob>,
        now: AtomicU64,
        ahead: AtomicU64,
        /// Read-aheads a reader was waiting for by the time they decoded.
        wanted: AtomicU64,
        slow: Duration,
        fail_ahead: AtomicBool,
    }

    impl OpenBlob for Counting {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn stored_len(&self) -> u64 {
            self.inner.stored_len()
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn identity(&self) -> u64 {
            self.inner.identity()
        }
        fn extents(&self) -> &[(u64, u64)] {
            self.inner.extents()
        }
        fn decode(&self, range: Range<usize>) -> FsResult<Vec<u8>> {
            std::thread::sleep(self.slow);
            self.now.fetch_add(range.len() as u64, Ordering::SeqCst);
            self.inner.decode(range)
        }
        fn decode_ahead(&self, range: Range<usize>, wanted: Arc<AtomicBool>) -> FsResult<Vec<u8>> {
            std::thread::sleep(self.slow);
            if wanted.load(Ordering::SeqCst) {
                self.wanted.fetch_add(1, Ordering::SeqCst);
            }
            if self.fail_ahead.load(Ordering::SeqCst) {
                return Err(damaged("refused ahead"));
            }
            self.ahead.fetch_add(range.len() as u64, Ordering::SeqCst);
            self.inner.decode(range)
        }
        fn needs_model(&self, _i: usize) -> bool {
            true
        }
        fn is_original(&self, i: usize, bytes: &[u8]) -> bool {
            self.inner.decode(i..i + 1).is_ok_and(|d| d == bytes)
        }
    }

    /// 100 bytes in pieces of 10.
    fn blob(slow: Duration) -> (Vec<u8>, Arc<Counting>) {
        blob_of((0..100u8).collect(), 10, slow)
    }

    /// `data` in pieces of `extent`.
    fn blob_of(data: Vec<u8>, extent: u64, slow: Duration) -> (Vec<u8>, Arc<Counting>) {
        let codec = StandInCodec::new(extent);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&codec.blob_of(&data).unwrap()).unwrap();
        let inner = crate::store::Codec::open(&codec, Arc::new(f)).unwrap();
        let c = Counting {
            inner,
            now: AtomicU64::new(0),
            ahead: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            slow,
            fail_ahead: AtomicBool::new(false),
        };
        (data, Arc::new(c))
    }

    const KEY: BlobId = (1, 2, 3);

    fn read_all(cache: &BlobCache, b: &Arc<Counting>, step: u64, reader: bool) -> Vec<u8> {
        let dynb: Arc<dyn OpenBlob> = b.clone();
        let mut out = Vec::new();
        let mut at = 0;
        while at < dynb.len() {
            out.extend(cache.read(&dynb, KEY, at, step, reader).unwrap());
            at += step;
        }
        out
    }

    /// The bytes of `data` at (offset, length), as the plaintext file gives them.
    fn from(data: &[u8]) -> impl FnMut(u64, u64) -> Option<Vec<u8>> + '_ {
        |off, len| {
            data.get(off as usize..(off + len) as usize)
                .map(<[u8]>::to_vec)
        }
    }

    #[test]
    fn a_blob_seeded_from_its_plaintext_reads_back_without_decoding() {
        let (data, b) = blob(Duration::ZERO);
        let cache = BlobCache::new(1 << 20, 0);
        assert_eq!(cache.seed(&*b, KEY, from(&data)), 10);
        assert_eq!(read_all(&cache, &b, 7, true), data);
        assert_eq!(
            b.now.load(Ordering::SeqCst),
            0,
            "a seeded piece was decoded"
        );
    }

    #[test]
    fn seeding_stops_at_bytes_that_are_not_the_piece_and_at_half_the_cache() {
        let (data, b) = blob(Duration::ZERO);
        // The file changed under the blob at byte 35: pieces 0 to 2 are cached, and
        // piece 3 and the rest are decoded when read.
        let mut changed = data.clone();
        changed[35] ^= 1;
        let cache = BlobCache::new(1 << 20, 0);
        assert_eq!(cache.seed(&*b, KEY, from(&changed)), 3);
        assert_eq!(read_all(&cache, &b, 10, false), data);
        assert_eq!(b.now.load(Ordering::SeqCst), 7);
        // A cache of 50 bytes takes 25 of them: two pieces.
        let (data, b) = blob(Duration::ZERO);
        let cache = BlobCache::new(50, 0);
        assert_eq!(cache.seed(&*b, KEY, from(&data)), 2);
        // A file shorter than its blob says gives nothing past its end.
        let (data, b) = blob(Duration::ZERO);
        let cache = BlobCache::new(1 << 20, 0);
        assert_eq!(cache.seed(&*b, KEY, from(&data[..25])), 2);
    }

    #[test]
    fn a_reader_in_order_decodes_every_piece_once_most_of_them_ahead() {
        let (data, b) = blob(Duration::from_millis(20));
        let cache = BlobCache::new(1 << 20, 3);
        assert_eq!(read_all(&cache, &b, 10, true), data);
        // The first read decodes its piece; every later one finds its piece claimed
        // by a read-ahead (claimed before the read before it returned) and waits.
        assert_eq!(b.now.load(Ordering::SeqCst), 1);
        assert_eq!(b.ahead.load(Ordering::SeqCst), 9);
        assert_eq!(cache.read_ahead_count(), 9);
        // A reader waited for most of them (each read comes right after the last, and
        // the decodes take 20 ms): those were made foreground work.
        assert!(b.wanted.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn reads_out_of_order_and_the_compressors_read_nothing_ahead() {
        let (data, b) = blob(Duration::ZERO);
        let cache = BlobCache::new(1 << 20, 3);
        let dynb: Arc<dyn OpenBlob> = b.clone();
        for at in [50, 30, 70, 10] {
            let got = cache.read(&dynb, KEY, at, 10, true).unwrap();
            assert_eq!(got, &data[at as usize..at as usize + 10]);
        }
        assert_eq!(read_all(&cache, &b, 10, false), data);
        assert_eq!(b.ahead.load(Ordering::SeqCst), 0);
        assert_eq!(b.now.load(Ordering::SeqCst), 10);
    }

    #[test]
    fn a_failed_read_ahead_leaves_the_reads_to_decode_their_pieces() {
        let (data, b) = blob(Duration::from_millis(5));
        b.fail_ahead.store(true, Ordering::SeqCst);
        let cache = BlobCache::new(1 << 20, 3);
        assert_eq!(read_all(&cache, &b, 10, true), data);
        assert_eq!(b.now.load(Ordering::SeqCst), 10);
        assert_eq!(cache.read_ahead_count(), 0);
    }

    #[test]
    fn concurrent_readers_of_a_piece_decode_it_once() {
        let (data, b) = blob(Duration::from_millis(50));
        let cache = BlobCache::new(1 << 20, 0);
        let dynb: Arc<dyn OpenBlob> = b.clone();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| cache.read(&dynb, KEY, 40, 15, true).unwrap()))
                .collect();
            for h in hs {
                assert_eq!(h.join().unwrap(), &data[40..55]);
            }
        });
        assert_eq!(b.now.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_blob_made_from_another_keeps_the_pieces_decoded_where_it_holds_the_same_bytes() {
        let (old_data, old) = blob(Duration::ZERO);
        let cache = BlobCache::new(1 << 20, 0);
        assert_eq!(read_all(&cache, &old, 10, false), old_data);
        // A change: bytes 42..45 written, 15 appended. The new blob is cut in pieces
        // of 5, so pieces of the old one are split.
        let mut data = old_data.clone();
        data[42..45].copy_from_slice(b"new");
        data.extend(100..115u8);
        let (data, new) = blob_of(data, 5, Duration::ZERO);
        let new_key: BlobId = (1, 2, 4);
        let clean = [0..42, 45..100];
        cache.carry_over((&*old, KEY), (&*new, new_key), &clean);
        let dynb: Arc<dyn OpenBlob> = new.clone();
        let got: Vec<u8> = (0..23)
            .flat_map(|i| cache.read(&dynb, new_key, i * 5, 5, false).unwrap())
            .collect();
        assert_eq!(got, data);
        // Decoded again: 40..45 (the change) and 100..115 (the append), 4 pieces.
        assert_eq!(new.now.load(Ordering::SeqCst), 4);
        // The old blob's pieces are dropped: they would only take room.
        assert_eq!(lock(&cache.shared.state).lru.len(), 23);
    }

    #[test]
    fn another_blob_at_the_same_inode_never_gets_the_first_ones_pieces() {
        let (a_data, a) = blob(Duration::ZERO);
        let (b_data, b) = blob_of((100..200u8).collect(), 10, Duration::ZERO);
        assert_ne!(a.identity(), b.identity());
        let st = Stat::of(&tempfile::tempfile().unwrap()).unwrap();
        let (ka, kb) = (blob_id(&st, &*a), blob_id(&st, &*b));
        assert_ne!(ka, kb, "same inode, another blob, another id");
        let cache = BlobCache::new(1 << 20, 0);
        let (da, db): (Arc<dyn OpenBlob>, Arc<dyn OpenBlob>) = (a.clone(), b.clone());
        assert_eq!(cache.read(&da, ka, 0, 100, false).unwrap(), a_data);
        assert_eq!(cache.read(&db, kb, 0, 100, false).unwrap(), b_data);
    }

    #[test]
    fn the_read_ahead_stops_at_a_quarter_of_the_cache() {
        let (data, b) = blob(Duration::ZERO);
        // 80 bytes of cache: a read-ahead takes at most 20 bytes (2 pieces).
        let cache = BlobCache::new(80, 16);
        let dynb: Arc<dyn OpenBlob> = b.clone();
        assert_eq!(cache.read(&dynb, KEY, 0, 10, true).unwrap(), &data[..10]);
        // The read-ahead runs in its thread: wait for it.
        for _ in 0..200 {
            if cache.read_ahead_count() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(cache.read_ahead_count(), 2);
    }
}
