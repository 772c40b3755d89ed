//! The codec the mount uses: NC06 through the engine, behind the filesystem's
//! [`Codec`] trait (the filesystem crate knows nothing of the model).

use log::Level;
use nacrithfs_engine::{CompressOptions, Engine, EngineSet, ProgressSink};
use nacrithfs_fs::store::codec::byte_span;
use nacrithfs_fs::store::codec::Meter;
use nacrithfs_fs::store::{Codec, OpenBlob};
use nacrithfs_fs::{FsError, FsResult};
use nc06::format::{Blob, FormatError, Index, Payload};
use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// NC06 through the language model: compressed by the default model, each blob
/// decoded by the model that coded it.
pub struct Nc06Codec {
    engines: Arc<EngineSet>,
    opts: CompressOptions,
}

impl Nc06Codec {
    /// A codec over `engines` with the default compression options.
    pub fn new(engines: Arc<EngineSet>) -> Self {
        Nc06Codec {
            engines,
            opts: CompressOptions::default(),
        }
    }
}

/// The engine's progress into the filesystem's meter (tokens, counting the verifying
/// decode).
struct MeterSink<'a>(&'a Meter);

impl ProgressSink for MeterSink<'_> {
    fn total(&self, tokens: u64) {
        self.0.set_total(tokens);
    }
    fn add(&self, n: u64) {
        self.0.add(n);
    }
}

/// An engine error as the filesystem reports it: EIO (ENOMEM when the model has no
/// room), logged as a warning that names the file (the core adds the name).
fn fs_error(what: &str, e: nacrithfs_engine::Error) -> FsError {
    FsError::new(e.errno(), Level::Warn, what.to_string()).with_source(e)
}

impl Codec for Nc06Codec {
    fn compress(&self, data: &[u8], meter: &Meter) -> FsResult<Vec<u8>> {
        let mut opts = self.opts.clone();
        // The filesystem never stores an unverified blob.
        opts.verify = true;
        Ok(self
            .engines
            .default_engine()
            .compress(data, &opts, Some(&MeterSink(meter)))
            .map_err(|e| fs_error("compressing", e))?
            .blob)
    }

    fn original_len(&self, prefix: &[u8]) -> FsResult<Option<u64>> {
        match Blob::parse_header(prefix) {
            Ok((blob, _)) => Ok(Some(blob.header.original_len)),
            Err(FormatError::Truncated(_)) => Ok(None),
            Err(e) => Err(fs_error("blob header", e.into())),
        }
    }

    fn open(&self, file: Arc<File>) -> FsResult<Arc<dyn OpenBlob>> {
        let (blob, header_len) = read_header(&file)?;
        let index = blob.index();
        let extents = index.pieces();
        Ok(Arc::new(Nc06Blob {
            engine: self.engines.decoder(&blob),
            blob,
            index,
            payload: FilePayload {
                file,
                base: header_len as u64,
            },
            extents,
        }))
    }
}

/// The first bytes read of a blob when it is opened: its header and tables are a few
/// bytes per 16 KiB chunk or 1 MiB frame, so this covers files of many MB at once.
const HEADER_READ: usize = 64 << 10;

/// Reads and validates the header and tables of the blob in `file` (reading more while
/// they go on) and checks the file's length against them. Returns the blob without
/// its payload and where the payload starts.
fn read_header(file: &File) -> FsResult<(Blob, usize)> {
    let len = file.metadata().map_err(|e| FsError::io("blob", e))?.len();
    let mut want = HEADER_READ;
    loop {
        let n = want.min(usize::try_from(len).unwrap_or(usize::MAX));
        let mut buf = vec![0; n];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| FsError::io("blob", e))?;
        match Blob::parse_header(&buf) {
            Ok((blob, header_len)) => {
                let have = len - header_len as u64;
                let need = blob.payload_len();
                if have != need {
                    let why = if have < need {
                        FormatError::Truncated("payload")
                    } else {
                        FormatError::Inconsistent(format!(
                            "{} bytes of trailing garbage",
                            have - need
                        ))
                    };
                    return Err(fs_error("blob", why.into()));
                }
                return Ok((blob, header_len));
            }
            Err(FormatError::Truncated(_)) if (n as u64) < len => want = want.saturating_mul(4),
            Err(e) => return Err(fs_error("blob", e.into())),
        }
    }
}

/// A blob's payload in its backing file, read piece by piece with `pread`.
struct FilePayload {
    file: Arc<File>,
    /// Where the payload starts in the file.
    base: u64,
}

impl Payload for FilePayload {
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Cow<'_, [u8]>> {
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, self.base + offset)?;
        Ok(Cow::Owned(buf))
    }
}

/// An opened blob: its tables and index in memory, its payload in the file; decoded
/// through the engine a piece at a time (a text chunk, or what lies in one frame).
struct Nc06Blob {
    engine: Arc<Engine>,
    blob: Blob,
    index: Index,
    payload: FilePayload,
    extents: Vec<(u64, u64)>,
}

impl OpenBlob for Nc06Blob {
    fn len(&self) -> u64 {
        self.blob.header.original_len
    }

    fn extents(&self) -> &[(u64, u64)] {
        &self.extents
    }

    fn decode(&self, range: Range<usize>) -> FsResult<Vec<u8>> {
        let Some((start, end)) = byte_span(&self.extents, range) else {
            return Ok(Vec::new());
        };
        let (base, bytes) = self
            .engine
            .decode_range(&self.blob, &self.index, &self.payload, start, end, None)
            .map_err(|e| fs_error(&format!("decoding bytes {start}..{end}"), e))?;
        if base != start || bytes.len() as u64 != end - start {
            return Err(nacrithfs_fs::store::codec::damaged(format!(
                "decoded range {base}+{} does not match extents {start}..{end}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}
