//! The NC06 container: how a compressed file is laid out on disk (see docs/FORMAT.md),
//! how input bytes are cut into text and binary extents, and the classical codec for
//! the binary ones. Nothing here runs the model.

mod binary;
mod container;
#[doc(hidden)]
pub mod fuzzing;
mod segment;
mod varint;

pub use binary::{compress_frame, decompress_frame, Method, FRAME_SIZE};
pub use container::{
    Blob, ChunkEntry, Extent, ExtentKind, Flags, FormatError, FrameEntry, Header, Index,
    IndexedExtent, HEADER_PREFIX_LEN, MAGIC, VERSION,
};
pub use segment::{segment, Segment, SegmentOptions};
