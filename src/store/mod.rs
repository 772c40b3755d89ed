//! Storage under the filesystem: the backing directory layout and plaintext-vs-blob
//! state ([`backing`]), the codec as the filesystem sees it ([`codec`]), and the
//! compression queue ([`queue`]). The workers that drain the queue live in
//! [`crate::fs::core`], because committing a blob must be atomic with the inode table.

pub mod backing;
pub mod codec;
pub mod queue;

pub use backing::Backing;
pub use codec::{Codec, CodecError, Nc06Codec, OpenBlob, StandInCodec};
pub use queue::WorkQueue;
