//! The codec the mount uses: NC06 through the engine, behind the filesystem's
//! [`Codec`] trait (the filesystem crate knows nothing of the model).

use log::Level;
use nacrithfs_engine::{CompressOptions, Engine};
use nacrithfs_fs::store::codec::byte_span;
use nacrithfs_fs::store::{Codec, OpenBlob};
use nacrithfs_fs::{FsError, FsResult};
use nc06::format::{Blob, FormatError, Index};
use std::ops::Range;
use std::sync::Arc;

/// NC06 through the language model.
pub struct Nc06Codec {
    engine: Arc<Engine>,
    opts: CompressOptions,
}

impl Nc06Codec {
    /// A codec over `engine` with the default compression options.
    pub fn new(engine: Arc<Engine>) -> Self {
        Nc06Codec {
            engine,
            opts: CompressOptions::default(),
        }
    }
}

/// An engine error as the filesystem reports it: EIO (ENOMEM when the model has no
/// room), logged as a warning that names the file (the core adds the name).
fn fs_error(what: &str, e: nacrithfs_engine::Error) -> FsError {
    FsError::new(e.errno(), Level::Warn, what.to_string()).with_source(e)
}

impl Codec for Nc06Codec {
    fn compress(&self, data: &[u8]) -> FsResult<Vec<u8>> {
        let mut opts = self.opts.clone();
        // The filesystem never stores an unverified blob.
        opts.verify = true;
        Ok(self
            .engine
            .compress(data, &opts, None)
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

    fn open(&self, bytes: Vec<u8>) -> FsResult<Arc<dyn OpenBlob>> {
        let blob = Blob::parse(&bytes).map_err(|e| fs_error("blob", e.into()))?;
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

/// A parsed blob with its index, decoded through the engine.
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

    fn decode(&self, range: Range<usize>) -> FsResult<Vec<u8>> {
        let Some((start, end)) = byte_span(&self.extents, range) else {
            return Ok(Vec::new());
        };
        let (base, bytes) = self
            .engine
            .decompress_range(&self.blob, &self.index, start, end, None)
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
