//! Files read, decoded and checked a window at a time, so that what a shard holds does
//! not grow with the largest file of the corpus: plain files are hashed and copied in
//! blocks, blobs are decoded window by window into their destination, and a file
//! larger than one window is compressed by the same windowed path as the mount's
//! ([`nacrithfs_codec::Streamed`]) instead of joining a batch.

use super::*;
use nacrithfs_codec::{decompress_streamed, read_header, Streamed};
use nacrithfs_engine::Engine;
use nacrithfs_fs::store::codec::{BlobOut, Meter as CodecMeter, Source};
use nacrithfs_fs::store::AtomicFile;
use nacrithfs_fs::FsError;
use sha2::Digest as _;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes read at a time from a plain file.
const BLOCK: usize = 1 << 20;

/// Bytes of a blob decoded at a time by unpack and verify: the mount's window.
const WINDOW: usize = nacrithfs_codec::STREAM_WINDOW;

/// The length, SHA-256 and CRC-32C of the bytes written into it: what the manifest
/// records of a file, taken as the bytes go by.
pub(super) struct Digest {
    pub len: u64,
    sha: sha2::Sha256,
    pub crc: u32,
}

impl Digest {
    pub fn new() -> Self {
        Digest {
            len: 0,
            sha: sha2::Sha256::new(),
            crc: 0,
        }
    }

    pub fn add(&mut self, b: &[u8]) {
        self.len += b.len() as u64;
        self.sha.update(b);
        self.crc = crc32c::crc32c_append(self.crc, b);
    }

    /// The SHA-256 as the manifest writes it.
    pub fn sha256_hex(self) -> String {
        crate::manifest::hex(&self.sha.finalize())
    }
}

impl Write for Digest {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.add(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes going to a staged file and into a digest.
struct Tee<'a> {
    out: &'a mut AtomicFile,
    digest: &'a mut Digest,
}

impl Write for Tee<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.out.write(b)?;
        self.digest.add(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads all of the plain file `f` (`path`, for errors) a block at a time, handing
/// each block to `each`. Returns the bytes read.
fn blocks(
    f: &File,
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), PackError>,
) -> Result<u64, PackError> {
    let mut buf = vec![0; BLOCK];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off).map_err(PackError::io(path))?;
        if n == 0 {
            return Ok(off);
        }
        each(&buf[..n])?;
        off += n as u64;
    }
}

/// The digest of the plain file `f`.
pub(super) fn digest(f: &File, path: &Path) -> Result<Digest, PackError> {
    let mut d = Digest::new();
    blocks(f, path, |b| {
        d.add(b);
        Ok(())
    })?;
    Ok(d)
}

/// Copies the plain file `f` into the staged file `out`, returning the digest of what
/// went in.
pub(super) fn copy_plain(f: &File, path: &Path, out: &mut AtomicFile) -> Result<Digest, PackError> {
    let mut d = Digest::new();
    blocks(f, path, |b| {
        out.write_all(b)?;
        d.add(b);
        Ok(())
    })?;
    Ok(d)
}

/// The header and tables of the blob in `f` (`path`), and where its payload starts.
pub(super) fn blob_header(f: &File, path: &Path) -> Result<(Blob, usize), PackError> {
    read_header(f).map_err(|e| PackError::coding(path, e))
}

/// Decodes the blob in `f` (`path`; its header and tables `header`, from
/// [`blob_header`]) into `out` a window at a time, by the model that coded it (when it
/// is cached). Every chunk and frame is checked as it is decoded and the whole file's
/// CRC-32C at the end: on an error, what went into `out` is not the file.
pub(super) fn decode_blob(
    engine: &LazyEngine,
    f: &Arc<File>,
    path: &Path,
    header: &(Blob, usize),
    out: &mut dyn Write,
) -> Result<(), PackError> {
    let (blob, header_len) = header;
    let decoder = engine.decoder(blob)?;
    decompress_streamed(&decoder, blob, *header_len, f.clone(), out, WINDOW, None)
        .map_err(|e| PackError::coding(path, e))?;
    Ok(())
}

/// [`decode_blob`] into the staged file `out`, returning the digest of the decoded
/// bytes.
pub(super) fn decode_into(
    engine: &LazyEngine,
    f: &Arc<File>,
    path: &Path,
    header: &(Blob, usize),
    out: &mut AtomicFile,
) -> Result<Digest, PackError> {
    let mut digest = Digest::new();
    let mut tee = Tee {
        out,
        digest: &mut digest,
    };
    decode_blob(engine, f, path, header, &mut tee)?;
    Ok(digest)
}

/// Compresses the plain file `f` (`path`, whose digest taken just before is `want`)
/// into the staged file `out` a window at a time, through scratch files of `staging`.
/// The blob is read back before this returns, and the file must not have changed
/// since `want` was taken: the blob's recorded length and CRC-32C must be `want`'s.
/// Returns the blob's length and whether it has text.
pub(super) fn compress_into(
    run: (&Engine, &CompressOptions, usize),
    staging: &Staging,
    f: &File,
    path: &Path,
    want: &Digest,
    out: &mut AtomicFile,
) -> Result<(u64, bool), PackError> {
    let (engine, opts, window) = run;
    let coding = |e: FsError| PackError::coding(path, e);
    let read = |off: u64, len: u64| -> nacrithfs_fs::FsResult<Vec<u8>> {
        let n = usize::try_from(len)
            .map_err(|_| FsError::new(libc::EFBIG, log::Level::Warn, "window too large"))?;
        let mut buf = vec![0; n];
        f.read_exact_at(&mut buf, off)
            .map_err(|e| FsError::io("the file (changed while it was packed?)", e))?;
        Ok(buf)
    };
    let scratch = || staging.scratch();
    let stats = Streamed {
        engine,
        opts,
        window,
        keep_larger: true,
        frames: None,
    }
    .compress(
        &Source {
            len: want.len,
            read: &read,
        },
        &BlobOut {
            file: out.file(),
            scratch: &scratch,
        },
        &CodecMeter::default(),
        None,
    )
    .map_err(coding)?;
    let (blob, _) = read_header(out.file()).map_err(coding)?;
    if blob.header.original_len != want.len || blob.header.original_crc != want.crc {
        return Err(PackError::Mismatch {
            path: path.to_path_buf(),
            why: "changed while it was packed".into(),
        });
    }
    Ok((stats.compressed, stats.chunks > 0))
}
