//! Decoding sessions: up to `n_seq` independent sequences, each with its own f16 key
//! and value cache of `window.ctx` positions, stepped together one token each per
//! [`Session::decode`] call.
//!
//! Every output of a step is computed from its own sequence's data alone, in an order
//! that does not depend on the other sequences, the thread count or the instruction
//! set, so a sequence gives the same logits alone or in any batch (docs/ENGINE.md).

use crate::model::Model;
use crate::num::{exp_neg, f16_to_f32, f32_to_f16, round_f16, sin_cos_f64};
use crate::quant::QuantAct;
use nc06::codec::fixed_sum;
use nc06::simd::{run_on, Isa};
use nc06::Window;
use rayon::prelude::*;

/// One token to feed: sequence `seq` at position `pos`. Made only by
/// [`Session::feed`], so every loop advances and slides positions alike.
#[derive(Clone, Copy, Debug)]
pub struct Feed {
    pub(crate) seq: u32,
    pub(crate) token: u32,
    pub(crate) pos: u32,
    pub(crate) logits: bool,
}

impl Feed {
    /// The sequence this token goes to.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Its position in the sequence.
    pub fn pos(&self) -> u32 {
        self.pos
    }
}

/// What a step was asked that it cannot do.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A feed for a sequence the session does not have.
    #[error("sequence {seq} of a session with {n_seq}")]
    NoSequence {
        /// The sequence asked for.
        seq: u32,
        /// Sequences in the session.
        n_seq: u32,
    },
    /// A token outside the vocabulary.
    #[error("token {token} of a vocabulary of {vocab}")]
    Token {
        /// The token.
        token: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// Two feeds for one sequence in one call.
    #[error("sequence {0} fed twice in one step")]
    Twice(u32),
}

/// One sequence's cache: keys as `[layer][kv head][dim][position]` (positions
/// contiguous, so a score loop runs over positions) and values as `[layer][kv head]
/// [position][dim]`, both f16.
struct Cache {
    k: Vec<u16>,
    v: Vec<u16>,
}

/// A decoding session over a [`Model`].
pub struct Session<'m> {
    model: &'m Model,
    isa: Isa,
    positions: Positions,
    caches: Vec<Cache>,
    /// RoPE's inverse frequencies, one per pair of a head's dims.
    inv_freq: Vec<f64>,
    /// The last step's logits.
    out: Outputs,
    /// The step's activations, kept between steps: allocated afresh, buffers this size
    /// come from mmap and their zeroed pages cost more than a step's arithmetic at 64
    /// streams.
    buf: Box<Buffers>,
}

/// Room for a step of up to `n_seq` feeds.
struct Buffers {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    act: QuantAct,
    act_ff: QuantAct,
}

impl Buffers {
    fn new(c: &crate::Config, n: usize) -> Buffers {
        let (d, kvd, ff) = (c.dim, c.kv_dim(), c.ff);
        Buffers {
            x: vec![0.0; n * d],
            h: vec![0.0; n * d],
            q: vec![0.0; n * d],
            k: vec![0.0; n * kvd],
            v: vec![0.0; n * kvd],
            att: vec![0.0; n * d],
            o: vec![0.0; n * d],
            g: vec![0.0; n * ff],
            u: vec![0.0; n * ff],
            act: QuantAct::new(n, d),
            act_ff: QuantAct::new(n, ff),
        }
    }
}

impl Model {
    /// A session of `n_seq` sequences of `window.ctx` positions, its loops compiled for
    /// `isa` (which changes the speed, never the bits).
    pub fn session(&self, n_seq: u32, window: Window, isa: Isa) -> Session<'_> {
        let c = &self.cfg;
        let n_seq = n_seq.max(1);
        let per = c.layers * c.kv_dim() * window.ctx as usize;
        let caches = (0..n_seq)
            .map(|_| Cache {
                k: vec![0; per],
                v: vec![0; per],
            })
            .collect();
        let inv_freq = inv_freq(c);
        Session {
            model: self,
            isa,
            positions: Positions::new(n_seq, window),
            caches,
            inv_freq,
            out: Outputs::default(),
            buf: Box::new(Buffers::new(c, n_seq as usize)),
        }
    }
}

/// RoPE's inverse frequencies, one per pair of a head's dims: base^(-2i/d) =
/// e^(-(2i/d) ln base), in our own f64 exp and ln.
pub(crate) fn inv_freq(c: &crate::Config) -> Vec<f64> {
    let ln_base = crate::num::ln_f64(c.rope_base);
    (0..c.head_dim / 2)
        .map(|i| crate::num::exp_f64(-((2 * i) as f64 / c.head_dim as f64) * ln_base))
        .collect()
}

/// Each sequence's next position, and where a full window slides: the bookkeeping
/// that every implementation of a session shares, so they feed and slide alike.
pub(crate) struct Positions {
    window: Window,
    next: Vec<u32>,
}

impl Positions {
    pub(crate) fn new(n_seq: u32, window: Window) -> Positions {
        Positions {
            window,
            next: vec![0; n_seq as usize],
        }
    }

    /// Sequences there are.
    pub(crate) fn n_seq(&self) -> u32 {
        self.next.len() as u32
    }

    /// The window of every sequence.
    pub(crate) fn window(&self) -> Window {
        self.window
    }

    /// The feed of `token` to `seq` at its next position, and whether its window must
    /// slide first (the caller slides it).
    pub(crate) fn feed(
        &mut self,
        seq: u32,
        token: u32,
        logits: bool,
    ) -> Result<(Feed, bool), StepError> {
        let n_seq = self.n_seq();
        let next = self
            .next
            .get_mut(seq as usize)
            .ok_or(StepError::NoSequence { seq, n_seq })?;
        let w = self.window;
        let slid = *next >= w.ctx;
        let pos = if slid { w.ctx - w.slide } else { *next };
        *next = pos + 1;
        let feed = Feed {
            seq,
            token,
            pos,
            logits,
        };
        Ok((feed, slid))
    }

    pub(crate) fn clear(&mut self, seq: u32) {
        if let Some(p) = self.next.get_mut(seq as usize) {
            *p = 0;
        }
    }
}

/// The last step's logits, a row for each feed that asked for them: what every
/// implementation of a session keeps, so they answer `logits(i)` alike.
#[derive(Default)]
pub(crate) struct Outputs {
    /// `[row][vocab]`, written by the step.
    pub(crate) logits: Vec<f32>,
    /// For each feed of the last step, its row in `logits`.
    rows: Vec<Option<usize>>,
}

impl Outputs {
    /// Forgets the last step's rows (a step that fails or has no feeds has none).
    pub(crate) fn clear(&mut self) {
        self.rows.clear();
    }

    /// The feeds of a step that want logits, in order; each gets the next row.
    pub(crate) fn plan(&mut self, feeds: &[Feed]) -> Vec<usize> {
        let want: Vec<usize> = (0..feeds.len()).filter(|&i| feeds[i].logits).collect();
        self.rows = vec![None; feeds.len()];
        for (r, &i) in want.iter().enumerate() {
            self.rows[i] = Some(r);
        }
        want
    }

    /// The logits after feed `i` of the last step (empty when it did not ask for them).
    pub(crate) fn get(&self, i: usize, vocab: usize) -> &[f32] {
        match self.rows.get(i).copied().flatten() {
            Some(r) => &self.logits[r * vocab..(r + 1) * vocab],
            None => &[],
        }
    }
}

/// Checks a step's feeds: known sequences, each at most once, tokens in the vocabulary.
pub(crate) fn check(feeds: &[Feed], n_seq: u32, vocab: usize) -> Result<(), StepError> {
    let mut seen = vec![false; n_seq as usize];
    for f in feeds {
        if f.token as usize >= vocab {
            return Err(StepError::Token {
                token: f.token,
                vocab,
            });
        }
        let s = seen
            .get_mut(f.seq as usize)
            .ok_or(StepError::NoSequence { seq: f.seq, n_seq })?;
        if std::mem::replace(s, true) {
            return Err(StepError::Twice(f.seq));
        }
    }
    Ok(())
}

/// RMSNorm: y = (x * 1/sqrt(mean(x^2) + eps)) * w, the squares summed in f64 in order.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mut ss = 0.0f64;
    for &v in x {
        ss += (v * v) as f64;
    }
    let mean = (ss / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * w;
    }
}

/// (cos, sin) of `pos * inv_freq[i]` for each pair i, rounded to f32.
pub(crate) fn rope_cs(inv_freq: &[f64], pos: f64, out: &mut Vec<(f32, f32)>) {
    out.clear();
    out.extend(inv_freq.iter().map(|&f| {
        let (s, c) = sin_cos_f64(pos * f);
        (c as f32, s as f32)
    }));
}

/// Rotates each head of `x` (width `hd`) pair by pair: (x0 c - x1 s, x0 s + x1 c).
fn rope(x: &mut [f32], hd: usize, cs: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(hd) {
        for (p, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
            let (x0, x1) = (p[0], p[1]);
            p[0] = x0 * c - x1 * s;
            p[1] = x0 * s + x1 * c;
        }
    }
}

impl Session<'_> {
    /// Sequences the session holds.
    pub fn n_seq(&self) -> u32 {
        self.positions.n_seq()
    }

    /// The window of every sequence.
    pub fn window(&self) -> Window {
        self.positions.window()
    }

    /// The feed that gives `token` to sequence `seq` at its next position, sliding the
    /// sequence's window first when it is full (see [`Session::clear`] and the slide in
    /// docs/ENGINE.md).
    pub fn feed(&mut self, seq: u32, token: u32, logits: bool) -> Result<Feed, StepError> {
        let (feed, slid) = self.positions.feed(seq, token, logits)?;
        if slid {
            self.slide(seq as usize);
        }
        Ok(feed)
    }

    /// Forgets sequence `seq`, so a new stream can start in it.
    pub fn clear(&mut self, seq: u32) {
        self.positions.clear(seq);
    }

    /// Logits after the `i`-th feed of the last [`Session::decode`] (which must have
    /// asked for them; empty otherwise).
    pub fn logits(&self, i: usize) -> &[f32] {
        self.out.get(i, self.model.cfg.vocab)
    }

    /// Drops positions `1..1 + slide` of sequence `i` (position 0, the BOS, stays as
    /// the attention sink) and moves the rest down by `slide`, turning each moved key
    /// back by `slide` positions and rounding it to f16 again.
    fn slide(&mut self, i: usize) {
        let c = &self.model.cfg;
        let w = self.window();
        let (ctx, s) = (w.ctx as usize, w.slide as usize);
        let mut cs = Vec::new();
        rope_cs(&self.inv_freq, -(s as f64), &mut cs);
        let hd = c.head_dim;
        let cache = &mut self.caches[i];
        for block in cache.k.chunks_exact_mut(hd * ctx) {
            for row in block.chunks_exact_mut(ctx) {
                row.copy_within(1 + s..ctx, 1);
            }
            for (pair, &(co, si)) in block.chunks_exact_mut(2 * ctx).zip(&cs) {
                let (r0, r1) = pair.split_at_mut(ctx);
                for (a, b) in r0[1..ctx - s].iter_mut().zip(&mut r1[1..ctx - s]) {
                    let (x0, x1) = (f16_to_f32(*a), f16_to_f32(*b));
                    *a = f32_to_f16(x0 * co - x1 * si);
                    *b = f32_to_f16(x0 * si + x1 * co);
                }
            }
        }
        for block in cache.v.chunks_exact_mut(hd * ctx) {
            block.copy_within((1 + s) * hd..ctx * hd, hd);
        }
    }

    /// Runs one step: one token for each listed sequence (each at most once).
    /// Afterwards [`Session::logits`]`(i)` holds the prediction after `feeds[i]`.
    pub fn decode(&mut self, feeds: &[Feed]) -> Result<(), StepError> {
        let m = self.model;
        let c = &m.cfg;
        let n = feeds.len();
        check(feeds, self.n_seq(), c.vocab)?;
        self.out.clear();
        if n == 0 {
            return Ok(());
        }
        let (d, kvd, hd, ff) = (c.dim, c.kv_dim(), c.head_dim, c.ff);
        let ctx = self.window().ctx as usize;
        let isa = self.isa;

        let b = &mut self.buf;
        let (x, h, q) = (&mut b.x[..n * d], &mut b.h[..n * d], &mut b.q[..n * d]);
        let (k, v) = (&mut b.k[..n * kvd], &mut b.v[..n * kvd]);
        let (att, o) = (&mut b.att[..n * d], &mut b.o[..n * d]);
        let (g, u) = (&mut b.g[..n * ff], &mut b.u[..n * ff]);
        let (act, act_ff) = (&mut b.act, &mut b.act_ff);
        for (xs, f) in x.chunks_exact_mut(d).zip(feeds) {
            m.embd.dequant_row(f.token as usize, xs);
        }
        let mut cs = Vec::new();
        let rope_of: Vec<Vec<(f32, f32)>> = feeds
            .iter()
            .map(|f| {
                rope_cs(&self.inv_freq, f.pos as f64, &mut cs);
                cs.clone()
            })
            .collect();
        let group = c.heads / c.kv_heads;
        let scale = 1.0f32 / (hd as f32).sqrt();

        for (li, layer) in m.layers.iter().enumerate() {
            for (xs, hs) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                rms_norm(xs, &layer.attn_norm, c.eps, hs);
            }
            act.set(h, isa);
            layer.wq.mul(act, q, isa);
            layer.wk.mul(act, k, isa);
            layer.wv.mul(act, v, isa);
            for (i, f) in feeds.iter().enumerate() {
                let cs = &rope_of[i];
                rope(&mut q[i * d..(i + 1) * d], hd, cs);
                rope(&mut k[i * kvd..(i + 1) * kvd], hd, cs);
                let cache = &mut self.caches[f.seq as usize];
                let p = f.pos as usize;
                for gi in 0..c.kv_heads {
                    let kb = (li * c.kv_heads + gi) * hd * ctx;
                    for di in 0..hd {
                        cache.k[kb + di * ctx + p] = f32_to_f16(k[i * kvd + gi * hd + di]);
                    }
                    let vb = kb + p * hd;
                    for di in 0..hd {
                        cache.v[vb + di] = f32_to_f16(v[i * kvd + gi * hd + di]);
                    }
                }
            }
            // Attention: one task per (feed, head), each reading its own sequence.
            let caches = &self.caches;
            let q = &*q;
            att.par_chunks_mut(hd).enumerate().for_each(|(t, out)| {
                let (i, head) = (t / c.heads, t % c.heads);
                let f = &feeds[i];
                let cache = &caches[f.seq as usize];
                let kb = (li * c.kv_heads + head / group) * hd * ctx;
                let qh = &q[i * d + head * hd..i * d + (head + 1) * hd];
                run_on(
                    isa,
                    #[inline(always)]
                    || {
                        attend(
                            qh,
                            &cache.k[kb..kb + hd * ctx],
                            &cache.v[kb..kb + hd * ctx],
                            ctx,
                            f.pos as usize + 1,
                            scale,
                            out,
                            isa,
                        )
                    },
                );
            });
            act.set(att, isa);
            layer.wo.mul(act, o, isa);
            for (a, &b) in x.iter_mut().zip(o.iter()) {
                *a += b;
            }
            for (xs, hs) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                rms_norm(xs, &layer.ffn_norm, c.eps, hs);
            }
            act.set(h, isa);
            layer.gate.mul(act, g, isa);
            layer.up.mul(act, u, isa);
            for (gv, &uv) in g.iter_mut().zip(u.iter()) {
                *gv = crate::num::silu(*gv) * uv;
            }
            act_ff.set(g, isa);
            layer.down.mul(act_ff, o, isa);
            for (a, &b) in x.iter_mut().zip(o.iter()) {
                *a += b;
            }
        }

        // The output layer, only for the feeds that want logits.
        let want = self.out.plan(feeds);
        if want.is_empty() {
            return Ok(());
        }
        let mut hw = vec![0.0f32; want.len() * d];
        for (r, &i) in want.iter().enumerate() {
            rms_norm(
                &x[i * d..(i + 1) * d],
                &m.out_norm,
                c.eps,
                &mut hw[r * d..(r + 1) * d],
            );
        }
        let mut act_out = QuantAct::new(want.len(), d);
        act_out.set(&hw, isa);
        self.out.logits.resize(want.len() * c.vocab, 0.0);
        m.output().mul(&act_out, &mut self.out.logits, isa);
        Ok(())
    }
}

/// One head's attention over positions `0..len` of its cache: scores q·k (q rounded to
/// f16, sums over dims in order from 0), scaled; softmax with our exp, its sum NC06's
/// [`fixed_sum`] (eight lanes, f64); weights rounded to f16; the output Σ w v in position order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    k: &[u16],
    v: &[u16],
    ctx: usize,
    len: usize,
    scale: f32,
    out: &mut [f32],
    isa: Isa,
) {
    let hd = q.len();
    let hw = cfg!(target_arch = "x86_64") && isa.usable() == Isa::Avx512;
    let mut s = vec![0.0f32; len];
    // One row of keys or values at a time as f32 (exact, whichever way it is widened).
    let mut row = vec![0.0f32; len.max(hd)];
    for (di, &qd) in q.iter().enumerate() {
        let qd = round_f16(qd);
        let row = &mut row[..len];
        widen(&k[di * ctx..di * ctx + len], row, hw);
        for (sp, &kp) in s.iter_mut().zip(row.iter()) {
            *sp += qd * kp;
        }
    }
    let mut max = f32::NEG_INFINITY;
    for sp in s.iter_mut() {
        *sp *= scale;
        max = max.max(*sp);
    }
    for sp in s.iter_mut() {
        *sp = exp_neg(*sp - max);
    }
    let inv = 1.0 / fixed_sum(&s);
    // The weights, all rounded first (a loop that vectorises), then used in order.
    for sp in s.iter_mut() {
        *sp = round_f16(*sp * inv);
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    let row = &mut row[..hd];
    for (p, &w) in s.iter().enumerate() {
        widen(&v[p * hd..(p + 1) * hd], row, hw);
        for (o, &vv) in out.iter_mut().zip(row.iter()) {
            *o += w * vv;
        }
    }
}

/// f16s to f32s (exact): the hardware's conversion when `hw` (which `attend` sets only
/// where `Isa::usable` gave AVX-512), else ours.
#[inline(always)]
fn widen(src: &[u16], dst: &mut [f32], hw: bool) {
    #[cfg(target_arch = "x86_64")]
    if hw {
        // SAFETY: `hw` is true only when `usable` returned Avx512, that is when the CPU
        // has AVX-512 F, all `widen_avx512` is compiled to need; it bounds its accesses
        // by both lengths.
        unsafe { widen_avx512(src, dst) };
        return;
    }
    let _ = hw;
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(h);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_avx512(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n bounds the 16 values read and written.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const _);
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        }
        i += 16;
    }
    for j in i..n {
        dst[j] = f16_to_f32(src[j]);
    }
}
