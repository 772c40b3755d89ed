//! The two kinds of engine job: coding known tokens, and decoding them back. Jobs own
//! their data so they can be handed to a model worker on another thread.

use super::Job;
use crate::Error;
use nc06::codec::{Cdf, Decoder, Encoder};

/// The tokens of one text chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenStream(pub Vec<u32>);

/// One chunk's arithmetic-coded stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CodedStream {
    /// The arithmetic coder's output.
    pub bytes: Vec<u8>,
    /// Tokens it codes.
    pub tokens: u32,
    /// Ideal code length under the quantised CDFs, in bits (for measuring the coder).
    pub ideal_bits: f64,
}

pub(crate) struct EncodeJob {
    tokens: Vec<u32>,
    next: usize,
    enc: Option<Encoder>,
    ideal_bits: f64,
    out: Option<CodedStream>,
}

impl EncodeJob {
    pub fn new(tokens: Vec<u32>) -> Self {
        let mut j = EncodeJob {
            tokens,
            next: 0,
            enc: Some(Encoder::new()),
            ideal_bits: 0.0,
            out: None,
        };
        if j.tokens.is_empty() {
            j.finish();
        }
        j
    }

    fn finish(&mut self) {
        if let Some(enc) = self.enc.take() {
            self.out = Some(CodedStream {
                bytes: enc.finish(),
                tokens: self.tokens.len() as u32,
                ideal_bits: self.ideal_bits,
            });
        }
    }

    /// Back to before the first token.
    fn restart(&mut self) {
        self.next = 0;
        self.enc = Some(Encoder::new());
        self.ideal_bits = 0.0;
        self.out = None;
        if self.tokens.is_empty() {
            self.finish();
        }
    }

    pub fn into_stream(mut self) -> CodedStream {
        self.finish();
        self.out.take().unwrap_or_default()
    }
}

impl Job for EncodeJob {
    fn len(&self) -> u32 {
        self.tokens.len() as u32
    }
    fn done(&self) -> u32 {
        self.next as u32
    }
    fn input(&self, bos: u32) -> u32 {
        if self.next == 0 {
            bos
        } else {
            self.tokens[self.next - 1]
        }
    }
    fn code(&mut self, cdf: &Cdf) -> Result<u32, Error> {
        let t = self.tokens[self.next];
        if t as usize >= cdf.len() {
            return Err(Error::TokenOutOfVocabulary {
                token: t,
                vocab: cdf.len(),
            });
        }
        self.ideal_bits -= cdf.prob(t as usize).log2();
        if let Some(enc) = self.enc.as_mut() {
            enc.encode(cdf, t as usize);
        }
        self.next += 1;
        if self.next == self.tokens.len() {
            self.finish();
        }
        Ok(t)
    }
}

pub(crate) struct DecodeJob {
    dec: Decoder<Vec<u8>>,
    len: u32,
    out: Vec<u32>,
}

impl DecodeJob {
    pub fn new(stream: Vec<u8>, tokens: u32) -> Self {
        DecodeJob {
            dec: Decoder::new(stream),
            len: tokens,
            out: Vec::with_capacity(tokens as usize),
        }
    }

    /// Back to before the first token: the stream is read again from its first bit.
    fn restart(&mut self) {
        let dec = std::mem::replace(&mut self.dec, Decoder::new(Vec::new()));
        self.dec = Decoder::new(dec.into_inner());
        self.out.clear();
    }

    pub fn tokens(&self) -> &[u32] {
        &self.out
    }

    pub fn into_tokens(self) -> TokenStream {
        TokenStream(self.out)
    }
}

impl Job for DecodeJob {
    fn len(&self) -> u32 {
        self.len
    }
    fn done(&self) -> u32 {
        self.out.len() as u32
    }
    fn input(&self, bos: u32) -> u32 {
        self.out.last().copied().unwrap_or(bos)
    }
    fn code(&mut self, cdf: &Cdf) -> Result<u32, Error> {
        let s = self.dec.decode(cdf);
        self.out.push(s as u32);
        Ok(s as u32)
    }
}

/// Either kind of job, as the worker pool carries them.
pub(crate) enum Work {
    Encode(EncodeJob),
    Decode(DecodeJob),
}

impl Work {
    /// Back to before the first token, for a stream taken out of its sequence before
    /// it ended (coded again from the start, it gives the same bits: a stream's
    /// predictions depend on its own tokens only).
    pub fn restart(&mut self) {
        match self {
            Work::Encode(j) => j.restart(),
            Work::Decode(j) => j.restart(),
        }
    }
}

impl Job for Work {
    fn len(&self) -> u32 {
        match self {
            Work::Encode(j) => j.len(),
            Work::Decode(j) => j.len(),
        }
    }
    fn done(&self) -> u32 {
        match self {
            Work::Encode(j) => j.done(),
            Work::Decode(j) => j.done(),
        }
    }
    fn input(&self, bos: u32) -> u32 {
        match self {
            Work::Encode(j) => j.input(bos),
            Work::Decode(j) => j.input(bos),
        }
    }
    fn code(&mut self, cdf: &Cdf) -> Result<u32, Error> {
        match self {
            Work::Encode(j) => j.code(cdf),
            Work::Decode(j) => j.code(cdf),
        }
    }
}
