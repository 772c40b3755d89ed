//! NC06: the container that nacrithfs stores every file in, and the arithmetic that
//! defines its bits once a model's logits are known.
//!
//! - [`codec`]: the 32-bit arithmetic coder and the integer CDFs (2^24 or 2^28 counts) it is driven by;
//! - [`format`]: the container (header, tables, payload), the segmentation of a file
//!   into text and binary extents, the classical codec of binary frames, and the
//!   predictor [`Flags`](format::Flags) recorded in every header;
//! - [`predict`]: from one step's logits to the CDF (softmax and the cheap ensemble),
//!   which an encoder and a decoder must compute identically;
//! - [`simd`]: the run-time choice of instruction set for the vocabulary-wide loops,
//!   which changes their speed and never their bits;
//! - [`Window`] and [`Fingerprint`]: what else shapes the bits, and is recorded.
//!
//! Nothing here runs a model, so a parser, a fuzzer or another inference backend can
//! depend on this crate alone.

// The arithmetic that defines the bits is written for what NaN does: `!(x > 0.0)` is
// true for NaN, and f32::min/max return the non-NaN operand. The rewrites these two lints
// suggest (partial_cmp, clamp) treat NaN differently, which would change the format.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::manual_clamp)]

pub mod codec;
mod fingerprint;
pub mod format;
pub mod predict;
pub mod simd;
mod window;

pub use fingerprint::Fingerprint;
pub use window::Window;
