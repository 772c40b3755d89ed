//! Entropy coding: a 32-bit binary arithmetic coder driven by 24-bit integer CDFs.
//!
//! Everything here is integer arithmetic or plain IEEE-754 f32 operations in a fixed
//! order, so an encoder and a decoder on any machine agree to the bit once they are
//! handed the same logits.

mod arith;
mod cdf;

pub use arith::{Decoder, Encoder};
pub use cdf::{
    exp2_neg, fixed_sum, lane_max, lane_total, log2_pos, softmax_into, Cdf, LANES, PRECISION_BITS,
    TOTAL,
};
