//! A decoding context of several sequences, the same for every backend: feeds built
//! one way (so every lockstep loop slides alike), one decode call a step, each feed's
//! logits.

use super::llama;
use super::ModelError;
use nc06::Window;

/// One decoding context holding up to `n_seq` independent sequences.
pub struct Session<'m> {
    inner: Inner<'m>,
    window: Window,
    n_seq: u32,
    threads: usize,
}

/// The backend's own context.
pub(super) enum Inner<'m> {
    Llama(llama::Session<'m>),
    Portable {
        s: nacrithfs_portable::Session<'m>,
        /// The threads its matrix products and attention are split over.
        pool: rayon::ThreadPool,
    },
    /// The portable engine on a GPU: the same feeds and bits.
    Device {
        /// Boxed: the session holds the addresses of every weight on the device.
        s: Box<nacrithfs_portable::device::DeviceSession>,
    },
}

/// One token to feed: sequence `seq` at position `pos`. Made only by
/// [`Session::feed`], so every lockstep loop advances and slides positions alike.
#[derive(Clone, Copy, Debug)]
pub struct Feed(FeedOf);

#[derive(Clone, Copy, Debug)]
enum FeedOf {
    Llama(llama::Feed),
    Portable(nacrithfs_portable::Feed),
}

impl Feed {
    /// The sequence this token goes to.
    pub fn seq(&self) -> u32 {
        match self.0 {
            FeedOf::Llama(f) => f.seq,
            FeedOf::Portable(f) => f.seq(),
        }
    }

    /// Its position in the sequence.
    pub fn pos(&self) -> u32 {
        match self.0 {
            FeedOf::Llama(f) => f.pos,
            FeedOf::Portable(f) => f.pos(),
        }
    }
}

impl<'m> Session<'m> {
    pub(super) fn new(inner: Inner<'m>, window: Window, n_seq: u32, threads: usize) -> Self {
        Session {
            inner,
            window,
            n_seq,
            threads,
        }
    }

    /// Sequences the context holds.
    pub fn n_seq(&self) -> u32 {
        self.n_seq
    }

    /// The window of every sequence.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Threads of the context.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The feed that gives `token` to sequence `seq` at its next position, sliding the
    /// sequence's window first when it is full (see `slide`). Every lockstep
    /// loop builds its steps from this, so all of them slide exactly alike; the feeds of
    /// one step go to one [`Session::decode`] call.
    pub fn feed(&mut self, seq: u32, token: u32, logits: bool) -> Result<Feed, ModelError> {
        let n_seq = self.n_seq;
        let no_seq = || ModelError::NoSequence { seq, n_seq };
        match &mut self.inner {
            Inner::Portable { s, .. } => s
                .feed(seq, token, logits)
                .map(|f| Feed(FeedOf::Portable(f)))
                .map_err(|_| no_seq()),
            Inner::Device { s } => s
                .feed(seq, token, logits)
                .map(|f| Feed(FeedOf::Portable(f)))
                .map_err(|e| match e {
                    nacrithfs_portable::device::DeviceStepError::Step(_) => no_seq(),
                    e => ModelError::DeviceStep(e),
                }),
            Inner::Llama(s) => match s.feed(seq, token, logits)? {
                Some(f) => Ok(Feed(FeedOf::Llama(f))),
                None => Err(no_seq()),
            },
        }
    }

    /// Runs one decode call with one token for each listed sequence (each at most once).
    /// Afterwards `logits(i)` holds the prediction after `feeds[i]`.
    pub fn decode(&mut self, feeds: &[Feed]) -> Result<(), ModelError> {
        let portable = || -> Vec<nacrithfs_portable::Feed> {
            feeds
                .iter()
                .filter_map(|f| match f.0 {
                    FeedOf::Portable(f) => Some(f),
                    FeedOf::Llama(_) => None,
                })
                .collect()
        };
        match &mut self.inner {
            Inner::Portable { s, pool } => {
                let fs = portable();
                pool.install(|| s.decode(&fs)).map_err(ModelError::Step)
            }
            Inner::Device { s } => s.decode(&portable()).map_err(ModelError::DeviceStep),
            Inner::Llama(s) => s.decode(feeds.iter().filter_map(|f| match &f.0 {
                FeedOf::Llama(f) => Some(f),
                FeedOf::Portable(_) => None,
            })),
        }
    }

    /// Logits after the `i`-th feed of the last [`Session::decode`] (which must have
    /// asked for them).
    pub fn logits(&self, i: usize) -> &[f32] {
        match &self.inner {
            Inner::Portable { s, .. } => s.logits(i),
            Inner::Device { s } => s.logits(i),
            Inner::Llama(s) => s.logits(i),
        }
    }

    /// Forgets everything of sequence `seq`, so a new stream can start in its cells.
    pub fn clear(&mut self, seq: u32) -> Result<(), ModelError> {
        match &mut self.inner {
            Inner::Portable { s, .. } => {
                s.clear(seq);
                Ok(())
            }
            Inner::Device { s } => {
                s.clear(seq);
                Ok(())
            }
            Inner::Llama(s) => s.clear(seq),
        }
    }
}
