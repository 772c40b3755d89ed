//! The context window of one token stream, as recorded in every blob.

/// The context window of one sequence: when `ctx` positions are used, the `slide` oldest
/// tokens after the first (the BOS "attention sink") are dropped from the KV cache and
/// the rest shifted down. It is stored in every blob, because it shapes the predictions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Positions per sequence.
    pub ctx: u32,
    /// Positions dropped from a full window.
    pub slide: u32,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            ctx: 2048,
            slide: 512,
        }
    }
}

impl Window {
    /// Largest window a reader accepts: bounds the KV cache a hostile blob can ask for.
    pub const MAX_CTX: u32 = 1 << 20;

    /// Valid when the slide leaves room for the sink token and at least one more.
    /// Written so that no value of `slide` can overflow (it comes from blob headers).
    pub fn is_valid(&self) -> bool {
        self.ctx >= 16 && self.ctx <= Self::MAX_CTX && self.slide >= 1 && self.slide <= self.ctx - 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_slides_are_invalid_without_overflow() {
        for slide in [u32::MAX, u32::MAX - 1, u32::MAX - 2, 1 << 31] {
            assert!(!Window { ctx: 2048, slide }.is_valid(), "slide {slide}");
        }
        assert!(Window { ctx: 16, slide: 14 }.is_valid());
        assert!(!Window { ctx: 16, slide: 15 }.is_valid());
        assert!(!Window { ctx: 15, slide: 1 }.is_valid());
        assert!(!Window {
            ctx: u32::MAX,
            slide: 1
        }
        .is_valid());
        assert!(Window::default().is_valid());
    }
}
