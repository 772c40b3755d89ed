//! The number functions of the forward pass, each defined by IEEE basic operations in
//! a fixed order (docs/ENGINE.md, "Numbers"): no platform `exp`, `log`, `sin` or
//! `cos`, so every machine computes the same bits.

use nc06::codec::exp2_neg;

/// f16 (IEEE binary16) bits to f32: exact for every value (subnormals by a multiply
/// by 2^112, which is exact), infinities and NaNs kept. Branch-free, so loops over a
/// cache of f16 values vectorise.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // 2^112 = 2^(127 - 15): moves the f16 exponent to the f32 one.
    let scaled = (f32::from_bits(em << 13) * f32::from_bits((127 + 112) << 23)).to_bits();
    let inf_nan = (em << 13) | 0x7f80_0000;
    let bits = if em >= 0x7c00 { inf_nan } else { scaled };
    f32::from_bits(bits | sign)
}

/// f32 to the nearest f16 (ties to even), as IEEE conversion defines it: overflow to
/// infinity, underflow through the subnormals to zero, NaN stays NaN.
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let e = ((b >> 23) & 0xff) as i32;
    let m = b & 0x7f_ffff;
    if e == 0xff {
        return sign | 0x7c00 | if m != 0 { 0x200 } else { 0 };
    }
    let e16 = e - 127 + 15;
    if e16 >= 31 {
        return sign | 0x7c00;
    }
    if e16 <= 0 {
        if e16 < -10 {
            return sign;
        }
        let m = m | 0x80_0000;
        let shift = (14 - e16) as u32;
        let half = 1u32 << (shift - 1);
        let rem = m & ((1u32 << shift) - 1);
        let mut r = m >> shift;
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e16 as u32) << 10) | (m >> 13);
    let rem = m & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        // A carry out of the mantissa moves to the next exponent, or to infinity:
        // both are what rounding asks for.
        r += 1;
    }
    sign | r as u16
}

/// `x` rounded through f16: what storing it in an f16 cache keeps.
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

/// e^x for x <= 0 (larger x is taken as 0), from the NC06 exp2 (the same polynomial
/// that the softmax of the coder uses).
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    exp2_neg(x.min(0.0) * std::f32::consts::LOG2_E)
}

/// x * sigmoid(x), the SiLU of the feed-forward layers. e^-|x| is taken once, so the
/// function is defined for every x without an overflowing exponent.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let e = exp_neg(-x.abs());
    if x >= 0.0 {
        x / (1.0 + e)
    } else {
        x * e / (1.0 + e)
    }
}

/// `x` rounded to the nearest integer, ties away from zero (C's `roundf`), for |x| <
/// 2^22; larger magnitudes are already integers and come back as they are.
#[inline(always)]
pub fn round_away(x: f32) -> f32 {
    // x + 0.5 can round up in f32 (x = 0.49999997), so take the integer part first.
    let t = x.trunc();
    let f = x - t; // exact: t and x share the exponent's high bits
    if f >= 0.5 {
        t + 1.0
    } else if f <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// ln 2 split so that k * LN2_HI is exact for |k| < 2^20 (fdlibm's constants, as bits).
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// e^x in f64 for |x| < 700, by k = round(x / ln 2), r = x - k ln 2 (two parts) and a
/// Taylor series of 24 terms in r (|r| <= 0.35): a fixed sequence of IEEE operations.
pub fn exp_f64(x: f64) -> f64 {
    let x = x.clamp(-700.0, 700.0);
    let k = (x * std::f64::consts::LOG2_E).round();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut term = 1.0f64;
    let mut sum = 1.0f64;
    for n in 1..=24 {
        term = term * r / n as f64;
        sum += term;
    }
    sum * f64::from_bits(((k as i64 + 1023) as u64) << 52)
}

/// ln x in f64 for positive normal x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), then
/// 2 atanh((m-1)/(m+1)) by its series (30 terms, |z| < 0.172).
pub fn ln_f64(x: f64) -> f64 {
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0f64;
    for n in 0..30 {
        sum += term / (2 * n + 1) as f64;
        term *= z2;
    }
    (e as f64) * LN2_HI + ((e as f64) * LN2_LO + 2.0 * sum)
}

/// pi/2 in three parts of 33 bits each, so k * part is exact for |k| < 2^20 (fdlibm's
/// constants, as bits).
const PIO2_1: f64 = f64::from_bits(0x3ff9_21fb_5440_0000);
const PIO2_2: f64 = f64::from_bits(0x3dd0_b461_1a60_0000);
const PIO2_3: f64 = f64::from_bits(0x3ba3_198a_2e00_0000);

/// (sin x, cos x) in f64 for |x| < 2^20 * pi/2: x = k pi/2 + r (Cody-Waite, three
/// parts), then Taylor series of sin and cos in r (|r| <= pi/4, 14 terms each) and the
/// quadrant k mod 4.
pub fn sin_cos_f64(x: f64) -> (f64, f64) {
    let k = (x * std::f64::consts::FRAC_2_PI).round();
    let r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3;
    let r2 = r * r;
    let (mut s, mut c) = (0.0f64, 0.0f64);
    let (mut ts, mut tc) = (r, 1.0f64);
    for n in 0..14 {
        s += ts;
        c += tc;
        let a = (2 * n + 2) as f64;
        ts = -ts * r2 / (a * (a + 1.0));
        tc = -tc * r2 / ((a - 1.0) * a);
    }
    match (k as i64).rem_euclid(4) {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ours and the hardware's conversion agree on every f16 but the signalling NaNs
    /// (which the hardware quiets; no step ever makes one: f32 arithmetic and
    /// `f32_to_f16` give quiet NaNs only), so either may widen the caches.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn f16_widening_matches_the_hardware() {
        if !std::arch::is_x86_feature_detected!("f16c") {
            return;
        }
        #[target_feature(enable = "f16c")]
        unsafe fn hw(h: u16) -> f32 {
            use std::arch::x86_64::*;
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h as i16)))
        }
        for h in 0..=u16::MAX {
            let snan = h & 0x7c00 == 0x7c00 && h & 0x3ff != 0 && h & 0x200 == 0;
            if !snan {
                // SAFETY: the CPU has F16C (checked above).
                let theirs = unsafe { hw(h) };
                assert_eq!(f16_to_f32(h).to_bits(), theirs.to_bits(), "{h:#x}");
            }
        }
        assert!(f32_to_f16(f32::NAN) & 0x200 != 0, "a quiet NaN stays quiet");
    }

    #[test]
    fn f16_round_trips_every_value_and_rounds_to_even() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f32_to_f16(x) & 0x7fff > 0x7c00);
                continue;
            }
            assert_eq!(f32_to_f16(x), h, "{h:#06x} -> {x}");
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds to infinity
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: to even, 1.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        // Halfway between the two smallest subnormals: to even.
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-24)), 0x0002);
        assert_eq!(f32_to_f16(0.5 * 2f32.powi(-24)), 0x0000);
        assert_eq!(f32_to_f16(0.75 * 2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
    }

    #[test]
    fn the_functions_are_accurate() {
        for i in -200..=200 {
            let x = i as f64 * 0.173;
            let rel = (exp_f64(x) / x.exp() - 1.0).abs();
            assert!(rel < 1e-14, "exp {x}: {rel}");
            if x > 0.0 {
                assert!((ln_f64(x) - x.ln()).abs() < 1e-14, "ln {x}");
            }
        }
        for i in 0..5000 {
            let x = i as f64 * 0.731;
            let (s, c) = sin_cos_f64(x);
            assert!(
                (s - x.sin()).abs() < 1e-13 && (c - x.cos()).abs() < 1e-13,
                "{x}"
            );
        }
        for x in [-3.5f32, -0.5, -0.49999997, 0.5, 2.5, 126.6, -127.4] {
            assert_eq!(round_away(x), x.round(), "{x}");
        }
        for x in [-20.0f32, -1.0, 0.0, 0.3, 5.0, 80.0] {
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            assert!(
                (silu(x) as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                "{x}"
            );
        }
    }
}
