//! Progress of one shard: files and bytes done, rate and time left. A bar when stderr
//! is a terminal; otherwise a log line every [`LOG_EVERY`], which is what a batch
//! scheduler's log collects.

use super::Shard;
use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a log line is written when there is no terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Meter {
    op: &'static str,
    shard: Shard,
    files_total: u64,
    bytes_total: u64,
    files: u64,
    bytes: u64,
    /// Bytes that took real work (not skipped as already done): the rate's numerator.
    worked: u64,
    start: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

impl Meter {
    pub fn new(op: &'static str, shard: Shard, files_total: u64, bytes_total: u64) -> Meter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let pb = ProgressBar::new(bytes_total);
            pb.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            pb.set_prefix(format!("{op} {shard}"));
            pb.enable_steady_tick(Duration::from_millis(500));
            pb
        });
        let now = Instant::now();
        let m = Meter {
            op,
            shard,
            files_total,
            bytes_total,
            files: 0,
            bytes: 0,
            worked: 0,
            start: now,
            last_log: now,
            bar,
        };
        if let Some(b) = &m.bar {
            b.set_message(m.status());
        }
        m
    }

    /// "3/10 files, 1.2 KiB/4.0 KiB, 310 B/s, 10s left".
    pub fn status(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.worked as f64 / secs
        } else {
            0.0
        };
        let left = self.bytes_total.saturating_sub(self.bytes);
        let eta = if left == 0 {
            "done".to_string()
        } else if self.worked > 0 && rate > 0.0 {
            format!(
                "{} left",
                HumanDuration(Duration::from_secs_f64(left as f64 / rate))
            )
        } else {
            "time left unknown".to_string()
        };
        format!(
            "{}/{} files, {}/{}, {}/s, {eta}",
            self.files,
            self.files_total,
            HumanBytes(self.bytes),
            HumanBytes(self.bytes_total),
            HumanBytes(rate as u64)
        )
    }

    /// Counts one file of `size` bytes; `worked` when it was not skipped.
    pub fn done(&mut self, size: u64, worked: bool) {
        self.files += 1;
        self.bytes += size;
        if worked {
            self.worked += size;
        }
        match &self.bar {
            Some(b) => {
                b.set_position(self.bytes.min(self.bytes_total));
                b.set_message(self.status());
            }
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                log::info!("{} {}: {}", self.op, self.shard, self.status());
            }
            None => {}
        }
    }

    /// Logs around the bar (which would otherwise be torn).
    pub fn log(&self, level: log::Level, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| log::log!(level, "{msg}")),
            None => log::log!(level, "{msg}"),
        }
    }

    pub fn finish(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        log::info!(
            "{} {}: {} in {}",
            self.op,
            self.shard,
            self.status(),
            HumanDuration(self.start.elapsed())
        );
    }
}
