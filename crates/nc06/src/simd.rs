//! The instruction set of the loops over the whole vocabulary (softmax, mixing, CDF).
//!
//! The crate is built for baseline x86-64 (SSE2), so those loops run 4 f32 lanes wide.
//! On a CPU with AVX2 the same code is compiled a second time with AVX2 enabled and
//! chosen at run time, 8 lanes wide; on one with AVX-512 (and VNNI, which the portable
//! engine's integer kernels use) a third time, 16 lanes wide. This never changes a bit: the loops perform IEEE
//! add, mul, min, max and conversions, each correctly rounded in any register width;
//! their sums run through fixed lanes written out in the source ([`crate::codec::LANES`]),
//! so the vector width does not change the order; and Rust never contracts a multiply
//! and an add into an FMA (FMA is not enabled here anyway). The tests compare the two
//! paths bit for bit.
//!
//! `NACRITHFS_ISA=scalar|avx2|avx512` caps the path (for tests and measurements); a
//! path the CPU lacks is never taken.

use std::sync::OnceLock;

/// Which compiled copy of the vocabulary loops runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline x86-64 (or whatever the target's baseline is).
    Scalar,
    /// x86-64 with AVX2.
    Avx2,
    /// x86-64 with AVX-512 F, BW, VL and VNNI (Ice Lake, Zen 4 and later).
    Avx512,
}

/// Every instruction set, from the baseline up.
pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

impl Isa {
    /// The best this CPU supports, capped by `NACRITHFS_ISA` when that names a path.
    pub fn detect() -> Isa {
        let cap = std::env::var("NACRITHFS_ISA")
            .ok()
            .and_then(|v| Isa::parse(&v))
            .unwrap_or(Isa::Avx512);
        cap.usable()
    }

    /// The path of this name (`scalar`, `avx2`, `avx512`).
    pub fn parse(name: &str) -> Option<Isa> {
        ALL.into_iter().find(|i| i.name() == name)
    }

    /// The name `NACRITHFS_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path: detected once, since `run_on` asks at every
    /// call (a tile of a matrix product is one).
    pub fn supported(self) -> bool {
        static SUPPORTED: OnceLock<[bool; 3]> = OnceLock::new();
        SUPPORTED.get_or_init(|| ALL.map(Isa::cpu_has))[self as usize]
    }

    /// What the CPU reports for the path's features.
    fn cpu_has(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// This path, or the best one below it that the CPU supports.
    pub fn usable(self) -> Isa {
        ALL.into_iter()
            .rev()
            .find(|&i| i <= self && i.supported())
            .unwrap_or(Isa::Scalar)
    }

    /// The paths this CPU supports, from the baseline up (what the tests compare).
    pub fn available() -> Vec<Isa> {
        ALL.into_iter().filter(|i| i.supported()).collect()
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

/// The paths this CPU has, noting when there is only the baseline (the comparisons
/// are then moot).
#[cfg(test)]
pub(crate) fn paths() -> Vec<Isa> {
    let all = Isa::available();
    if all.len() == 1 {
        eprintln!("note: only the baseline path on this CPU; the comparisons are moot");
    }
    all
}

/// Runs `f` compiled for `isa`; an `isa` the CPU lacks runs the baseline. As with
/// `dispatch`, `f` must be an `#[inline(always)]` closure. For callers that choose
/// the instruction set themselves (the portable engine, its tests).
#[inline(always)]
pub fn run_on<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    match isa.usable() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // SAFETY: `usable` returned Avx512 only because the CPU reports every
            // feature `avx512` is compiled with (cached loads).
            unsafe { avx512(f) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: `usable` returned Avx2 only because the CPU reports AVX2, which is
            // all `avx2` is compiled to need.
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}
