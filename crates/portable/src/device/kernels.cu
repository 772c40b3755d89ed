// The portable engine's step as data-parallel kernels (docs/ENGINE.md, "Kernels for
// devices"). One source, two builds:
// - NVRTC compiles it for a CUDA GPU at run time (`__CUDACC__` defined), with
//   `--fmad=false` so no multiply and add are fused;
// - the build script compiles it as C++ for the host (`-ffp-contract=off`), where each
//   kernel is a plain loop over its indices: the emulator that the tests run on every
//   machine, so the arithmetic that the GPU runs is checked against the Rust engine
//   bit for bit without a GPU.
//
// Every kernel computes one output per index from that index's own inputs, in the
// spec's order. Nothing is shared between threads, nothing is reduced across them: so
// no launch shape, batch or device changes a bit. No header is included (NVRTC has
// none); the few functions needed are written here from IEEE basic operations.

#ifdef __CUDACC__
#define DEV __device__ __forceinline__
typedef unsigned long long u64;
DEV unsigned f2u(float x) { return __float_as_uint(x); }
DEV float u2f(unsigned x) { return __uint_as_float(x); }
DEV float sqrt_rn(float x) { return __fsqrt_rn(x); }
DEV float div_rn(float a, float b) { return __fdiv_rn(a, b); }
// A kernel `name` over `n` indices: one thread each.
#define KERNEL(name, P)                                                             \
    DEV void name##_at(unsigned i, const P &p);                                     \
    extern "C" __global__ void name(unsigned n, P p) {                              \
        unsigned i = blockIdx.x * blockDim.x + threadIdx.x;                         \
        if (i < n) name##_at(i, p);                                                 \
    }                                                                               \
    DEV void name##_at(unsigned i, const P &p)
#else
#define DEV static inline
typedef unsigned long long u64;
DEV unsigned f2u(float x) { unsigned u; __builtin_memcpy(&u, &x, 4); return u; }
DEV float u2f(unsigned u) { float x; __builtin_memcpy(&x, &u, 4); return x; }
DEV float sqrt_rn(float x) { return __builtin_sqrtf(x); }
DEV float div_rn(float a, float b) { return a / b; }
// A kernel `name` over indices start..end: a loop, exported as nc_host_<name> (the
// emulator splits a launch's indices over threads). The build script also compiles a
// copy that fuses multiply-adds, which the spec forbids, as nc_fused_<name>: the
// tests show that the engine's probe refuses such a device.
#ifndef NC_PREFIX
#define NC_PREFIX nc_host_
#endif
#define NC_CAT2(a, b) a##b
#define NC_CAT(a, b) NC_CAT2(a, b)
#define KERNEL(name, P)                                                             \
    DEV void name##_at(unsigned i, const P &p);                                     \
    extern "C" void NC_CAT(NC_PREFIX, name)(unsigned start, unsigned end, const P *p) { \
        for (unsigned i = start; i < end; i++) name##_at(i, *p);                    \
    }                                                                               \
    DEV void name##_at(unsigned i, const P &p)
#endif

// Pointers travel as 64-bit integers (device addresses, or host addresses in the
// emulator), so every parameter block has the same layout in Rust and here.
#define F32(a) ((float *)(a))
#define U16(a) ((unsigned short *)(a))
#define I8(a) ((signed char *)(a))
#define U8(a) ((unsigned char *)(a))
#define U32(a) ((unsigned *)(a))

// ---- Numbers (docs/ENGINE.md, "Numbers"; crates/portable/src/num.rs) ----

DEV float f16_to_f32(unsigned short h16) {
    unsigned h = h16;
    unsigned sign = (h & 0x8000u) << 16;
    unsigned em = h & 0x7fffu;
    // 2^112 moves the f16 exponent to the f32 one; exact, subnormals included.
    unsigned scaled = f2u(u2f(em << 13) * u2f((127u + 112u) << 23));
    unsigned inf_nan = (em << 13) | 0x7f800000u;
    unsigned bits = em >= 0x7c00u ? inf_nan : scaled;
    return u2f(bits | sign);
}

DEV unsigned short f32_to_f16(float x) {
    unsigned b = f2u(x);
    unsigned short sign = (unsigned short)((b >> 16) & 0x8000u);
    int e = (int)((b >> 23) & 0xffu);
    unsigned m = b & 0x7fffffu;
    if (e == 0xff) return sign | 0x7c00u | (m != 0 ? 0x200u : 0u);
    int e16 = e - 127 + 15;
    if (e16 >= 31) return sign | 0x7c00u;
    if (e16 <= 0) {
        if (e16 < -10) return sign;
        unsigned mm = m | 0x800000u;
        unsigned shift = (unsigned)(14 - e16);
        unsigned half = 1u << (shift - 1);
        unsigned rem = mm & ((1u << shift) - 1);
        unsigned r = mm >> shift;
        if (rem > half || (rem == half && (r & 1u) == 1u)) r += 1;
        return sign | (unsigned short)r;
    }
    unsigned r = ((unsigned)e16 << 10) | (m >> 13);
    unsigned rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u) == 1u)) r += 1;
    return sign | (unsigned short)r;
}

DEV float round_f16(float x) { return f16_to_f32(f32_to_f16(x)); }

// NC06's exp2 for x <= 0 (crates/nc06/src/codec/cdf.rs), its coefficients as bits.
DEV float exp2_neg(float x) {
    const float ROUND = 12582912.0f; // 1.5 * 2^23
    x = x > -125.0f ? x : -125.0f;    // f32::max: a NaN gives -125
    float t = x + ROUND;
    float r = t - ROUND;
    int i = (int)(f2u(t) - f2u(ROUND));
    float f = x - r;
    float c0 = u2f(0x3f317218u), c1 = u2f(0x3e75fdf0u), c2 = u2f(0x3d635847u);
    float c3 = u2f(0x3c1d955bu), c4 = u2f(0x3aaec3ffu), c5 = u2f(0x39218489u);
    float p = 1.0f + f * (c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * c5)))));
    return p * u2f((unsigned)(i + 127) << 23);
}

DEV float exp_neg(float x) {
    float m = x < 0.0f ? x : 0.0f; // f32::min(x, 0): a NaN gives 0
    return exp2_neg(m * u2f(0x3fb8aa3bu));
}

DEV float silu(float x) {
    float e = exp_neg(-u2f(f2u(x) & 0x7fffffffu));
    if (x >= 0.0f) return div_rn(x, 1.0f + e);
    return div_rn(x * e, 1.0f + e);
}

// Ties away from zero, for |x| < 2^22 (larger values are integers already).
DEV float round_away(float x) {
    float t = (f2u(x) & 0x7fffffffu) >= 0x4b000000u ? x : (float)(int)x; // trunc
    float f = x - t;
    if (f >= 0.5f) return t + 1.0f;
    if (f <= -0.5f) return t - 1.0f;
    return t;
}

// ---- Kernels ----

// Matrices: one byte per weight, row-major (Q4_1's 0..=15 or Q8_0's i8), and per
// [row][block] its scale d and (Q4_1) minimum m as f32.
enum { KIND_Q4_1 = 0, KIND_Q8_0 = 1 };

struct Embed {
    u64 x, q, d, m, token;
    unsigned dim, kind;
};
// x[s][c] = row token[s] of the embedding, c of dim (i = s * dim + c).
KERNEL(embed, Embed) {
    unsigned s = i / p.dim, c = i % p.dim;
    unsigned nb = p.dim / 32;
    u64 r = U32(p.token)[s];
    u64 at = r * nb + c / 32;
    float d = F32(p.d)[at];
    if (p.kind == KIND_Q8_0) {
        F32(p.x)[i] = d * (float)I8(p.q)[r * p.dim + c];
    } else {
        F32(p.x)[i] = d * (float)U8(p.q)[r * p.dim + c] + F32(p.m)[at];
    }
}

struct RmsNorm {
    u64 x, w, out, rows;
    unsigned dim;
    float eps;
};
// One row each: out = (x * (1 / sqrt(mean + eps))) * w, the squares summed in f64 in
// order. rows, when set, lists which rows of x to take (the feeds that want logits).
KERNEL(rms_norm, RmsNorm) {
    unsigned src = p.rows ? U32(p.rows)[i] : i;
    const float *x = F32(p.x) + (u64)src * p.dim;
    float *out = F32(p.out) + (u64)i * p.dim;
    double ss = 0.0;
    for (unsigned c = 0; c < p.dim; c++) ss += (double)(x[c] * x[c]);
    float mean = (float)(ss / (double)p.dim);
    float scale = div_rn(1.0f, sqrt_rn(mean + p.eps));
    for (unsigned c = 0; c < p.dim; c++) out[c] = (x[c] * scale) * F32(p.w)[c];
}

struct Quant {
    u64 x, q, d, s;
};
// One block of 32 each: q = round(x / d), d = max|x| / 127, and the f16-rounded d and
// d * Σq.
KERNEL(quant, Quant) {
    const float *x = F32(p.x) + (u64)i * 32;
    signed char *q = I8(p.q) + (u64)i * 32;
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        float a = u2f(f2u(x[j]) & 0x7fffffffu);
        amax = a > amax ? a : amax;
    }
    float d = div_rn(amax, 127.0f);
    float id = d != 0.0f ? div_rn(1.0f, d) : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        float r = round_away(x[j] * id);
        if (!(r == r)) r = 0.0f; // Rust's clamp keeps a NaN, and `as i8` takes it to 0
        r = r < -127.0f ? -127.0f : (r > 127.0f ? 127.0f : r);
        int qi = (int)r;
        q[j] = (signed char)qi;
        sum += qi;
    }
    F32(p.d)[i] = round_f16(d);
    F32(p.s)[i] = round_f16(d * (float)sum);
}

struct MatMul {
    u64 q, d, m;          // the matrix
    u64 aq, ad, as, out;  // the activations, the output
    unsigned rows, cols, streams, kind;
};
// out[s][r] = row r . stream s, the blocks combined in block order (i = r * streams +
// s: the threads of a warp share a row).
KERNEL(matmul, MatMul) {
    unsigned r = i / p.streams, s = i % p.streams;
    unsigned nb = p.cols / 32;
    const float *wd = F32(p.d) + (u64)r * nb;
    const float *ad = F32(p.ad) + (u64)s * nb;
    const float *as = F32(p.as) + (u64)s * nb;
    const signed char *a = I8(p.aq) + (u64)s * p.cols;
    float acc = 0.0f;
    if (p.kind == KIND_Q8_0) {
        const signed char *w = I8(p.q) + (u64)r * p.cols;
        for (unsigned b = 0; b < nb; b++) {
            int sum = 0;
            for (int j = 0; j < 32; j++) sum += (int)w[b * 32 + j] * (int)a[b * 32 + j];
            acc = acc + (wd[b] * ad[b]) * (float)sum;
        }
    } else {
        const unsigned char *w = U8(p.q) + (u64)r * p.cols;
        const float *wm = F32(p.m) + (u64)r * nb;
        for (unsigned b = 0; b < nb; b++) {
            int sum = 0;
            for (int j = 0; j < 32; j++) sum += (int)w[b * 32 + j] * (int)a[b * 32 + j];
            acc = acc + ((wd[b] * ad[b]) * (float)sum + wm[b] * as[b]);
        }
    }
    F32(p.out)[(u64)s * p.rows + r] = acc;
}

struct Rope {
    u64 x, cs;
    unsigned heads, half;
};
// One pair (2j, 2j+1) of one head each (i = (s * heads + h) * half + j), turned by
// the feed's (cos, sin) of pair j: (x0 c - x1 s, x0 s + x1 c).
KERNEL(rope, Rope) {
    unsigned j = i % p.half, s = i / p.half / p.heads;
    float *x = F32(p.x) + (u64)i * 2;
    float c = F32(p.cs)[((u64)s * p.half + j) * 2];
    float sn = F32(p.cs)[((u64)s * p.half + j) * 2 + 1];
    float x0 = x[0], x1 = x[1];
    x[0] = x0 * c - x1 * sn;
    x[1] = x0 * sn + x1 * c;
}

// Caches: per sequence, per layer, per kv head, per position, the head's dims, f16;
// a sequence's slot is seq * layers * kv_heads * ctx * hd values.
struct Store {
    u64 k, v, kc, vc, seq, pos;
    unsigned kvd, hd, ctx, layer, layers;
};
// One element of k and v each (i = s * kvd + e), stored as f16 at the feed's position.
KERNEL(store, Store) {
    unsigned s = i / p.kvd, e = i % p.kvd, g = e / p.hd, di = e % p.hd;
    unsigned kvh = p.kvd / p.hd;
    u64 at = ((((u64)U32(p.seq)[s] * p.layers + p.layer) * kvh + g) * p.ctx + U32(p.pos)[s]) *
                 p.hd + di;
    U16(p.kc)[at] = f32_to_f16(F32(p.k)[i]);
    U16(p.vc)[at] = f32_to_f16(F32(p.v)[i]);
}

struct Attend {
    u64 q, kc, vc, seq, pos, w, out;
    unsigned heads, kvh, hd, ctx, layer, layers;
    float scale;
};
DEV u64 head_base(const Attend &p, unsigned s, unsigned h) {
    unsigned g = h / (p.heads / p.kvh);
    return (((u64)U32(p.seq)[s] * p.layers + p.layer) * p.kvh + g) * p.ctx * p.hd;
}
// One score each (i = (s * heads + h) * ctx + t), for t <= pos: the f16-rounded query
// against the cached key, summed over dims in order, then scaled.
KERNEL(scores, Attend) {
    unsigned t = i % p.ctx, sh = i / p.ctx, s = sh / p.heads, h = sh % p.heads;
    if (t > U32(p.pos)[s]) return;
    const float *q = F32(p.q) + (u64)sh * p.hd;
    const unsigned short *k = U16(p.kc) + head_base(p, s, h) + (u64)t * p.hd;
    float acc = 0.0f;
    for (unsigned d = 0; d < p.hd; d++) acc = acc + round_f16(q[d]) * f16_to_f32(k[d]);
    F32(p.w)[i] = acc * p.scale;
}
// One (stream, head) each: the softmax of its scores with our exp, the sum NC06's
// fixed_sum (eight f64 lanes, then ((0+1)+(2+3))+((4+5)+(6+7))), the weights rounded
// to f16, in place.
KERNEL(softmax, Attend) {
    unsigned s = i / p.heads, len = U32(p.pos)[s] + 1;
    float *w = F32(p.w) + (u64)i * p.ctx;
    float max = -u2f(0x7f800000u);
    for (unsigned t = 0; t < len; t++) max = w[t] > max ? w[t] : max;
    double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (unsigned t = 0; t < len; t++) {
        float e = exp_neg(w[t] - max);
        w[t] = e;
        l[t % 8] += (double)e;
    }
    float total = (float)(((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])));
    float inv = div_rn(1.0f, total);
    for (unsigned t = 0; t < len; t++) w[t] = round_f16(w[t] * inv);
}
// One output dim each (i = (s * heads + h) * hd + d): Σ w_t v_t,d in position order.
KERNEL(mix, Attend) {
    unsigned d = i % p.hd, sh = i / p.hd, s = sh / p.heads, h = sh % p.heads;
    unsigned len = U32(p.pos)[s] + 1;
    const float *w = F32(p.w) + (u64)sh * p.ctx;
    const unsigned short *v = U16(p.vc) + head_base(p, s, h) + d;
    float acc = 0.0f;
    for (unsigned t = 0; t < len; t++) acc = acc + w[t] * f16_to_f32(v[(u64)t * p.hd]);
    F32(p.out)[i] = acc;
}

struct Elementwise {
    u64 a, b;
};
// a += b.
KERNEL(add, Elementwise) { F32(p.a)[i] = F32(p.a)[i] + F32(p.b)[i]; }
// a = silu(a) * b.
KERNEL(silu_mul, Elementwise) { F32(p.a)[i] = silu(F32(p.a)[i]) * F32(p.b)[i]; }

struct Slide {
    u64 kc, vc, tmp_k, tmp_v, cs;
    unsigned seq, layers, kvh, hd, ctx, slide;
};
// A full window of sequence `seq` drops positions 1..1+slide: positions 1+slide..ctx
// move down by slide, each key pair turned back by slide positions and rounded to f16
// again. First every moved pair is read into tmp (i = ((layer * kvh + g) * moved + t)
// * half + j, t the new position - 1), then written back: no thread reads what
// another writes.
KERNEL(slide_out, Slide) {
    unsigned half = p.hd / 2, moved = p.ctx - p.slide - 1;
    unsigned j = i % half, t = i / half % moved, lg = i / half / moved;
    u64 base = ((u64)p.seq * p.layers * p.kvh + lg) * p.ctx * p.hd;
    u64 from = base + ((u64)t + 1 + p.slide) * p.hd + 2 * j;
    float c = F32(p.cs)[2 * j], sn = F32(p.cs)[2 * j + 1];
    float x0 = f16_to_f32(U16(p.kc)[from]), x1 = f16_to_f32(U16(p.kc)[from + 1]);
    u64 to = (u64)i * 2;
    U16(p.tmp_k)[to] = f32_to_f16(x0 * c - x1 * sn);
    U16(p.tmp_k)[to + 1] = f32_to_f16(x0 * sn + x1 * c);
    U16(p.tmp_v)[to] = U16(p.vc)[from];
    U16(p.tmp_v)[to + 1] = U16(p.vc)[from + 1];
}
KERNEL(slide_in, Slide) {
    unsigned half = p.hd / 2, moved = p.ctx - p.slide - 1;
    unsigned j = i % half, t = i / half % moved, lg = i / half / moved;
    u64 base = ((u64)p.seq * p.layers * p.kvh + lg) * p.ctx * p.hd;
    u64 to = base + ((u64)t + 1) * p.hd + 2 * j, from = (u64)i * 2;
    U16(p.kc)[to] = U16(p.tmp_k)[from];
    U16(p.kc)[to + 1] = U16(p.tmp_k)[from + 1];
    U16(p.vc)[to] = U16(p.tmp_v)[from];
    U16(p.vc)[to + 1] = U16(p.tmp_v)[from + 1];
}
