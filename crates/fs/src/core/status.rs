//! The counters `nacrithfs status` shows, published as JSON in the hidden status file.

use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;

/// Counters published by `nacrithfs status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Files waiting for a compressor.
    pub queued: u64,
    /// Files being compressed.
    pub compressing: u64,
    /// Modified files still open for writing (queued at their last close).
    pub writing: u64,
    /// Files whose compression failed, waiting to be tried again.
    pub retrying: u64,
    /// Files compressed since the mount.
    pub compressed: u64,
    /// Compressions that failed since the mount (the files stay plaintext).
    pub failed: u64,
    /// Plaintext bytes of the files compressed.
    pub bytes_before: u64,
    /// Blob bytes they became.
    pub bytes_after: u64,
}

impl Status {
    /// The status as one line of JSON.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses [`Status::to_json`]'s output (missing fields read as 0).
    pub fn from_json(s: &str) -> Option<Status> {
        serde_json::from_str(s).ok()
    }

    /// Nothing left for the workers to do.
    pub fn idle(&self) -> bool {
        self.queued == 0 && self.compressing == 0 && self.writing == 0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queued {}, compressing {}, open for writing {}, retrying {}, compressed {} ({} -> {} bytes{}), failed {}",
            self.queued,
            self.compressing,
            self.writing,
            self.retrying,
            self.compressed,
            self.bytes_before,
            self.bytes_after,
            if self.bytes_before > 0 { format!(", ratio {:.3}", self.bytes_after as f64 / self.bytes_before as f64) } else { String::new() },
            self.failed
        )
    }
}

/// The running totals behind [`Status`].
#[derive(Default)]
pub(super) struct Counters {
    pub compressed: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_before: AtomicU64,
    pub bytes_after: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_defaults() {
        let s = Status {
            queued: 1,
            compressing: 2,
            writing: 3,
            retrying: 9,
            compressed: 4,
            failed: 5,
            bytes_before: 6,
            bytes_after: 7,
        };
        let j = s.to_json();
        assert_eq!(
            j,
            "{\"queued\":1,\"compressing\":2,\"writing\":3,\"retrying\":9,\"compressed\":4,\"failed\":5,\"bytes_before\":6,\"bytes_after\":7}\n"
        );
        assert_eq!(Status::from_json(&j), Some(s));
        assert_eq!(
            Status::from_json("{\"queued\":0,\"compressing\":1}"),
            Some(Status {
                compressing: 1,
                ..Default::default()
            })
        );
        assert_eq!(Status::from_json("not json"), None);
    }
}
