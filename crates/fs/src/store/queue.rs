//! The compression queue: inode numbers waiting for a worker, deduplicated, plus the
//! count of jobs in progress (taken from the queue under the same lock, so a waiter
//! never sees a file that is neither queued nor compressing between the two states).

use std::collections::{HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct Inner {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    active: usize,
    shutdown: bool,
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
        if q.set.insert(ino) {
            q.order.push_back(ino);
            self.cv.notify_one();
        }
    }

    /// Waits for the next job and marks it active; `None` after [`WorkQueue::shutdown`].
    pub fn pop(&self) -> Option<u64> {
        let mut q = self.lock();
        loop {
            if q.shutdown {
                return None;
            }
            if let Some(ino) = q.order.pop_front() {
                q.set.remove(&ino);
                q.active += 1;
                return Some(ino);
            }
            q = self.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Ends an active job (popped with [`WorkQueue::pop`]).
    pub fn done(&self) {
        let mut q = self.lock();
        q.active = q.active.saturating_sub(1);
    }

    /// (queued, active).
    pub fn counts(&self) -> (usize, usize) {
        let q = self.lock();
        (q.order.len(), q.active)
    }

    /// Wakes every waiting worker; [`WorkQueue::pop`] returns `None` from now on.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.cv.notify_all();
    }
}
