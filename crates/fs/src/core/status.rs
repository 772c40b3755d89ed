//! The counters `nacrithfs status` shows, published as JSON in the hidden status file.

use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;

/// Counters published by `nacrithfs status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
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
    /// Files left as plaintext since the mount because a blob would not be smaller.
    pub kept_plain: u64,
    /// Compressions that failed since the mount (the files stay plaintext).
    pub failed: u64,
    /// Plaintext bytes of the files compressed.
    pub bytes_before: u64,
    /// Blob bytes they became.
    pub bytes_after: u64,
    /// Pieces decoded by the model since the mount (text chunks: reads of them, and
    /// chunks a change touched when a file is compressed again). Appends decode none.
    pub model_decodes: u64,
    /// Binary frames of old blobs copied into new ones as they were since the mount
    /// (a changed file compressed again: its unchanged frames are not compressed).
    pub frames_reused: u64,
    /// Text chunks decoded ahead of a reader that reads a file in order since the
    /// mount (counted in `model_decodes` too).
    pub read_ahead: u64,
    /// The compressions in progress.
    pub jobs: Vec<JobStatus>,
    /// Seconds until the queue is done, estimated from the files compressed so far
    /// (none before the first).
    pub eta_secs: Option<u64>,
}

/// One compression in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobStatus {
    /// The file, in BACKING.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Work done (for NC06: tokens coded, the verifying decode included)...
    pub done: u64,
    /// ...of this much (0 while not known yet).
    pub total: u64,
    /// Seconds since it started.
    pub secs: u64,
    /// Seconds left at its rate so far.
    pub eta_secs: Option<u64>,
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

impl Status {
    /// What was done: files compressed, their bytes before and after with the ratio
    /// (original ÷ stored, so bigger is better, as zstd and btrfs report it), failures.
    pub fn summary(&self) -> String {
        let ratio = if self.bytes_after > 0 {
            format!(
                ", ratio {:.2}:1 original/stored",
                self.bytes_before as f64 / self.bytes_after as f64
            )
        } else {
            String::new()
        };
        format!(
            "compressed {} ({} -> {} bytes{ratio}), kept plain {}, failed {}",
            self.compressed, self.bytes_before, self.bytes_after, self.kept_plain, self.failed
        )
    }
}

/// `90s`, `12m05s`, `3h20m`.
pub fn human_secs(s: u64) -> String {
    match s {
        0..=99 => format!("{s}s"),
        100..=5999 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "queued {}, compressing {}, open for writing {}, retrying {}; {}",
            self.queued,
            self.compressing,
            self.writing,
            self.retrying,
            self.summary()
        )?;
        for j in &self.jobs {
            write!(f, "\n  compressing {} ({} bytes): ", j.path, j.bytes)?;
            if j.total > 0 {
                write!(
                    f,
                    "{:.0} % ({} of {} units)",
                    100.0 * j.done as f64 / j.total as f64,
                    j.done,
                    j.total
                )?;
            } else {
                write!(f, "starting")?;
            }
            match j.eta_secs {
                Some(s) => write!(f, ", about {} left", human_secs(s))?,
                None => write!(f, ", {} so far", human_secs(j.secs))?,
            }
        }
        if let Some(s) = self.eta_secs.filter(|_| self.queued + self.compressing > 0) {
            write!(f, "\n  all queued work: about {} left", human_secs(s))?;
        }
        Ok(())
    }
}

/// The running totals behind [`Status`].
#[derive(Default)]
pub(super) struct Counters {
    /// Wall-clock milliseconds of the compressions that made blobs.
    pub compress_ms: AtomicU64,
    /// Compressor threads running.
    pub workers: AtomicU64,
    pub compressed: AtomicU64,
    pub kept_plain: AtomicU64,
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
            pid: 0,
            queued: 1,
            compressing: 2,
            writing: 3,
            retrying: 9,
            compressed: 4,
            kept_plain: 8,
            failed: 5,
            bytes_before: 6,
            bytes_after: 7,
            ..Default::default()
        };
        let j = s.to_json();
        assert_eq!(
            j,
            "{\"pid\":0,\"queued\":1,\"compressing\":2,\"writing\":3,\"retrying\":9,\"compressed\":4,\"kept_plain\":8,\"failed\":5,\"bytes_before\":6,\"bytes_after\":7,\"model_decodes\":0,\"frames_reused\":0,\"read_ahead\":0,\"jobs\":[],\"eta_secs\":null}\n"
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
