//! Entropy coding: a 32-bit binary arithmetic coder driven by integer CDFs of 2^24
//! (or, for vocabularies over 2^16 tokens, 2^28) counts.
//!
//! Everything here is integer arithmetic or plain IEEE-754 f32 operations in a fixed
//! order, so an encoder and a decoder on any machine agree to the bit once they are
//! handed the same logits.

mod arith;
mod cdf;

pub use arith::{Decoder, Encoder};
pub use cdf::{
    exp2_neg, fixed_sum, lane_max, lane_total, log2_pos, softmax_into, Cdf, CdfError, Precision,
    LANES,
};
