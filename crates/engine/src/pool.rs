//! The model workers. Each worker thread owns one llama.cpp context holding up to
//! `streams` sequences and feeds it exactly one token per active stream per decode call
//! (the determinism rule). Tasks — one text chunk to encode or decode — arrive over a
//! channel from any number of callers, so chunks of one file and of different files are
//! coded side by side; a finished stream's sequence is cleared and the next waiting
//! task takes it over at once (continuous batching).
//!
//! Foreground tasks go before background ones (see [`crate::Priority`]): a context is sized
//! for the foreground tasks waiting when it starts, background tasks fill the
//! sequences left free, and a foreground task that finds no free sequence takes one
//! from a background stream, which is queued again to start over.
//!
//! The CPU side of a step (softmax, CDF, coding, ensemble) runs on all streams in
//! parallel (rayon), so it does not become the bottleneck when the model is fast.

use super::jobs::Work;
use super::Job;
use crate::cpu_share::{share_of, CpuShare};
use crate::model::{Model, Session};
use crate::Error;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nc06::predict::{Predictor, PredictorConfig};
use nc06::Window;
use rayon::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One chunk to code, and where to report.
pub(crate) struct Task {
    pub id: usize,
    pub work: Work,
    pub window: Window,
    pub predictor: PredictorConfig,
    pub priority: crate::Priority,
    pub reply: Sender<Reply>,
    /// Set by the caller once any task of its request failed: the rest are dropped.
    pub cancel: Arc<AtomicBool>,
}

/// What a worker tells the caller of a task.
pub(crate) enum Reply {
    /// Tokens coded since the last report.
    Progress(u64),
    /// The task was taken out of its sequence after reporting this many tokens, and
    /// starts over.
    Restarted(u64),
    Done {
        id: usize,
        result: Result<Work, Error>,
        cost: Cost,
    },
}

/// A task's share of the work: decode calls are shared by every stream in them, so each
/// stream is charged its fraction of each call.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cost {
    pub model_secs: f64,
    pub cpu_secs: f64,
    pub skipped: u64,
}

/// Seconds a worker keeps an idle context (and its KV cache memory) for the next task.
const IDLE_RELEASE: Duration = Duration::from_secs(10);
/// Fewer streams than this code their CPU side on the worker thread alone.
const PARALLEL_MIN_STREAMS: usize = 4;

/// Whether the CPU side of a step runs in parallel. On a GPU it must (a decode call takes
/// a few ms, as long as the CPU side of 16 streams). On a CPU-only build it must not:
/// llama.cpp's OpenMP threads spin between calls on every core, the CPU side is ~2 % of
/// a step, and parallel work there only fights the spinning threads.
/// `NACRITHFS_PARALLEL_CPU=0|1` overrides (for measurements).
fn parallel_cpu(model: &Model) -> bool {
    static V: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        std::env::var("NACRITHFS_PARALLEL_CPU")
            .ok()
            .map(|v| v == "1")
    })
    .unwrap_or(model.offloaded())
}

pub(crate) struct Pool {
    tx: Option<Sender<Vec<Task>>>,
    workers: Vec<JoinHandle<()>>,
    /// Background streams taken out of their sequence for foreground work.
    restarted: Arc<AtomicU64>,
}

impl Pool {
    pub fn start(model: Arc<Model>, workers: usize, streams: u32) -> Result<Pool, Error> {
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<Task>>();
        let restarted = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let (model, rx, restarted) = (model.clone(), rx.clone(), restarted.clone());
            let h = std::thread::Builder::new()
                .name(format!("model-{i}"))
                .spawn(move || {
                    Worker {
                        model: &model,
                        rx,
                        streams: streams.max(1),
                        restarted,
                    }
                    .run()
                })
                .map_err(Error::WorkerSpawn)?;
            handles.push(h);
        }
        Ok(Pool {
            tx: Some(tx),
            workers: handles,
            restarted,
        })
    }

    /// Background streams taken out of their sequence for foreground work so far.
    pub fn restarted(&self) -> u64 {
        self.restarted.load(Ordering::Relaxed)
    }

    /// Hands tasks to the workers: split into one group per worker, so a large request
    /// spreads over all of them while each group still fills one batch.
    pub fn submit(&self, tasks: Vec<Task>) -> Result<(), Error> {
        let tx = self.tx.as_ref().ok_or(Error::Stopped)?;
        let n = self.workers.len().max(1);
        let mut groups: Vec<Vec<Task>> = (0..n).map(|_| Vec::new()).collect();
        for (i, t) in tasks.into_iter().enumerate() {
            groups[i % n].push(t);
        }
        for g in groups.into_iter().filter(|g| !g.is_empty()) {
            tx.send(g).map_err(|_| Error::Stopped)?;
        }
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A stream in a sequence of the context.
struct Slot {
    task: Task,
    predictor: Predictor,
    wants_logits: bool,
    cost: Cost,
    /// Tokens coded since progress was last reported.
    unreported: u64,
}

/// Puts foreground tasks before background ones, each kind in its order of arrival
/// (a background task may have become foreground work since it was queued).
fn order(waiting: &mut VecDeque<Task>) {
    let mut seen_background = false;
    let unordered = waiting.iter().any(|t| {
        let background = t.priority.is_background();
        seen_background |= background;
        seen_background && !background
    });
    if unordered {
        // Each priority read once, so the split is consistent.
        let (fore, back): (VecDeque<Task>, VecDeque<Task>) = std::mem::take(waiting)
            .into_iter()
            .partition(|t| !t.priority.is_background());
        *waiting = fore;
        waiting.extend(back);
    }
}

/// A context and the streams in it.
struct Batch<'m> {
    session: Session<'m>,
    slots: Vec<Option<Slot>>,
}

impl Batch<'_> {
    fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

struct Worker<'m> {
    model: &'m Model,
    rx: Receiver<Vec<Task>>,
    streams: u32,
    restarted: Arc<AtomicU64>,
}

fn fail(task: Task, e: Error, cost: Cost) {
    let _ = task.reply.send(Reply::Done {
        id: task.id,
        result: Err(e),
        cost,
    });
}

fn finish(slot: Slot) {
    let Slot {
        task,
        mut cost,
        predictor,
        unreported,
        ..
    } = slot;
    cost.skipped = predictor.skipped();
    if unreported > 0 {
        let _ = task.reply.send(Reply::Progress(unreported));
    }
    let Task {
        id, work, reply, ..
    } = task;
    let _ = reply.send(Reply::Done {
        id,
        result: Ok(work),
        cost,
    });
}

impl<'m> Worker<'m> {
    /// The threads for a batch that starts now: the model's, or on a CPU with the
    /// thread count left to the machine, this worker's share of the cores beside the
    /// other model workers decoding now (see [`crate::cpu_share`]). Marks this worker
    /// as decoding in `share`, until it goes idle.
    fn claim_threads(&self, share: &mut Option<CpuShare>) -> usize {
        let all = self.model.threads();
        match share {
            Some(s) => {
                let n = share_of(all, s.others_active());
                s.begin();
                n
            }
            None => all,
        }
    }

    fn run(self) {
        let mut waiting: VecDeque<Task> = VecDeque::new();
        let mut batch: Option<Batch<'m>> = None;
        let mut share = (self.model.auto_threads() && !self.model.offloaded())
            .then(CpuShare::join)
            .flatten();
        loop {
            let active = batch.as_ref().map_or(0, Batch::active);
            if active == 0 && waiting.is_empty() {
                // Idle: no OpenMP team is kept waiting (see `release_threads`), and the
                // cores are left to other processes.
                if self.rx.is_empty() {
                    crate::model::release_threads();
                    if let Some(s) = share.as_mut() {
                        s.end();
                    }
                }
                let msg = if batch.is_some() {
                    match self.rx.recv_timeout(IDLE_RELEASE) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => {
                            batch = None; // give the KV cache memory back while idle
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                } else {
                    match self.rx.recv() {
                        Ok(m) => m,
                        Err(_) => return,
                    }
                };
                waiting.extend(msg);
            }
            // Take more work only when there is room for it, so an idle worker can have it.
            let room = batch
                .as_ref()
                .map_or(self.streams as usize, |b| b.slots.len() - active);
            if waiting.len() < room {
                while let Ok(m) = self.rx.try_recv() {
                    waiting.extend(m);
                    if waiting.len() >= room {
                        break;
                    }
                }
            }
            drop_cancelled(&mut waiting);
            order(&mut waiting);
            if active == 0 {
                let Some(head) = waiting.front() else {
                    continue;
                };
                // Sized for the head's kind: background work never makes foreground
                // work run in a larger (slower) batch.
                let (window, background) = (head.window, head.priority.is_background());
                let want = waiting
                    .iter()
                    .filter(|t| t.window == window && t.priority.is_background() == background)
                    .count()
                    .min(self.streams as usize) as u32;
                let threads = self.claim_threads(&mut share);
                let fits = batch.as_ref().is_some_and(|b| {
                    b.session.window() == window
                        && b.session.n_seq() >= want
                        && b.session.threads() == threads
                });
                if !fits {
                    batch = None; // free the old KV cache before allocating the new one
                    match self.model.session_with_threads(want, window, threads) {
                        Ok(session) => {
                            batch = Some(Batch {
                                session,
                                slots: (0..want).map(|_| None).collect(),
                            })
                        }
                        Err(e) => {
                            // No context for this window: its tasks cannot run here.
                            let e = Arc::new(Error::Model(e));
                            log::error!("model worker: {e}");
                            let (doomed, rest): (VecDeque<Task>, VecDeque<Task>) =
                                std::mem::take(&mut waiting)
                                    .into_iter()
                                    .partition(|t| t.window == window);
                            waiting = rest;
                            for t in doomed {
                                fail(t, Error::Shared(e.clone()), Cost::default());
                            }
                            continue;
                        }
                    }
                }
            }
            let Some(b) = batch.as_mut() else { continue };
            let admitted = preempt(b, &mut waiting, &self.restarted).and_then(|()| {
                self.admit(b, &mut waiting);
                self.step(b)
            });
            if let Err(e) = admitted {
                // The context is in an unknown state: fail its streams and start afresh.
                let e = Arc::new(e);
                for s in b.slots.iter_mut().filter_map(Option::take) {
                    fail(s.task, Error::Shared(e.clone()), s.cost);
                }
                batch = None;
            }
        }
    }

    /// Moves waiting tasks for this context's window into its free sequences.
    fn admit(&self, b: &mut Batch<'m>, waiting: &mut VecDeque<Task>) {
        for slot in b.slots.iter_mut().filter(|s| s.is_none()) {
            // In order: a task for another window waits until this batch drains.
            if waiting
                .front()
                .is_none_or(|t| t.window != b.session.window())
            {
                break;
            }
            let Some(task) = waiting.pop_front() else {
                break;
            };
            let predictor = Predictor::new(self.model.n_vocab(), task.predictor);
            *slot = Some(Slot {
                task,
                predictor,
                wants_logits: true,
                cost: Cost::default(),
                unreported: 0,
            });
        }
    }

    /// One decode call for every active stream, then each stream codes its token.
    fn step(&self, b: &mut Batch<'m>) -> Result<(), Error> {
        let bos = self.model.bos();
        let mut feeds = Vec::with_capacity(b.slots.len());
        for (seq, slot) in b.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            if s.task.cancel.load(Ordering::Relaxed) {
                b.session.clear(seq as u32)?;
                if let Some(s) = slot.take() {
                    fail(s.task, Error::Cancelled, s.cost);
                }
                continue;
            }
            s.wants_logits = s.predictor.prepare();
            feeds.push(
                b.session
                    .feed(seq as u32, s.task.work.input(bos), s.wants_logits)?,
            );
        }
        if feeds.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        b.session.decode(&feeds)?;
        let model_share = t0.elapsed().as_secs_f64() / feeds.len() as f64;

        // Row i of the call belongs to sequence feeds[i].seq.
        let session = &b.session;
        let mut rows: Vec<(&mut Slot, Option<&[f32]>)> = Vec::with_capacity(feeds.len());
        for (row, s) in b.slots.iter_mut().flatten().enumerate() {
            let logits = s.wants_logits.then(|| session.logits(row));
            rows.push((s, logits));
        }
        let code = |(s, logits): &mut (&mut Slot, Option<&[f32]>)| -> Result<(), Error> {
            let t = Instant::now();
            let cdf = s.predictor.predict(*logits);
            let token = s.task.work.code(cdf)?;
            s.predictor.update(token);
            s.unreported += 1;
            s.cost.model_secs += model_share;
            s.cost.cpu_secs += t.elapsed().as_secs_f64();
            Ok(())
        };
        let results: Vec<Result<(), Error>> =
            if rows.len() >= PARALLEL_MIN_STREAMS && parallel_cpu(self.model) {
                rows.par_iter_mut().map(code).collect()
            } else {
                rows.iter_mut().map(code).collect()
            };
        drop(rows);

        let mut results = results.into_iter();
        for (seq, slot) in b.slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            let r = results.next().unwrap_or(Ok(()));
            let ended = r.is_err() || s.task.work.done() == s.task.work.len();
            if s.unreported >= 64 && !ended {
                let _ = s.task.reply.send(Reply::Progress(s.unreported));
                s.unreported = 0;
            }
            if ended {
                b.session.clear(seq as u32)?;
                if let Some(s) = slot.take() {
                    match r {
                        Ok(()) => finish(s),
                        Err(e) => fail(s.task, e, s.cost),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Frees a sequence for each foreground task waiting for this context's window that
/// finds none free, by taking background streams out (the last first) and queueing
/// them again behind the foreground tasks, to start over.
fn preempt(
    b: &mut Batch<'_>,
    waiting: &mut VecDeque<Task>,
    restarted: &AtomicU64,
) -> Result<(), Error> {
    let window = b.session.window();
    let foreground = waiting
        .iter()
        .take_while(|t| !t.priority.is_background() && t.window == window)
        .count();
    let free = b.slots.iter().filter(|s| s.is_none()).count();
    let mut need = foreground.saturating_sub(free);
    for seq in (0..b.slots.len()).rev() {
        if need == 0 {
            break;
        }
        let background = b.slots[seq]
            .as_ref()
            .is_some_and(|s| s.task.priority.is_background());
        if !background {
            continue;
        }
        // Cleared first: if that fails, the stream is still in its slot, and the
        // caller fails every stream of the context.
        b.session.clear(seq as u32)?;
        let Some(s) = b.slots[seq].take() else {
            continue;
        };
        let reported = u64::from(s.task.work.done()) - s.unreported;
        let mut task = s.task;
        let _ = task.reply.send(Reply::Restarted(reported));
        task.work.restart();
        let at = waiting
            .iter()
            .take_while(|t| !t.priority.is_background())
            .count();
        waiting.insert(at, task);
        restarted.fetch_add(1, Ordering::Relaxed);
        need -= 1;
    }
    Ok(())
}

/// Fails waiting tasks whose request was cancelled, so their callers stop waiting.
fn drop_cancelled(waiting: &mut VecDeque<Task>) {
    if waiting.iter().any(|t| t.cancel.load(Ordering::Relaxed)) {
        let (gone, keep): (VecDeque<Task>, VecDeque<Task>) = std::mem::take(waiting)
            .into_iter()
            .partition(|t| t.cancel.load(Ordering::Relaxed));
        *waiting = keep;
        for t in gone {
            fail(t, Error::Cancelled, Cost::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::DecodeJob;
    use crate::Priority;

    fn task(id: usize, priority: Priority) -> Task {
        let (reply, _) = crossbeam_channel::unbounded();
        Task {
            id,
            work: Work::Decode(DecodeJob::new(Vec::new(), 0)),
            window: Window::default(),
            predictor: PredictorConfig::default(),
            priority,
            reply,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    fn ids(w: &VecDeque<Task>) -> Vec<usize> {
        w.iter().map(|t| t.id).collect()
    }

    #[test]
    fn foreground_goes_first_and_a_wanted_background_task_becomes_foreground() {
        let wanted = Arc::new(AtomicBool::new(false));
        let mut w: VecDeque<Task> = [
            task(0, Priority::Background(wanted.clone())),
            task(1, Priority::background()),
            task(2, Priority::Foreground),
            task(3, Priority::Background(wanted.clone())),
            task(4, Priority::Foreground),
        ]
        .into_iter()
        .collect();
        order(&mut w);
        assert_eq!(ids(&w), [2, 4, 0, 1, 3]);
        // A reader now waits for 0 and 3: they join the foreground, in their order.
        wanted.store(true, Ordering::Relaxed);
        order(&mut w);
        assert_eq!(ids(&w), [2, 4, 0, 3, 1]);
    }
}
