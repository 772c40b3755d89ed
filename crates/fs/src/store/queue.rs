//! The compression queue: inode numbers waiting for a worker, deduplicated, plus the
//! count of jobs in progress (taken from the queue under the same lock, so a waiter
//! never sees a file that is neither queued nor compressing between the two states),
//! files that changed a moment ago, waiting to settle, and files waiting to be retried
//! after a failure.

use std::collections::{HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    /// Failed files and when to try them again.
    later: Vec<(Instant, u64)>,
    /// Files that changed, and when they will have been left alone long enough to be
    /// compressed; another change moves the time on.
    settling: Vec<(Instant, u64)>,
    active: usize,
    shutdown: bool,
}

impl Inner {
    /// Moves the retries and settled files that are due into the queue.
    fn promote(&mut self, now: Instant) {
        for waiting in [&mut self.later, &mut self.settling] {
            let mut i = 0;
            while i < waiting.len() {
                if waiting[i].0 <= now {
                    let (_, ino) = waiting.swap_remove(i);
                    if self.set.insert(ino) {
                        self.order.push_back(ino);
                    }
                } else {
                    i += 1;
                }
            }
        }
    }

    /// When the next retry or settled file is due.
    fn next_due(&self) -> Option<Instant> {
        self.later
            .iter()
            .chain(&self.settling)
            .map(|&(t, _)| t)
            .min()
    }
}

/// What the queue holds, for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Files waiting for a worker, or to settle first.
    pub queued: usize,
    /// Files being compressed.
    pub active: usize,
    /// Files that failed, waiting to be tried again.
    pub retrying: usize,
}

/// Files waiting for a compressor, deduplicated, and the jobs in progress.
#[derive(Default)]
pub struct WorkQueue {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl WorkQueue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `ino` unless it is already queued.
    pub fn push(&self, ino: u64) {
        let mut q = self.lock();
        q.later.retain(|&(_, i)| i != ino);
        q.settling.retain(|&(_, i)| i != ino);
        if q.set.insert(ino) {
            q.order.push_back(ino);
            self.cv.notify_one();
        }
    }

    /// Queues `ino`, which just changed, once it has been left alone for `settle`
    /// (at once if that is zero): a file written again and again (a log, an editor's
    /// saves) is compressed once it is quiet, not once a change, each compression
    /// given up when the next change comes. A change moves the time on, and takes the
    /// file out of the queue if it is waiting there.
    pub fn push_settled(&self, ino: u64, settle: Duration) {
        if settle.is_zero() {
            return self.push(ino);
        }
        let mut q = self.lock();
        q.later.retain(|&(_, i)| i != ino);
        if q.set.remove(&ino) {
            q.order.retain(|&i| i != ino);
        }
        let due = Instant::now() + settle;
        match q.settling.iter_mut().find(|(_, i)| *i == ino) {
            Some(s) => s.0 = due,
            None => q.settling.push((due, ino)),
        }
        self.cv.notify_all();
    }

    /// Queues `ino` again after `delay` (a retry after a failure), unless it is queued.
    pub fn push_after(&self, ino: u64, delay: Duration) {
        let mut q = self.lock();
        let waiting = |w: &[(Instant, u64)]| w.iter().any(|&(_, i)| i == ino);
        if q.set.contains(&ino) || waiting(&q.later) || waiting(&q.settling) {
            return;
        }
        q.later.push((Instant::now() + delay, ino));
        self.cv.notify_all();
    }

    /// Waits for the next job and marks it active; `None` after [`WorkQueue::shutdown`].
    pub fn pop(&self) -> Option<u64> {
        let mut q = self.lock();
        loop {
            if q.shutdown {
                return None;
            }
            let now = Instant::now();
            q.promote(now);
            if let Some(ino) = q.order.pop_front() {
                q.set.remove(&ino);
                q.active += 1;
                return Some(ino);
            }
            q = match q.next_due() {
                Some(t) => {
                    self.cv
                        .wait_timeout(q, t.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.cv.wait(q).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// Ends an active job (popped with [`WorkQueue::pop`]).
    pub fn done(&self) {
        let mut q = self.lock();
        q.active = q.active.saturating_sub(1);
    }

    /// What is queued, active and waiting for a retry.
    pub fn counts(&self) -> QueueCounts {
        let q = self.lock();
        QueueCounts {
            queued: q.order.len() + q.settling.len(),
            active: q.active,
            retrying: q.later.len(),
        }
    }

    /// Wakes every waiting worker; [`WorkQueue::pop`] returns `None` from now on.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_back_when_due_and_a_push_overtakes_them() {
        let q = WorkQueue::default();
        q.push_after(7, Duration::from_millis(50));
        assert_eq!(
            q.counts(),
            QueueCounts {
                queued: 0,
                active: 0,
                retrying: 1
            }
        );
        let t = Instant::now();
        assert_eq!(q.pop(), Some(7));
        assert!(t.elapsed() >= Duration::from_millis(45));
        q.done();
        q.push_after(8, Duration::from_secs(3600));
        q.push(8);
        assert_eq!(q.counts().retrying, 0);
        assert_eq!(q.pop(), Some(8));
    }

    #[test]
    fn a_file_that_changes_again_waits_until_it_is_left_alone() {
        let q = WorkQueue::default();
        let t = Instant::now();
        q.push(3);
        q.push_settled(5, Duration::from_millis(60));
        // A queued file that changes goes back to settling.
        q.push_settled(3, Duration::from_millis(60));
        assert_eq!(q.counts().queued, 2, "settling files count as queued");
        std::thread::sleep(Duration::from_millis(30));
        q.push_settled(5, Duration::from_millis(60));
        let first = q.pop();
        assert_eq!(first, Some(3));
        assert!(t.elapsed() >= Duration::from_millis(55));
        q.done();
        assert_eq!(q.pop(), Some(5));
        assert!(
            t.elapsed() >= Duration::from_millis(85),
            "the second change moved it on"
        );
        q.done();
        // With no settling time, at once.
        q.push_settled(9, Duration::ZERO);
        assert_eq!(q.counts().queued, 1);
        assert_eq!(q.pop(), Some(9));
    }
}
