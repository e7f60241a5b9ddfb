//! Fixed-point encoding between real numbers and F_p (DESIGN §3).
//!
//! A real `x` is carried as the field element `round(x * 2^f) mod p`, where `f` is the number of
//! fraction bits. `f` is a per-model parameter ([`crate::arch::Architecture::frac_bits`]), so it
//! is a run-time argument here and not a type parameter; the *values* at the API boundary are the
//! `fixed` crate's types (any [`ToFixed`] source: `FixedI64<U..>` such as `I32F32`, `I16F16`, or a
//! primitive `f32`/`f64`/integer) so callers never hand-roll float-to-integer rounding, which
//! `core` cannot do without `libm` anyway.
//!
//! Every conversion goes through the exact intermediate [`I64F64`]: a source with at most 64
//! fraction bits converts to it without loss (floats are rounded to 2^-64, ties to even, by the
//! `fixed` crate), and the step from 64 to `f` fraction bits is one integer rounding to nearest
//! (ties towards +infinity), done here once for all source types. Decoding reads the *centred*
//! representative in `(-p/2, p/2]`, so negative reals come back negative.
//!
//! The scaled integer must stay within `|v| <= (p - 1) / 2`; larger values would alias negative
//! ones and are refused with [`FixedPointError::OutOfRange`] rather than wrapped silently.

use fixed::traits::{Fixed, ToFixed};
use fixed::types::I64F64;

use crate::field::{Fp, HALF, P_BITS};

/// Largest supported number of fraction bits. With `f = 58` only `|x| < 2` is representable; the
/// models use far fewer (see the crate docs for the choice of `f`).
pub const MAX_FRAC_BITS: u32 = P_BITS - 2;

/// Recommended fraction bits for activations (and weights, `truncate_bits`) when a model has
/// no better-calibrated choice: 6 keeps every bundled trained model within the `2^-30`
/// truncation-failure target for mean activations up to about 12 (see the crate docs).
pub const RECOMMENDED_FRAC_BITS: u32 = 6;

/// Why a value cannot be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixedPointError {
    /// `frac_bits` is above [`MAX_FRAC_BITS`].
    FracBitsTooLarge(u32),
    /// The scaled value does not fit in `(-p/2, p/2]` (or the source is NaN/infinite), or the
    /// decoded value does not fit in the requested fixed-point type.
    OutOfRange,
    /// Input and output slices of different lengths.
    LengthMismatch { input: usize, output: usize },
}

impl core::fmt::Display for FixedPointError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FixedPointError::FracBitsTooLarge(b) => {
                write!(f, "{b} fraction bits is above the maximum of {MAX_FRAC_BITS}")
            }
            FixedPointError::OutOfRange => write!(f, "value out of the representable fixed-point range"),
            FixedPointError::LengthMismatch { input, output } => {
                write!(f, "{input} inputs for {output} outputs")
            }
        }
    }
}

fn check_frac_bits(frac_bits: u32) -> Result<(), FixedPointError> {
    if frac_bits > MAX_FRAC_BITS {
        Err(FixedPointError::FracBitsTooLarge(frac_bits))
    } else {
        Ok(())
    }
}

/// Round the bits of an [`I64F64`] (64 fraction bits) to `frac_bits` fraction bits, to nearest
/// with ties towards +infinity. `frac_bits <= MAX_FRAC_BITS`, so the shift is in `6..=64`.
fn round_from_64(bits: i128, frac_bits: u32) -> Result<i128, FixedPointError> {
    let shift = 64 - frac_bits;
    let half = 1i128 << (shift - 1);
    bits.checked_add(half).map(|b| b >> shift).ok_or(FixedPointError::OutOfRange)
}

/// Encode `x` with `frac_bits` fraction bits: `round(x * 2^frac_bits) mod p`.
///
/// `x` is anything the `fixed` crate converts from: a fixed-point number (`I32F32`, `I16F16`,
/// ...), `f32`/`f64`, or an integer. Errors on NaN, infinities and values whose scaled magnitude
/// exceeds `(p - 1) / 2`.
pub fn encode<T: ToFixed>(x: T, frac_bits: u32) -> Result<Fp, FixedPointError> {
    check_frac_bits(frac_bits)?;
    let exact = I64F64::checked_from_num(x).ok_or(FixedPointError::OutOfRange)?;
    let scaled = round_from_64(exact.to_bits(), frac_bits)?;
    if scaled.unsigned_abs() > HALF as u128 {
        return Err(FixedPointError::OutOfRange);
    }
    // |scaled| <= HALF < 2^59, so the cast is exact.
    Ok(Fp::from_i64(scaled as i64))
}

/// The exact real value of `x` (centred) as an [`I64F64`]: `x_centred / 2^frac_bits`.
pub fn decode_exact(x: Fp, frac_bits: u32) -> Result<I64F64, FixedPointError> {
    check_frac_bits(frac_bits)?;
    // |v| < 2^59 and the shift is at least 6, so the result is below 2^123: no overflow.
    let v = x.to_i64_centered() as i128;
    Ok(I64F64::from_bits(v << (64 - frac_bits)))
}

/// Decode `x` (centred) with `frac_bits` fraction bits into the fixed-point type `F`, rounding
/// to nearest (ties towards +infinity) when `F` has fewer fraction bits than `frac_bits`.
pub fn decode<F: Fixed>(x: Fp, frac_bits: u32) -> Result<F, FixedPointError> {
    let exact = decode_exact(x, frac_bits)?;
    let rounded = if F::FRAC_NBITS < 64 {
        // `checked_from_fixed` floors extra fraction bits; adding half an ulp of F first turns
        // the floor into round-to-nearest.
        let half = 1i128 << (63 - F::FRAC_NBITS);
        let bits = exact.to_bits().checked_add(half).ok_or(FixedPointError::OutOfRange)?;
        I64F64::from_bits(bits)
    } else {
        exact
    };
    F::checked_from_fixed(rounded).ok_or(FixedPointError::OutOfRange)
}

/// Decode `x` (centred) as an `f64`: `x_centred / 2^frac_bits`, correctly rounded to `f64`.
pub fn decode_f64(x: Fp, frac_bits: u32) -> Result<f64, FixedPointError> {
    decode_exact(x, frac_bits).map(|v| v.to_num::<f64>())
}

/// Encode an integer that is already scaled (it carries its own fraction bits, e.g. a quantised
/// weight or bias): `v mod p`, refusing `|v| > (p - 1) / 2`.
pub fn encode_scaled(v: i64) -> Result<Fp, FixedPointError> {
    if v.unsigned_abs() > HALF {
        Err(FixedPointError::OutOfRange)
    } else {
        Ok(Fp::from_i64(v))
    }
}

/// The scaled integer carried by `x`: its centred representative.
pub fn decode_scaled(x: Fp) -> i64 {
    x.to_i64_centered()
}

/// Encode the integer `v` as a fixed-point value with `frac_bits` fraction bits (`v * 2^f`).
pub fn encode_int(v: i64, frac_bits: u32) -> Result<Fp, FixedPointError> {
    check_frac_bits(frac_bits)?;
    let scaled = (v as i128) << frac_bits; // |v| < 2^63, f <= 58: below 2^121.
    if scaled.unsigned_abs() > HALF as u128 {
        return Err(FixedPointError::OutOfRange);
    }
    Ok(Fp::from_i64(scaled as i64))
}

/// Encode a slice element by element into `out` (same length). On error `out` is partially
/// written and the index of the offending element is returned with the error (index 0 for a
/// length mismatch).
pub fn encode_into<T: ToFixed + Copy>(
    xs: &[T],
    frac_bits: u32,
    out: &mut [Fp],
) -> Result<(), (usize, FixedPointError)> {
    if xs.len() != out.len() {
        return Err((0, FixedPointError::LengthMismatch { input: xs.len(), output: out.len() }));
    }
    for (i, (x, o)) in xs.iter().zip(out.iter_mut()).enumerate() {
        *o = encode(*x, frac_bits).map_err(|e| (i, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fixed::types::{I16F16, I32F32, I8F8};
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(encode(1.5f64, 8).unwrap(), Fp::from_i64(384));
        assert_eq!(encode(-1.5f64, 8).unwrap(), Fp::from_i64(-384));
        assert_eq!(encode(I32F32::from_num(0.25), 4).unwrap(), Fp::from_i64(4));
        // Round to nearest, ties towards +infinity.
        assert_eq!(encode(I32F32::from_num(0.5), 0).unwrap(), Fp::from_i64(1));
        assert_eq!(encode(I32F32::from_num(-0.5), 0).unwrap(), Fp::from_i64(0));
        assert_eq!(encode(-0.75f64, 1).unwrap(), Fp::from_i64(-1));
        assert_eq!(decode::<I32F32>(Fp::from_i64(-384), 8).unwrap(), I32F32::from_num(-1.5));
        assert_eq!(decode_f64(Fp::from_i64(-3), 2).unwrap(), -0.75);
        // Decoding into a coarser type rounds to nearest.
        assert_eq!(decode::<I8F8>(Fp::from_i64(3), 10).unwrap(), I8F8::from_bits(1));
        assert_eq!(decode::<I8F8>(Fp::from_i64(1), 10).unwrap(), I8F8::from_bits(0));
        assert_eq!(encode_int(-3, 8).unwrap(), Fp::from_i64(-768));
        assert_eq!(decode_scaled(encode_scaled(-77).unwrap()), -77);
    }

    #[test]
    fn out_of_range_is_refused() {
        assert_eq!(encode(f64::NAN, 8), Err(FixedPointError::OutOfRange));
        assert_eq!(encode(f64::INFINITY, 8), Err(FixedPointError::OutOfRange));
        assert_eq!(encode(1e30f64, 8), Err(FixedPointError::OutOfRange));
        assert_eq!(encode(2.0f64, 58), Err(FixedPointError::OutOfRange));
        assert!(encode(1.99f64, 58).is_ok());
        assert_eq!(encode(1.0f64, 59), Err(FixedPointError::FracBitsTooLarge(59)));
        assert_eq!(encode_int(1 << 50, 10), Err(FixedPointError::OutOfRange));
        assert_eq!(encode_scaled(HALF as i64 + 1), Err(FixedPointError::OutOfRange));
        assert_eq!(encode_scaled(-(HALF as i64)).unwrap().to_i64_centered(), -(HALF as i64));
        // A value that fits the field but not the target type.
        assert_eq!(decode::<I8F8>(Fp::from_i64(1 << 40), 8), Err(FixedPointError::OutOfRange));
        let mut out = [Fp::ZERO; 3];
        assert_eq!(encode_into(&[0.0f64, f64::NAN, 1.0], 8, &mut out), Err((1, FixedPointError::OutOfRange)));
        assert_eq!(
            encode_into(&[0.0f64], 8, &mut out),
            Err((0, FixedPointError::LengthMismatch { input: 1, output: 3 }))
        );
        encode_into(&[0.5f64, -0.25, 3.0], 4, &mut out).unwrap();
        assert_eq!(out, [Fp::from_i64(8), Fp::from_i64(-4), Fp::from_i64(48)]);
    }

    proptest! {
        #[test]
        fn f64_round_trip_within_half_ulp(x in -1.0e6f64..1.0e6, f in 0u32..=24) {
            let e = encode(x, f).unwrap();
            let back = decode_f64(e, f).unwrap();
            let ulp = 1.0 / (1u64 << f) as f64;
            prop_assert!((back - x).abs() <= ulp / 2.0 + 1e-9 * x.abs().max(1.0), "{x} -> {back} at f={f}");
        }

        #[test]
        fn fixed_round_trip_within_half_ulp(bits in -(1i64 << 52)..(1i64 << 52), f in 0u32..=30) {
            // |x| < 2^20, so x * 2^f < 2^50 stays in range.
            let x = I32F32::from_bits(bits);
            let e = encode(x, f).unwrap();
            let back: I32F32 = decode(e, f).unwrap();
            let err = (back.to_bits() as i128 - bits as i128).unsigned_abs();
            // Half an ulp of 2^-f, in units of 2^-32.
            prop_assert!(err <= 1u128 << (32 - f - 1), "{x} -> {back} at f={f}");
            // Exact when the value already has at most f fraction bits.
            let coarse = I32F32::from_bits(bits >> (32 - f) << (32 - f));
            prop_assert_eq!(decode::<I32F32>(encode(coarse, f).unwrap(), f).unwrap(), coarse);
        }

        #[test]
        fn encoding_is_additive(a in -30000i32..30000, b in -30000i32..30000) {
            // Fixed-point values add in the field like the reals they encode.
            let fa = I16F16::from_bits(a);
            let fb = I16F16::from_bits(b);
            let sum = encode(fa, 16).unwrap() + encode(fb, 16).unwrap();
            prop_assert_eq!(decode::<I16F16>(sum, 16).unwrap(), fa + fb);
        }
    }
}

/// Encode an 8-bit pixel as the real `pixel / 255` with `frac_bits` fraction bits, rounding to
/// nearest (ties up), in integer arithmetic only. Every party that encodes an image (the board,
/// the host client, the plaintext reference) uses this one function, so they agree bit for bit.
pub const fn encode_pixel(pixel: u8, frac_bits: u32) -> Fp {
    // round(p * 2^f / 255) = floor((2 * p * 2^f + 255) / 510); p * 2^(f+1) < 2^41 for f <= 32.
    let num = ((pixel as u64) << (frac_bits + 1)) + 255;
    Fp::from_u64_reduced(num / 510)
}

#[cfg(test)]
mod pixel_tests {
    use super::*;

    #[test]
    fn pixels_encode_as_rounded_fractions() {
        assert_eq!(encode_pixel(0, 8), Fp::ZERO);
        assert_eq!(encode_pixel(255, 8), Fp::from_i64(256));
        for p in 0..=255u8 {
            let exact = p as f64 * 256.0 / 255.0;
            let got = encode_pixel(p, 8).value() as f64;
            assert!((got - exact).abs() <= 0.5, "{p}: {got} vs {exact}");
        }
    }
}
