//! Writes into a compressed file without decoding it: an overlay log after the blob.
//!
//! The first write, append or truncate of a blob no longer turns it back into
//! plaintext. The blob's bytes stay as they are, and each change is appended to the
//! same backing file as a record (`docs/FORMAT.md`, "Overlay log"): the bytes written
//! and where, or a new size. Reads take written ranges from the log and the rest from
//! the blob, so an append to a compressed log file returns at plaintext speed and a
//! read of the untouched part decodes only what it touches. When the last writer
//! closes the file, the compressor builds a new blob that copies the untouched text
//! chunks as they are (`Codec::recompress`) and renames it over the file.
//!
//! Why in the same file: the log travels with the file through renames, is removed
//! with it, is synced by its `fsync`, and a crash leaves either the whole record or a
//! torn last record, which the CRC finds and the next write cuts off. Before the
//! first record the file is marked `nc06+log` and synced, so recovery at the next
//! mount finds logged files from their markers and compresses them.

use super::read_full_at;
use crate::error::{FsError, FsResult, IoContext};
use crate::store::backing::{STATE_BLOB_LOG, STATE_XATTR};
use crate::store::codec::damaged;
use crate::store::xattr::fset_xattr;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// Every record starts with these bytes.
const MAGIC: [u8; 4] = *b"NCLG";
/// Record header: magic, kind, offset, length, CRC.
const HEAD: usize = 4 + 1 + 8 + 8 + 4;
/// `len` bytes written at `offset`; the data follows the header.
const KIND_WRITE: u8 = 1;
/// The file's size becomes `offset`.
const KIND_SIZE: u8 = 2;
/// `len` bytes at `offset` read as zeros (a punched hole or a zeroed range); no data
/// follows.
const KIND_ZERO: u8 = 3;

/// Past this many written ranges a log is folded into plaintext: the range map is
/// held in memory (about 80 bytes a range).
const MAX_RANGES: usize = 1 << 16;
/// A log longer than this beyond twice the file's size is folded: overwritten data
/// would otherwise pile up on disk.
const MAX_SLACK: u64 = 64 << 20;

/// One piece of a read: from the log, from the blob, or zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    /// `len` bytes of the backing file at `at`.
    Log { at: u64, len: u64 },
    /// The blob's original bytes `off..off+len`.
    Blob { off: u64, len: u64 },
    /// Zeros: a file extended past what the blob still shows, or a range punched or
    /// zeroed by `fallocate(2)`.
    Zero { len: u64 },
}

/// Where the bytes of a written range come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// The backing file, from this offset on.
    Log(u64),
    /// Zeros: a hole punched or a range zeroed.
    Zero,
}

impl Src {
    /// The source of the same range `n` bytes further on.
    fn skip(self, n: u64) -> Src {
        match self {
            Src::Log(at) => Src::Log(at + n),
            Src::Zero => Src::Zero,
        }
    }
}

/// What a compressed file's log has changed, replayed from its records.
#[derive(Clone, Debug)]
pub(super) struct Overlay {
    /// Where the blob ends in the backing file and the log begins.
    blob_end: u64,
    /// Where the next record goes: after the last whole record.
    end: u64,
    /// The file's size as the mount shows it.
    size: u64,
    /// Blob bytes from here on are hidden (a truncate cut them off; a later
    /// extension reads as zeros there).
    blob_limit: u64,
    /// Written ranges: start -> (length, where its bytes come from). Disjoint; a
    /// later write replaces what it covers.
    map: BTreeMap<u64, (u64, Src)>,
    /// The file is marked as carrying a log (set, and synced, before the first record).
    marked: bool,
    /// Bytes after `end` that are not a whole record (a write cut short): cut off
    /// before the next record is appended.
    torn: bool,
}

impl Overlay {
    /// The overlay of a blob whose stored bytes end at `blob_end` and whose original
    /// length is `original_len`, replaying the records in `file` after it. With
    /// `marked` false no record may follow the blob (bytes there are damage).
    pub fn load(file: &File, blob_end: u64, original_len: u64, marked: bool) -> FsResult<Overlay> {
        let file_len = file.metadata().ctx("fstat")?.len();
        let mut o = Overlay {
            blob_end,
            end: blob_end,
            size: original_len,
            blob_limit: original_len,
            map: BTreeMap::new(),
            marked,
            torn: false,
        };
        if file_len < blob_end {
            return Err(damaged("blob truncated"));
        }
        if !marked {
            if file_len > blob_end {
                return Err(damaged(format!(
                    "{} bytes after the blob, and the file is not marked as having a log",
                    file_len - blob_end
                )));
            }
            return Ok(o);
        }
        let mut head = [0u8; HEAD];
        while o.end < file_len {
            // A crash leaves at most the last record short (a prefix of it, or its
            // data unwritten): that is a torn tail. A bad record with more after it is
            // damage, and the file's reads fail rather than lose the later records.
            let n = read_full_at(file, &mut head, o.end).ctx("reading the overlay log")?;
            if n < HEAD {
                break;
            }
            let Some((kind, off, len)) = parse_head(&head) else {
                if all_zero(file, o.end, file_len)? {
                    break;
                }
                return Err(damaged(format!("overlay log: no record at byte {}", o.end)));
            };
            let data_len = if kind == KIND_WRITE { len } else { 0 };
            let rec_end = o.end + HEAD as u64 + data_len;
            if rec_end > file_len {
                break;
            }
            let mut data = vec![0u8; data_len as usize];
            file.read_exact_at(&mut data, o.end + HEAD as u64)
                .ctx("reading the overlay log")?;
            let want = u32::from_le_bytes(head[HEAD - 4..].try_into().unwrap_or_default());
            if crc_of(&head, &data) != want {
                if rec_end == file_len {
                    break;
                }
                return Err(damaged(format!(
                    "overlay log: the record at byte {} fails its CRC",
                    o.end
                )));
            }
            let at = o.end + HEAD as u64;
            o.end = at + data_len;
            match kind {
                KIND_WRITE => o.apply(off, len, Src::Log(at)),
                KIND_ZERO => o.apply(off, len, Src::Zero),
                _ => o.apply_size(off),
            }
        }
        if o.end < file_len {
            log::debug!(
                "overlay log: {} bytes of a torn last record ignored",
                file_len - o.end
            );
            o.torn = true;
        }
        Ok(o)
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the log ends: it grows with every record, so an unchanged end means
    /// nothing was logged meanwhile.
    pub fn log_end(&self) -> u64 {
        self.end
    }

    /// Whether anything was logged: the blob alone no longer is the file.
    pub fn is_logged(&self) -> bool {
        self.end > self.blob_end || self.marked
    }

    /// Whether the log has grown past what is worth keeping beside the blob
    /// ([`MAX_RANGES`], [`MAX_SLACK`]): then the file is folded into plaintext.
    pub fn needs_fold(&self) -> bool {
        self.map.len() > MAX_RANGES
            || self.end - self.blob_end > self.size.saturating_mul(2).saturating_add(MAX_SLACK)
    }

    /// Appends a record of `data` written at `off`, then applies it. The write is all
    /// or nothing: on an error (a full disk) the part written is cut off again.
    pub fn write(&mut self, file: &File, off: u64, data: &[u8]) -> FsResult<()> {
        if data.is_empty() {
            return Ok(()); // POSIX: a write of nothing changes nothing
        }
        range_end(off, data.len() as u64)
            .ok_or_else(|| FsError::refused(libc::EFBIG, "write past the largest offset"))?;
        let at = self.append(file, KIND_WRITE, off, data)?;
        self.apply(off, data.len() as u64, Src::Log(at));
        Ok(())
    }

    /// Makes `[off, off+len)` read as zeros (`fallocate(2)`'s punch hole and zero
    /// range), logged as one record without data; the size does not change. Nothing
    /// is logged for the part at or past the end.
    pub fn zero(&mut self, file: &File, off: u64, len: u64) -> FsResult<()> {
        let end = off.saturating_add(len).min(self.size);
        if end <= off {
            return Ok(());
        }
        self.append_record(file, KIND_ZERO, off, end - off, &[])?;
        self.apply(off, end - off, Src::Zero);
        Ok(())
    }

    /// Appends a record of a new size, then applies it.
    pub fn set_size(&mut self, file: &File, size: u64) -> FsResult<()> {
        self.append(file, KIND_SIZE, size, &[])?;
        self.apply_size(size);
        Ok(())
    }

    /// Writes one record at the end of the log; returns where its data lies.
    fn append(&mut self, file: &File, kind: u8, off: u64, data: &[u8]) -> FsResult<u64> {
        self.append_record(file, kind, off, data.len() as u64, data)
    }

    /// Writes one record with `len` in its length field (the data's length, but for a
    /// zero record the range's) at the end of the log; returns where its data lies.
    fn append_record(
        &mut self,
        file: &File,
        kind: u8,
        off: u64,
        len: u64,
        data: &[u8],
    ) -> FsResult<u64> {
        if !self.marked {
            // Durable before any record, so that a record is never found after a crash
            // in a file that recovery would not know to look at.
            fset_xattr(file, STATE_XATTR, STATE_BLOB_LOG).ctx("marking the overlay log")?;
            file.sync_all().ctx("marking the overlay log")?;
            self.marked = true;
        }
        if self.torn {
            file.set_len(self.end).ctx("cutting a torn log record")?;
            self.torn = false;
        }
        let mut rec = Vec::with_capacity(HEAD + data.len());
        rec.extend_from_slice(&MAGIC);
        rec.push(kind);
        rec.extend_from_slice(&off.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        let crc = crc_of(&rec, data);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(data);
        if let Err(e) = file.write_all_at(&rec, self.end) {
            // A part of a record would stop the replay there: cut it off now, or
            // before the next record.
            self.torn = file.set_len(self.end).is_err();
            return Err(FsError::io("appending to the overlay log", e));
        }
        let at = self.end + HEAD as u64;
        self.end += rec.len() as u64;
        Ok(at)
    }

    /// Applies a write (`Src::Log`), which may grow the file, or a zeroed range
    /// (`Src::Zero`), which never does.
    fn apply(&mut self, off: u64, len: u64, src: Src) {
        let end = match src {
            Src::Log(_) => off + len,
            Src::Zero => (off + len).min(self.size),
        };
        if end <= off {
            return;
        }
        self.cut(off, end);
        self.map.insert(off, (end - off, src));
        self.size = self.size.max(end);
    }

    fn apply_size(&mut self, size: u64) {
        self.cut(size, u64::MAX);
        self.size = size;
        self.blob_limit = self.blob_limit.min(size);
    }

    /// Removes `[from, to)` from the written ranges, keeping the parts outside it.
    fn cut(&mut self, from: u64, to: u64) {
        let hit: Vec<(u64, (u64, Src))> = self
            .map
            .range(..to)
            .rev()
            .take_while(|(s, (l, _))| *s + *l > from)
            .map(|(s, v)| (*s, *v))
            .collect();
        for (s, (l, src)) in hit {
            self.map.remove(&s);
            if s < from {
                self.map.insert(s, (from - s, src));
            }
            if s + l > to {
                self.map.insert(to, (s + l - to, src.skip(to - s)));
            }
        }
    }

    /// Where the bytes `off..off+len` (cut at the size) come from, in order; nothing
    /// at or past the end (a read of a handle that has not seen a truncate yet).
    pub fn plan(&self, off: u64, len: u64) -> Vec<Seg> {
        let end = off.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        if off >= end {
            return out;
        }
        let mut pos = off;
        let first = self
            .map
            .range(..=off)
            .next_back()
            .filter(|(s, (l, _))| *s + *l > off)
            .map(|(s, _)| *s)
            .unwrap_or(off);
        for (&s, &(l, src)) in self.map.range(first..end) {
            if s > pos {
                self.unwritten(pos, s, &mut out);
            }
            let from = pos.max(s);
            let to = (s + l).min(end);
            out.push(match src.skip(from - s) {
                Src::Log(at) => Seg::Log { at, len: to - from },
                Src::Zero => Seg::Zero { len: to - from },
            });
            pos = to;
        }
        if pos < end {
            self.unwritten(pos, end, &mut out);
        }
        out
    }

    /// Bytes `from..to` that no record wrote: the blob's below its limit, zeros above.
    fn unwritten(&self, from: u64, to: u64, out: &mut Vec<Seg>) {
        let split = self.blob_limit.clamp(from, to);
        if split > from {
            out.push(Seg::Blob {
                off: from,
                len: split - from,
            });
        }
        if to > split {
            out.push(Seg::Zero { len: to - split });
        }
    }

    /// The ranges of the file that are still the blob's own bytes at the same
    /// offsets: what a new blob may copy from the old one.
    pub fn clean(&self) -> Vec<Range<u64>> {
        self.plan(0, self.size)
            .into_iter()
            .scan(0u64, |pos, s| {
                let start = *pos;
                let (len, blob) = match s {
                    Seg::Log { len, .. } | Seg::Zero { len } => (len, false),
                    Seg::Blob { len, .. } => (len, true),
                };
                *pos += len;
                Some(blob.then_some(start..start + len))
            })
            .flatten()
            .collect()
    }
}

/// The end of `[off, off+len)` if it is a file offset (at most 2^63 - 1, what
/// `off_t` holds).
pub(super) fn range_end(off: u64, len: u64) -> Option<u64> {
    off.checked_add(len).filter(|&e| e <= i64::MAX as u64)
}

/// CRC-32C of a record: its header up to the CRC field, then its data.
fn crc_of(head: &[u8], data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&head[..HEAD - 4]), data)
}

/// Whether the bytes `from..to` of `file` are all zeros (blocks a power loss left
/// unwritten).
fn all_zero(file: &File, from: u64, to: u64) -> FsResult<bool> {
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], pos)
            .ctx("reading the overlay log")?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// Kind, offset and length of a record header, if it is one.
fn parse_head(h: &[u8]) -> Option<(u8, u64, u64)> {
    if h.len() < HEAD || h[..4] != MAGIC {
        return None;
    }
    let kind = h[4];
    let off = u64::from_le_bytes(h[5..13].try_into().ok()?);
    let len = u64::from_le_bytes(h[13..21].try_into().ok()?);
    let ok = match kind {
        KIND_WRITE | KIND_ZERO => len > 0 && range_end(off, len).is_some(),
        KIND_SIZE => len == 0 && off <= i64::MAX as u64,
        _ => false,
    };
    ok.then_some((kind, off, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BLOB_END: u64 = 10;

    /// A backing file of 10 "blob" bytes and an overlay over an original of `len`.
    fn fresh(len: u64) -> (tempfile::NamedTempFile, Overlay) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file()
            .write_all_at(&[0xEE; BLOB_END as usize], 0)
            .unwrap();
        let o = Overlay::load(f.as_file(), BLOB_END, len, false).unwrap();
        (f, o)
    }

    /// The bytes the overlay shows, with `base` as the blob's original bytes.
    fn view(f: &File, o: &Overlay, base: &[u8]) -> Vec<u8> {
        view_at(f, o, base, 0, u64::MAX)
    }

    /// [`view`] of bytes `off..off+len`.
    fn view_at(f: &File, o: &Overlay, base: &[u8], off: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for s in o.plan(off, len) {
            match s {
                Seg::Log { at, len } => {
                    let mut b = vec![0; len as usize];
                    f.read_exact_at(&mut b, at).unwrap();
                    out.extend(b);
                }
                Seg::Blob { off, len } => {
                    out.extend_from_slice(&base[off as usize..(off + len) as usize])
                }
                Seg::Zero { len } => out.resize(out.len() + len as usize, 0),
            }
        }
        out
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write(u16, Vec<u8>),
        Size(u16),
        Zero(u16, u16),
        /// A read anywhere, past the end too (as a handle that has not seen a truncate
        /// yet asks).
        Read(u16, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u16..400, proptest::collection::vec(any::<u8>(), 0..60)).prop_map(|(o, d)| Op::Write(o, d)),
            1 => (0u16..400).prop_map(Op::Size),
            1 => (0u16..400, 0u16..200).prop_map(|(o, l)| Op::Zero(o, l)),
            1 => (0u16..500, 0u16..200).prop_map(|(o, l)| Op::Read(o, l)),
        ]
    }

    proptest! {
        /// The overlay shows what a plain file would, and shows the same after its
        /// records are replayed from the file; the clean ranges are the blob's bytes.
        #[test]
        fn overlay_matches_a_plain_file(base_len in 0usize..300, ops in proptest::collection::vec(op(), 0..30)) {
            let base: Vec<u8> = (0..base_len).map(|i| (i * 7 + 1) as u8).collect();
            let (f, mut o) = fresh(base_len as u64);
            let mut model = base.clone();
            for op in &ops {
                match op {
                    Op::Write(off, d) => {
                        o.write(f.as_file(), *off as u64, d).unwrap();
                        if !d.is_empty() {
                            let end = *off as usize + d.len();
                            if model.len() < end { model.resize(end, 0); }
                            model[*off as usize..end].copy_from_slice(d);
                        }
                    }
                    Op::Size(s) => {
                        o.set_size(f.as_file(), *s as u64).unwrap();
                        model.resize(*s as usize, 0);
                    }
                    Op::Zero(off, len) => {
                        o.zero(f.as_file(), *off as u64, *len as u64).unwrap();
                        let (from, to) = (*off as usize, (*off as usize + *len as usize).min(model.len()));
                        if from < to { model[from..to].fill(0); }
                    }
                    Op::Read(off, len) => {
                        let from = (*off as usize).min(model.len());
                        let to = (*off as usize + *len as usize).min(model.len());
                        let got = view_at(f.as_file(), &o, &base, *off as u64, *len as u64);
                        prop_assert_eq!(&got[..], &model[from..to.max(from)]);
                    }
                }
                prop_assert_eq!(o.size(), model.len() as u64);
                prop_assert_eq!(&view(f.as_file(), &o, &base), &model);
            }
            let marked = !ops.is_empty() && o.is_logged();
            let back = Overlay::load(f.as_file(), BLOB_END, base_len as u64, marked).unwrap();
            prop_assert_eq!(&view(f.as_file(), &back, &base), &model);
            for r in o.clean() {
                prop_assert_eq!(&model[r.start as usize..r.end as usize], &base[r.start as usize..r.end as usize]);
            }
        }
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_cut_off_by_the_next_write() {
        let (f, mut o) = fresh(4);
        o.write(f.as_file(), 4, b"hello").unwrap();
        let good = f.as_file().metadata().unwrap().len();
        // Half of a second record, as a crash in the middle of a write leaves it.
        f.as_file().write_all_at(b"NCLG\x01\x00\x00", good).unwrap();
        let mut back = Overlay::load(f.as_file(), BLOB_END, 4, true).unwrap();
        assert_eq!(back.size(), 9);
        assert!(back.torn);
        back.write(f.as_file(), 0, b"ab").unwrap();
        let again = Overlay::load(f.as_file(), BLOB_END, 4, true).unwrap();
        assert!(!again.torn);
        assert_eq!(view(f.as_file(), &again, b"wxyz"), b"abyzhello");
    }

    #[test]
    fn bytes_after_an_unmarked_blob_are_damage() {
        let (f, _) = fresh(4);
        f.as_file().write_all_at(b"junk", BLOB_END).unwrap();
        let e = Overlay::load(f.as_file(), BLOB_END, 4, false).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn a_bad_last_record_is_a_torn_tail_and_a_bad_earlier_one_is_damage() {
        let (f, mut o) = fresh(0);
        o.write(f.as_file(), 0, b"one").unwrap();
        o.write(f.as_file(), 3, b"two").unwrap();
        // The last record's data not written (a power loss): ignored.
        let len = f.as_file().metadata().unwrap().len();
        f.as_file().write_all_at(b"X", len - 1).unwrap();
        let back = Overlay::load(f.as_file(), BLOB_END, 0, true).unwrap();
        assert_eq!(view(f.as_file(), &back, b""), b"one");
        // The first record damaged: the later one must not be silently lost.
        f.as_file()
            .write_all_at(b"X", BLOB_END + HEAD as u64)
            .unwrap();
        let e = Overlay::load(f.as_file(), BLOB_END, 0, true).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
    }
}
