//! The FUSE filesystem: a core that works on inodes over the backing directory and
//! knows nothing of FUSE ([`core`]), a thin fuser adapter ([`fuse`]), and mounting plus
//! the status client ([`mount`]).

pub mod core;
pub mod error;
pub mod fuse;
pub mod mount;

pub use self::core::{Core, CoreConfig, Status};
pub use error::{FsError, FsResult};
