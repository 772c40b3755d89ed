//! The codec seen from the filesystem: compress a whole file, read a blob's original
//! length from its first bytes, and decode independent extents of an opened blob.
//!
//! A trait object, so the filesystem core can be tested against a cheap stand-in
//! ([`StandInCodec`]) while the mount uses the real model ([`Nc06Codec`]).

use crate::engine::{CompressOptions, Engine};
use crate::format::{Blob, FormatError, Index};
use std::ops::Range;
use std::sync::Arc;

/// A codec failure, with the errno the filesystem reports for it.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct CodecError {
    pub msg: String,
    pub errno: i32,
}

impl CodecError {
    pub fn eio(msg: impl Into<String>) -> Self {
        CodecError {
            msg: msg.into(),
            errno: libc::EIO,
        }
    }
}

impl From<crate::Error> for CodecError {
    fn from(e: crate::Error) -> Self {
        CodecError {
            errno: e.errno(),
            msg: e.to_string(),
        }
    }
}

/// What the filesystem needs from a codec.
pub trait Codec: Send + Sync + 'static {
    /// Compresses a whole file. The returned blob must already be verified to decode.
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>, CodecError>;
    /// The original length recorded in a blob whose first bytes are `prefix`;
    /// `Ok(None)` when more bytes are needed.
    fn original_len(&self, prefix: &[u8]) -> Result<Option<u64>, CodecError>;
    /// Parses a whole blob for random-access decoding.
    fn open(&self, blob: Vec<u8>) -> Result<Arc<dyn OpenBlob>, CodecError>;
}

/// A parsed blob whose extents can be decoded independently.
pub trait OpenBlob: Send + Sync {
    /// The original file's length.
    fn len(&self) -> u64;
    /// `(offset, len)` of every extent, in order, tiling `0..len()`.
    fn extents(&self) -> &[(u64, u64)];
    /// Decodes extents `range`, returning their bytes concatenated.
    fn decode(&self, range: Range<usize>) -> Result<Vec<u8>, CodecError>;
}

/// The real codec: NC06 through the language model.
pub struct Nc06Codec {
    engine: Arc<Engine>,
    opts: CompressOptions,
}

impl Nc06Codec {
    pub fn new(engine: Arc<Engine>) -> Self {
        Nc06Codec {
            engine,
            opts: CompressOptions::default(),
        }
    }
}

impl Codec for Nc06Codec {
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut opts = self.opts.clone();
        // The filesystem never stores an unverified blob.
        opts.verify = true;
        Ok(self.engine.compress(data, &opts, None)?.blob)
    }

    fn original_len(&self, prefix: &[u8]) -> Result<Option<u64>, CodecError> {
        match Blob::parse_header(prefix) {
            Ok((blob, _)) => Ok(Some(blob.header.original_len)),
            Err(FormatError::Truncated(_)) => Ok(None),
            Err(e) => Err(CodecError::eio(e.to_string())),
        }
    }

    fn open(&self, bytes: Vec<u8>) -> Result<Arc<dyn OpenBlob>, CodecError> {
        let blob = Blob::parse(&bytes).map_err(|e| CodecError::eio(e.to_string()))?;
        let index = blob.index();
        let extents = index
            .extents
            .iter()
            .map(|e| (e.orig_offset, e.len))
            .collect();
        Ok(Arc::new(Nc06Blob {
            engine: self.engine.clone(),
            blob,
            index,
            extents,
        }))
    }
}

struct Nc06Blob {
    engine: Arc<Engine>,
    blob: Blob,
    index: Index,
    extents: Vec<(u64, u64)>,
}

impl OpenBlob for Nc06Blob {
    fn len(&self) -> u64 {
        self.blob.header.original_len
    }

    fn extents(&self) -> &[(u64, u64)] {
        &self.extents
    }

    fn decode(&self, range: Range<usize>) -> Result<Vec<u8>, CodecError> {
        let (Some(first), Some(last)) = (
            self.extents.get(range.start),
            range.end.checked_sub(1).and_then(|l| self.extents.get(l)),
        ) else {
            return Ok(Vec::new());
        };
        let (start, end) = (first.0, last.0 + last.1);
        let (base, bytes) =
            self.engine
                .decompress_range(&self.blob, &self.index, start, end, None)?;
        if base != start || bytes.len() as u64 != end - start {
            return Err(CodecError::eio(format!(
                "decoded range {base}+{} does not match extents {start}..{end}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// A cheap stand-in codec for tests of the layers above the codec: zstd behind a
/// `FAKE` magic and the original length, cut into fixed extents of `extent` bytes.
pub struct StandInCodec {
    pub extent: u64,
}

const FAKE_MAGIC: &[u8; 4] = b"FAKE";

impl Codec for StandInCodec {
    fn compress(&self, data: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut out = FAKE_MAGIC.to_vec();
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend(zstd::encode_all(data, 3).map_err(|e| CodecError::eio(e.to_string()))?);
        Ok(out)
    }

    fn original_len(&self, prefix: &[u8]) -> Result<Option<u64>, CodecError> {
        if prefix.len() < 12 {
            return Ok(None);
        }
        if &prefix[..4] != FAKE_MAGIC {
            return Err(CodecError::eio("bad magic"));
        }
        Ok(Some(u64::from_le_bytes(
            prefix[4..12].try_into().unwrap_or([0; 8]),
        )))
    }

    fn open(&self, blob: Vec<u8>) -> Result<Arc<dyn OpenBlob>, CodecError> {
        let len = self
            .original_len(&blob)?
            .ok_or_else(|| CodecError::eio("truncated"))?;
        let data = zstd::decode_all(&blob[12..]).map_err(|e| CodecError::eio(e.to_string()))?;
        if data.len() as u64 != len {
            return Err(CodecError::eio("length mismatch"));
        }
        let step = self.extent.max(1);
        let extents = (0..len)
            .step_by(step as usize)
            .map(|o| (o, step.min(len - o)))
            .collect();
        Ok(Arc::new(StandInBlob { data, extents }))
    }
}

struct StandInBlob {
    data: Vec<u8>,
    extents: Vec<(u64, u64)>,
}

impl OpenBlob for StandInBlob {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn extents(&self) -> &[(u64, u64)] {
        &self.extents
    }

    fn decode(&self, range: Range<usize>) -> Result<Vec<u8>, CodecError> {
        let (Some(first), Some(last)) = (
            self.extents.get(range.start),
            range.end.checked_sub(1).and_then(|l| self.extents.get(l)),
        ) else {
            return Ok(Vec::new());
        };
        Ok(self.data[first.0 as usize..(last.0 + last.1) as usize].to_vec())
    }
}
