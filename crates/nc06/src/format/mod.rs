//! The NC06 container: how a compressed file is laid out on disk (see docs/FORMAT.md),
//! how input bytes are cut into text and binary extents, and the classical codec for
//! the binary ones. Nothing here runs the model.

mod binary;
mod container;
mod flags;
#[doc(hidden)]
pub mod fuzzing;
mod segment;
mod varint;

pub use binary::{compress_frame, decompress_frame, FrameError, Method, FRAME_SIZE};
pub use container::{
    Blob, ChunkEntry, Extent, ExtentKind, FormatError, FrameEntry, Header, Index, IndexedExtent,
    Payload, HEADER_PREFIX_LEN, MAGIC, MAX_ZERO_EXTENT, VERSION,
};
pub use flags::{Flags, UnknownPredictor};

/// Default text chunk size in bytes; see docs/BENCHMARKS.md for the measurement behind it.
pub const DEFAULT_CHUNK_SIZE: usize = 16 * 1024;
pub use segment::{segment, zero_runs, Segment, SegmentOptions, MIN_ZERO_RUN};
