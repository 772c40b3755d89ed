//! A session on a device: the step of [`crate::Session`], each stage a kernel launch
//! over device buffers, with the same feeds, slides and logits.

use super::params::{self, Attend, Elementwise, Embed, MatMul, Quant, RmsNorm, Rope, Slide, Store};
use super::{Addr, Device, DeviceError, Kernel};
use crate::model::Model;
use crate::quant::{Matrix, BLOCK};
use crate::session::{check, inv_freq, rope_cs, Outputs, Positions};
use crate::{Config, Feed, StepError};
use nc06::Window;

/// What a device step can fail with: the feeds, or the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStepError {
    /// The step was refused (as by [`crate::Session::decode`]).
    #[error(transparent)]
    Step(#[from] StepError),
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// A matrix on the device (`Matrix::plain`'s layout).
#[derive(Clone, Copy)]
struct Mat {
    q: Addr,
    d: Addr,
    m: Addr,
    rows: u32,
    cols: u32,
    kind: u32,
}

#[derive(Clone, Copy)]
struct LayerW {
    attn_norm: Addr,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    ffn_norm: Addr,
    gate: Mat,
    up: Mat,
    down: Mat,
}

/// The step's buffers on the device, each sized for `n_seq` feeds.
struct Bufs {
    x: Addr,
    h: Addr,
    q: Addr,
    k: Addr,
    v: Addr,
    att: Addr,
    o: Addr,
    g: Addr,
    u: Addr,
    /// Quantized activations: values, block scales, block sums.
    aq: Addr,
    ad: Addr,
    as_: Addr,
    /// Attention weights, `[feed][head][position]`.
    w: Addr,
    logits: Addr,
    seq: Addr,
    token: Addr,
    pos: Addr,
    cs: Addr,
    rows: Addr,
    /// The caches, `[sequence][layer][kv head][position][dim]`, f16.
    kc: Addr,
    vc: Addr,
    /// Room for one sequence's moved keys and values while its window slides.
    tmp_k: Addr,
    tmp_v: Addr,
    slide_cs: Addr,
}

/// A decoding session on a [`Device`]: the same sequences, feeds and logits as
/// [`crate::Session`], the same bits.
pub struct DeviceSession {
    dev: Device,
    cfg: Config,
    positions: Positions,
    inv_freq: Vec<f64>,
    embd: Mat,
    output: Option<Mat>,
    out_norm: Addr,
    layers: Vec<LayerW>,
    b: Bufs,
    out: Outputs,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// RoPE's (cos, sin) pairs at `pos`, flat, as the kernels read them.
fn rope_flat(inv_freq: &[f64], pos: f64, out: &mut Vec<f32>) {
    let mut cs = Vec::new();
    rope_cs(inv_freq, pos, &mut cs);
    out.extend(cs.iter().flat_map(|&(c, s)| [c, s]));
}

/// `v`'s bytes, to download f32s into.
fn f32_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: any bytes are a valid f32, u8's alignment divides f32's, and the slice
    // covers exactly `v`'s memory, borrowed mutably for its own lifetime.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

impl Device {
    fn put(&mut self, bytes: &[u8]) -> Result<Addr, DeviceError> {
        let a = self.0.alloc(bytes.len())?;
        self.0.upload(a, bytes)?;
        Ok(a)
    }

    fn mat(&mut self, m: &Matrix) -> Result<Mat, DeviceError> {
        let (q8, q, d, mins) = m.plain();
        Ok(Mat {
            q: self.put(&q)?,
            d: self.put(&f32_bytes(&d))?,
            m: if q8 { 0 } else { self.put(&f32_bytes(&mins))? },
            rows: m.rows() as u32,
            cols: m.cols() as u32,
            kind: q8 as u32,
        })
    }

    fn run<P: Copy>(&mut self, k: Kernel, n: usize, p: &P) -> Result<(), DeviceError> {
        let n = u32::try_from(n).map_err(|_| DeviceError::TooLarge(n as u64))?;
        self.0.launch(k, n, params::bytes(p))
    }
}

impl DeviceSession {
    /// A session of `n_seq` sequences of `window.ctx` positions over `model`, whose
    /// weights are copied to `dev`.
    pub fn new(
        model: &Model,
        mut dev: Device,
        n_seq: u32,
        window: Window,
    ) -> Result<DeviceSession, DeviceError> {
        let c = model.cfg.clone();
        let n = n_seq.max(1) as usize;
        let f = 4usize;
        let (d, kvd, ff, ctx) = (c.dim, c.kv_dim(), c.ff, window.ctx as usize);
        let mut layers = Vec::with_capacity(c.layers);
        for l in &model.layers {
            layers.push(LayerW {
                attn_norm: dev.put(&f32_bytes(&l.attn_norm))?,
                wq: dev.mat(&l.wq)?,
                wk: dev.mat(&l.wk)?,
                wv: dev.mat(&l.wv)?,
                wo: dev.mat(&l.wo)?,
                ffn_norm: dev.put(&f32_bytes(&l.ffn_norm))?,
                gate: dev.mat(&l.gate)?,
                up: dev.mat(&l.up)?,
                down: dev.mat(&l.down)?,
            });
        }
        let embd = dev.mat(&model.embd)?;
        let output = match &model.output {
            Some(m) => Some(dev.mat(m)?),
            None => None,
        };
        let out_norm = dev.put(&f32_bytes(&model.out_norm))?;
        let cache = n * c.layers * kvd * ctx * 2;
        let moved = c.layers * kvd * ctx * 2;
        let wide = d.max(ff);
        let mut a = |bytes: usize| dev.0.alloc(bytes);
        let b = Bufs {
            x: a(n * d * f)?,
            h: a(n * d * f)?,
            q: a(n * d * f)?,
            k: a(n * kvd * f)?,
            v: a(n * kvd * f)?,
            att: a(n * d * f)?,
            o: a(n * d * f)?,
            g: a(n * ff * f)?,
            u: a(n * ff * f)?,
            aq: a(n * wide)?,
            ad: a(n * wide / BLOCK * f)?,
            as_: a(n * wide / BLOCK * f)?,
            w: a(n * c.heads * ctx * f)?,
            logits: a(n * c.vocab * f)?,
            seq: a(n * f)?,
            token: a(n * f)?,
            pos: a(n * f)?,
            cs: a(n * c.head_dim * f)?,
            rows: a(n * f)?,
            kc: a(cache)?,
            vc: a(cache)?,
            tmp_k: a(moved)?,
            tmp_v: a(moved)?,
            slide_cs: a(c.head_dim * f)?,
        };
        Ok(DeviceSession {
            inv_freq: inv_freq(&c),
            positions: Positions::new(n as u32, window),
            dev,
            cfg: c,
            embd,
            output,
            out_norm,
            layers,
            b,
            out: Outputs::default(),
        })
    }

    /// What the session runs on.
    pub fn device(&self) -> String {
        self.dev.describe()
    }

    /// Sequences the session holds.
    pub fn n_seq(&self) -> u32 {
        self.positions.n_seq()
    }

    /// The window of every sequence.
    pub fn window(&self) -> Window {
        self.positions.window()
    }

    /// As [`crate::Session::feed`]; a slide runs on the device at once.
    pub fn feed(&mut self, seq: u32, token: u32, logits: bool) -> Result<Feed, DeviceStepError> {
        let (feed, slid) = self.positions.feed(seq, token, logits)?;
        if slid {
            self.slide(seq)?;
        }
        Ok(feed)
    }

    /// Forgets sequence `seq`, so a new stream can start in it.
    pub fn clear(&mut self, seq: u32) {
        self.positions.clear(seq);
    }

    /// Logits after the `i`-th feed of the last [`DeviceSession::decode`] (empty when
    /// it did not ask for them).
    pub fn logits(&self, i: usize) -> &[f32] {
        self.out.get(i, self.cfg.vocab)
    }

    fn slide(&mut self, seq: u32) -> Result<(), DeviceError> {
        let c = &self.cfg;
        let w = self.window();
        let (ctx, s) = (w.ctx, w.slide);
        let mut flat = Vec::new();
        rope_flat(&self.inv_freq, -(s as f64), &mut flat);
        self.dev.0.upload(self.b.slide_cs, &f32_bytes(&flat))?;
        let p = Slide {
            kc: self.b.kc,
            vc: self.b.vc,
            tmp_k: self.b.tmp_k,
            tmp_v: self.b.tmp_v,
            cs: self.b.slide_cs,
            seq,
            layers: c.layers as u32,
            kvh: c.kv_heads as u32,
            hd: c.head_dim as u32,
            ctx,
            slide: s,
        };
        let n = c.layers * c.kv_heads * (ctx - s - 1) as usize * c.head_dim / 2;
        self.dev.run(Kernel::SlideOut, n, &p)?;
        self.dev.run(Kernel::SlideIn, n, &p)
    }

    fn mul(&mut self, m: &Mat, streams: usize, out: Addr) -> Result<(), DeviceError> {
        let p = MatMul {
            q: m.q,
            d: m.d,
            m: m.m,
            aq: self.b.aq,
            ad: self.b.ad,
            as_: self.b.as_,
            out,
            rows: m.rows,
            cols: m.cols,
            streams: streams as u32,
            kind: m.kind,
        };
        self.dev.run(Kernel::MatMul, m.rows as usize * streams, &p)
    }

    fn quant(&mut self, x: Addr, values: usize) -> Result<(), DeviceError> {
        let p = Quant {
            x,
            q: self.b.aq,
            d: self.b.ad,
            s: self.b.as_,
        };
        self.dev.run(Kernel::Quant, values / BLOCK, &p)
    }

    fn norm(
        &mut self,
        x: Addr,
        w: Addr,
        out: Addr,
        rows: Addr,
        n: usize,
    ) -> Result<(), DeviceError> {
        let p = RmsNorm {
            x,
            w,
            out,
            rows,
            dim: self.cfg.dim as u32,
            eps: self.cfg.eps,
        };
        self.dev.run(Kernel::RmsNorm, n, &p)
    }

    /// An elementwise kernel (`Add`, `SiluMul`) over `n` values of `a` and `b`.
    fn elementwise(&mut self, k: Kernel, a: Addr, b: Addr, n: usize) -> Result<(), DeviceError> {
        self.dev.run(k, n, &Elementwise { a, b })
    }

    /// Runs one step, as [`crate::Session::decode`].
    pub fn decode(&mut self, feeds: &[Feed]) -> Result<(), DeviceStepError> {
        let c = self.cfg.clone();
        check(feeds, self.n_seq(), c.vocab)?;
        self.out.clear();
        let n = feeds.len();
        if n == 0 {
            return Ok(());
        }
        let (d, hd) = (c.dim, c.head_dim);
        let b = &self.b;
        let (seq, token, pos, x, h) = (b.seq, b.token, b.pos, b.x, b.h);
        let col = |get: fn(&Feed) -> u32| u32_bytes(&feeds.iter().map(get).collect::<Vec<_>>());
        self.dev.0.upload(seq, &col(|f| f.seq))?;
        self.dev.0.upload(token, &col(|f| f.token))?;
        self.dev.0.upload(pos, &col(|f| f.pos))?;
        let mut flat = Vec::with_capacity(n * hd);
        for f in feeds {
            rope_flat(&self.inv_freq, f.pos as f64, &mut flat);
        }
        self.dev.0.upload(self.b.cs, &f32_bytes(&flat))?;
        let e = Embed {
            x,
            q: self.embd.q,
            d: self.embd.d,
            m: self.embd.m,
            token,
            dim: d as u32,
            kind: self.embd.kind,
        };
        self.dev.run(Kernel::Embed, n * d, &e)?;
        for li in 0..self.layers.len() {
            self.layer(li, n, &c)?;
        }

        // The output layer, for the feeds that want logits.
        let want: Vec<u32> = self.out.plan(feeds).iter().map(|&i| i as u32).collect();
        if want.is_empty() {
            return Ok(());
        }
        let nw = want.len();
        self.dev.0.upload(self.b.rows, &u32_bytes(&want))?;
        self.norm(x, self.out_norm, h, self.b.rows, nw)?;
        self.quant(h, nw * d)?;
        let output = self.output.unwrap_or(self.embd);
        self.mul(&output, nw, self.b.logits)?;
        // Into the kept buffer: at many streams a fresh one costs page faults over
        // hundreds of MB a step (the CPU session keeps its buffers for the same reason).
        self.out.logits.resize(nw * c.vocab, 0.0);
        self.dev
            .0
            .download(self.b.logits, f32_bytes_mut(&mut self.out.logits))?;
        Ok(())
    }

    /// Layer `li` of a step of `n` feeds.
    fn layer(&mut self, li: usize, n: usize, c: &Config) -> Result<(), DeviceError> {
        let l = self.layers[li];
        let b = &self.b;
        let (x, h, q, k, v, att, o, g, u) = (b.x, b.h, b.q, b.k, b.v, b.att, b.o, b.g, b.u);
        let (d, kvd, hd, ff) = (c.dim, c.kv_dim(), c.head_dim, c.ff);
        let half = (hd / 2) as u32;
        let ctx = self.window().ctx;
        self.norm(x, l.attn_norm, h, 0, n)?;
        self.quant(h, n * d)?;
        self.mul(&l.wq, n, q)?;
        self.mul(&l.wk, n, k)?;
        self.mul(&l.wv, n, v)?;
        let rq = Rope {
            x: q,
            cs: self.b.cs,
            heads: c.heads as u32,
            half,
        };
        self.dev.run(Kernel::Rope, n * d / 2, &rq)?;
        let rk = Rope {
            x: k,
            heads: c.kv_heads as u32,
            ..rq
        };
        self.dev.run(Kernel::Rope, n * kvd / 2, &rk)?;
        let st = Store {
            k,
            v,
            kc: self.b.kc,
            vc: self.b.vc,
            seq: self.b.seq,
            pos: self.b.pos,
            kvd: kvd as u32,
            hd: hd as u32,
            ctx,
            layer: li as u32,
            layers: c.layers as u32,
            _pad: 0,
        };
        self.dev.run(Kernel::Store, n * kvd, &st)?;
        let at = Attend {
            q,
            kc: self.b.kc,
            vc: self.b.vc,
            seq: self.b.seq,
            pos: self.b.pos,
            w: self.b.w,
            out: att,
            heads: c.heads as u32,
            kvh: c.kv_heads as u32,
            hd: hd as u32,
            ctx,
            layer: li as u32,
            layers: c.layers as u32,
            scale: 1.0f32 / (hd as f32).sqrt(),
            _pad: 0,
        };
        self.dev
            .run(Kernel::Scores, n * c.heads * ctx as usize, &at)?;
        self.dev.run(Kernel::Softmax, n * c.heads, &at)?;
        self.dev.run(Kernel::Mix, n * d, &at)?;
        self.quant(att, n * d)?;
        self.mul(&l.wo, n, o)?;
        self.elementwise(Kernel::Add, x, o, n * d)?;
        self.norm(x, l.ffn_norm, h, 0, n)?;
        self.quant(h, n * d)?;
        self.mul(&l.gate, n, g)?;
        self.mul(&l.up, n, u)?;
        self.elementwise(Kernel::SiluMul, g, u, n * ff)?;
        self.quant(g, n * ff)?;
        self.mul(&l.down, n, o)?;
        self.elementwise(Kernel::Add, x, o, n * d)?;
        Ok(())
    }
}

/// Whether `dev` computes the CPU engine's logits for `model`: two streams of fixed
/// tokens, 24 steps in a window of 16 that slides by 4, compared bit for bit. The
/// engine runs this on a GPU before it codes anything there, so a device, driver or
/// compiler that breaks the spec is never used: its blobs would not decode elsewhere.
pub fn agrees_with_cpu(model: &Model, dev: Device) -> Result<bool, DeviceStepError> {
    let window = Window { ctx: 16, slide: 4 };
    let mut cpu = model.session(2, window, nc06::simd::isa());
    let mut gpu = DeviceSession::new(model, dev, 2, window)?;
    let vocab = model.cfg.vocab as u32;
    for i in 0..24u32 {
        let token = |s: u32| match i {
            0 => model.cfg.bos,
            _ => (i * 7919 + s * 104_729 + 13) % vocab,
        };
        let a: Vec<Feed> = (0..2)
            .map(|s| cpu.feed(s, token(s), true))
            .collect::<Result<_, _>>()?;
        let b: Vec<Feed> = (0..2)
            .map(|s| gpu.feed(s, token(s), true))
            .collect::<Result<_, _>>()?;
        cpu.decode(&a)?;
        gpu.decode(&b)?;
        for s in 0..2 {
            let same = cpu.logits(s).len() == gpu.logits(s).len()
                && cpu
                    .logits(s)
                    .iter()
                    .zip(gpu.logits(s))
                    .all(|(x, y)| x.to_bits() == y.to_bits());
            if !same {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
