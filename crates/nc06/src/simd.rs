//! The instruction set of the loops over the whole vocabulary (softmax, mixing, CDF).
//!
//! The crate is built for baseline x86-64 (SSE2), so those loops run 4 f32 lanes wide.
//! On a CPU with AVX2 the same code is compiled a second time with AVX2 enabled and
//! chosen at run time, 8 lanes wide. This never changes a bit: the loops perform IEEE
//! add, mul, min, max and conversions, each correctly rounded in any register width;
//! their sums run through fixed lanes written out in the source ([`crate::codec::LANES`]),
//! so the vector width does not change the order; and Rust never contracts a multiply
//! and an add into an FMA (FMA is not enabled here anyway). The tests compare the two
//! paths bit for bit.
//!
//! `NACRITHFS_ISA=scalar` forces the baseline path (for tests and measurements).

use std::sync::OnceLock;

/// Which compiled copy of the vocabulary loops runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Baseline x86-64 (or whatever the target's baseline is).
    Scalar,
    /// x86-64 with AVX2.
    Avx2,
}

impl Isa {
    /// The best this CPU supports, unless `NACRITHFS_ISA=scalar` asks for the baseline.
    pub fn detect() -> Isa {
        if std::env::var("NACRITHFS_ISA").is_ok_and(|v| v == "scalar") {
            return Isa::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
        Isa::Scalar
    }

    /// The name `NACRITHFS_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }
}

/// The instruction set in use, detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// Runs `f` compiled for the instruction set in use. Only code inlined into the AVX2
/// copy is compiled for AVX2, so `f` must be an `#[inline(always)]` closure and what it
/// calls `#[inline(always)]` too: a closure left to the inliner stays a baseline
/// function (perf showed the mixer's dense pass running as one).
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(test)]
    if let Some(forced) = FORCED.get() {
        return run_on(forced, f);
    }
    run_on(isa(), f)
}

#[cfg(test)]
thread_local! {
    static FORCED: std::cell::Cell<Option<Isa>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with every loop on this thread compiled for `isa` (tests compare the paths).
#[cfg(test)]
pub(crate) fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    FORCED.set(Some(isa));
    let r = f();
    FORCED.set(None);
    r
}

/// Whether this CPU has a path besides the baseline (else the comparisons are moot).
#[cfg(test)]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return true;
    }
    eprintln!("note: no AVX2 on this CPU; the paths compared are both the baseline");
    false
}

/// Runs `f` compiled for `isa`; an `isa` the CPU lacks runs the baseline. As with
/// `dispatch`, `f` must be an `#[inline(always)]` closure. For callers that choose
/// the instruction set themselves (the portable engine, its tests).
#[inline(always)]
pub fn run_on<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
            // SAFETY: the CPU reports AVX2 (checked just above; the check is a cached
            // load), which is all `avx2` is compiled to need.
            unsafe { avx2(f) }
        }
        _ => f(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
