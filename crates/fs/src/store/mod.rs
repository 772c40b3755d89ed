//! Storage under the filesystem: the backing directory layout and plaintext-vs-blob
//! state ([`backing`]), fd-relative access to it ([`dir`]), acting as the caller when
//! creating entries ([`creds`]), atomic file replacement ([`atomic`]), extended
//! attributes ([`xattr`]), the codec as the filesystem sees it ([`codec`]), and the
//! compression queue ([`queue`]). The workers that drain the queue live in [`crate::core`], because
//! committing a blob must be atomic with the inode table.

pub mod atomic;
pub mod backing;
pub mod codec;
pub mod creds;
pub mod dir;
pub mod queue;
pub mod xattr;

pub use atomic::AtomicFile;
pub use backing::{Backing, BackingLock, LockMode};
pub use codec::{BlobOut, Codec, OpenBlob, Source, StandInCodec};
pub use creds::Caller;
pub use dir::{Dir, Stat};
pub use queue::WorkQueue;
