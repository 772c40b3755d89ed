//! The nacrithfs filesystem: the backing store ([`store`]), a core that works on
//! inodes over it and knows nothing of FUSE or of the model ([`core`]), a thin fuser
//! adapter ([`fuse`]), and mounting plus the status client ([`mount`]).
//!
//! The codec reaches this crate only as a trait object ([`store::Codec`]): the
//! `nacrithfs` binary passes the real one, the tests a cheap stand-in.

pub mod core;
pub mod error;
pub mod fuse;
pub mod mount;
pub mod store;

pub use self::core::{Core, CoreConfig, Status};
pub use error::{FsError, FsResult, IoContext};
