//! The prime field F_p that carries every share and is the BFV plaintext modulus.
//!
//! # Why this p
//!
//! `p = 2^60 - 2^14 + 1 = 1152921504606830593` is prime and `p = 1 (mod 2n)` for the ring degree
//! `n = 8192` of the HE stage ([`RING_DEGREE`]), so the same field supports both BFV encodings:
//! coefficient encoding (convolutions and matrix products as polynomial products, no rotations)
//! and SIMD encoding (element-wise products, which need `p = 1 mod 2n`).
//!
//! * It is as large as the HE noise budget allows: with `n = 8192` and a 186-bit ciphertext
//!   modulus (3 x 62 bits, inside the 218-bit limit of the HE standard's 128-bit table), one
//!   ciphertext-plaintext product by a uniform plaintext uses about `log p + 18 = 78` of the
//!   `186 - 61 = 125` available bits, which leaves room for 40 bits of noise flooding. A 61- or
//!   62-bit p would eat that margin (and `p` must stay below every 62-bit ciphertext prime).
//! * A larger p directly lowers the local-truncation failure probability (about `|x| / p` per
//!   element, see `truncation`), which is what bounds the fixed-point precision.
//! * Its pseudo-Mersenne form `2^60 - c` with `c = 2^14 - 1` makes reduction of a 120-bit
//!   product two multiply-by-`c` folds and one conditional subtraction, with no division: this
//!   matters on a Cortex-M0+ that has no 64-bit divide.
//!
//! Arithmetic is branch-free on the values (masks instead of `if`), so the time of an operation
//! does not depend on the secret share it touches.

use core::fmt;
use core::ops::{Add, AddAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The field modulus `p = 2^60 - 2^14 + 1`.
pub const P: u64 = (1 << 60) - (1 << 14) + 1;
/// Number of bits of [`P`].
pub const P_BITS: u32 = 60;
/// Ring degree `n` of the BFV scheme that uses [`P`] as plaintext modulus (`P = 1 mod 2n`).
pub const RING_DEGREE: usize = 8192;
/// `c` in `P = 2^60 - c`.
const C: u64 = (1 << 14) - 1;
const MASK60: u64 = (1 << 60) - 1;
/// Largest value whose centred representative is non-negative: `(p - 1) / 2`.
pub const HALF: u64 = (P - 1) / 2;

/// An element of F_p, always stored in canonical form `0 <= value < P`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Fp(u64);

/// A value that is not a canonical field element (it is `>= P`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotCanonical(pub u64);

impl fmt::Display for NotCanonical {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a canonical element of F_p (p = {})", self.0, P)
    }
}

/// All-ones if `bit` is 1, zero if it is 0.
#[inline(always)]
const fn mask_from_bit(bit: u64) -> u64 {
    0u64.wrapping_sub(bit)
}

/// `x * C` for `x < 2^50`, as a shift and a subtraction (C = 2^14 - 1).
#[inline(always)]
const fn times_c(x: u64) -> u64 {
    (x << 14) - x
}

/// Subtract `P` once if `x >= P`, for `x < 2P`, without a branch on `x`.
#[inline(always)]
const fn reduce_once(x: u64) -> u64 {
    let (d, borrow) = x.overflowing_sub(P);
    d.wrapping_add(P & mask_from_bit(borrow as u64))
}

impl Fp {
    /// The additive identity.
    pub const ZERO: Fp = Fp(0);
    /// The multiplicative identity.
    pub const ONE: Fp = Fp(1);

    /// A canonical element from `value`, or an error if `value >= P`. Use this for values that
    /// come from outside (the network, a file): a non-canonical value is a protocol error.
    #[inline]
    pub const fn new(value: u64) -> Result<Fp, NotCanonical> {
        if value < P {
            Ok(Fp(value))
        } else {
            Err(NotCanonical(value))
        }
    }

    /// `value mod p`, for any `u64` (used on locally generated data, e.g. mask bits).
    #[inline]
    pub const fn from_u64_reduced(value: u64) -> Fp {
        // value = hi * 2^60 + lo with hi < 16, so value = hi * c + lo (mod p) < 2^60 + 2^18 < 2p.
        let hi = value >> 60;
        let lo = value & MASK60;
        Fp(reduce_once(lo + times_c(hi)))
    }

    /// `value mod p` for a 128-bit value (a product or a lazy sum of products).
    #[inline]
    pub const fn from_u128_reduced(value: u128) -> Fp {
        // Fold 1: value = a * 2^120 + b * 2^60 + c0 with a < 2^8: use 2^60 = c (mod p).
        let lo = (value as u64) & MASK60;
        let hi = value >> 60; // < 2^68
        let t = lo as u128 + hi * C as u128; // < 2^60 + 2^82
                                             // Fold 2.
        let lo = (t as u64) & MASK60;
        let hi = (t >> 60) as u64; // < 2^23
        let t = lo + hi * C; // < 2^60 + 2^37
                             // Fold 3 (cheap, keeps the bound below 2p).
        let lo = t & MASK60;
        let hi = t >> 60; // <= 1
        Fp(reduce_once(lo + hi * C))
    }

    /// The embedding of a signed integer: `v mod p` (negative `v` maps to `p - |v|`).
    #[inline]
    pub const fn from_i64(v: i64) -> Fp {
        let neg = (v < 0) as u64;
        let magnitude = Fp::from_u64_reduced(v.unsigned_abs());
        // Select magnitude or -magnitude without a branch.
        let negated = reduce_once(P - magnitude.0);
        let m = mask_from_bit(neg);
        Fp((magnitude.0 & !m) | (negated & m))
    }

    /// The canonical representative in `[0, p)`.
    #[inline]
    pub const fn value(self) -> u64 {
        self.0
    }

    /// The centred representative in `(-p/2, p/2]`: values above `(p-1)/2` are read as negative.
    /// This is how a reconstructed fixed-point value is read back as a signed integer.
    #[inline]
    pub const fn to_i64_centered(self) -> i64 {
        let is_neg = (self.0 > HALF) as u64;
        let m = mask_from_bit(is_neg);
        // If negative: self - p (as i64), else self.
        (self.0.wrapping_sub(P & m)) as i64
    }

    /// `self^e` by square and multiply (public exponent).
    pub fn pow(self, mut e: u64) -> Fp {
        let mut base = self;
        let mut acc = Fp::ONE;
        while e > 0 {
            if e & 1 == 1 {
                acc *= base;
            }
            base *= base;
            e >>= 1;
        }
        acc
    }

    /// The multiplicative inverse (by Fermat), `None` for zero. Public values only.
    pub fn inverse(self) -> Option<Fp> {
        if self.0 == 0 {
            None
        } else {
            Some(self.pow(P - 2))
        }
    }
}

impl fmt::Debug for Fp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fp({})", self.0)
    }
}

impl fmt::Display for Fp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl TryFrom<u64> for Fp {
    type Error = NotCanonical;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Fp::new(value)
    }
}

impl From<Fp> for u64 {
    fn from(x: Fp) -> u64 {
        x.0
    }
}

impl From<i64> for Fp {
    fn from(v: i64) -> Fp {
        Fp::from_i64(v)
    }
}

impl Add for Fp {
    type Output = Fp;
    #[inline(always)]
    fn add(self, rhs: Fp) -> Fp {
        // Both < 2^60, so the sum fits in u64 and is < 2p.
        Fp(reduce_once(self.0 + rhs.0))
    }
}

/// `a - b mod p` for canonical `a`, `b`, adding `p` back under a mask instead of a branch.
#[inline(always)]
const fn sub_mod(a: u64, b: u64) -> u64 {
    let (d, borrow) = a.overflowing_sub(b);
    d.wrapping_add(P & mask_from_bit(borrow as u64))
}

impl Sub for Fp {
    type Output = Fp;
    #[inline(always)]
    fn sub(self, rhs: Fp) -> Fp {
        Fp(sub_mod(self.0, rhs.0))
    }
}

impl Neg for Fp {
    type Output = Fp;
    #[inline(always)]
    fn neg(self) -> Fp {
        Fp::ZERO - self
    }
}

impl Mul for Fp {
    type Output = Fp;
    /// On 64-bit hosts one `u128` product and the generic reduction. On 32-bit targets (the
    /// boards) [`mul_mod_limbs32`]: `u128` arithmetic there is a chain of library calls (measured
    /// 564 instructions per product on thumbv6m, the boards' hottest operation).
    #[inline(always)]
    fn mul(self, rhs: Fp) -> Fp {
        #[cfg(target_pointer_width = "64")]
        {
            Fp::from_u128_reduced(self.0 as u128 * rhs.0 as u128)
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            Fp(mul_mod_limbs32(self.0, rhs.0))
        }
    }
}

/// `x * y` as a 64-bit value from four 16 x 16 -> 32 multiplies: ARMv6-M (Cortex-M0+) has only a
/// 32 x 32 -> 32 multiply, and a widening product compiles to a library call.
#[inline(always)]
const fn mul_32x32(x: u32, y: u32) -> u64 {
    let (xl, xh) = (x & 0xFFFF, x >> 16);
    let (yl, yh) = (y & 0xFFFF, y >> 16);
    let mid = (xl * yh) as u64 + (xh * yl) as u64;
    (((xh * yh) as u64) << 32) + (mid << 16) + (xl * yl) as u64
}

/// `a * b mod p` for canonical `a, b` with 32-bit limbs and shift-and-subtract folds, no `u128`.
/// Used on 32-bit targets; tested against the `u128` path on the host.
#[inline(always)]
pub const fn mul_mod_limbs32(a: u64, b: u64) -> u64 {
    let (a0, a1) = (a as u32, (a >> 32) as u32);
    let (b0, b1) = (b as u32, (b >> 32) as u32);
    // a, b < 2^60: a1, b1 < 2^28.
    let p00 = mul_32x32(a0, b0);
    let mid = mul_32x32(a0, b1) + mul_32x32(a1, b0); // < 2^61
    let p11 = mul_32x32(a1, b1); // < 2^56
    let (lo, carry) = p00.overflowing_add(mid << 32);
    let hi = p11 + (mid >> 32) + carry as u64; // the product is hi * 2^64 + lo < 2^120
                                               // product = h * 2^60 + l, and 2^60 = C (mod p) with C = 2^14 - 1.
    let l = lo & MASK60;
    let h = (hi << 4) | (lo >> 60); // < 2^60
                                    // h * C with h = h1 * 2^46 + h0: h0 * C < 2^60; g = h1 * C < 2^28, and
                                    // g * 2^46 = (g >> 14) * 2^60 + (g mod 2^14) * 2^46 = (g >> 14) * C + (g mod 2^14) * 2^46.
    let h0 = h & ((1 << 46) - 1);
    let h1 = h >> 46;
    let g = times_c(h1);
    let g_hi = g >> 14;
    let s = l + times_c(h0) + times_c(g_hi) + ((g & 0x3FFF) << 46); // < 2^62
    let s_hi = s >> 60; // <= 3
    reduce_once((s & MASK60) + times_c(s_hi)) // < 2^60 + 2^16 < 2p
}

impl AddAssign for Fp {
    #[inline(always)]
    fn add_assign(&mut self, rhs: Fp) {
        *self = *self + rhs;
    }
}

impl SubAssign for Fp {
    #[inline(always)]
    fn sub_assign(&mut self, rhs: Fp) {
        *self = *self - rhs;
    }
}

impl MulAssign for Fp {
    #[inline(always)]
    fn mul_assign(&mut self, rhs: Fp) {
        *self = *self * rhs;
    }
}

impl core::iter::Sum for Fp {
    fn sum<I: Iterator<Item = Fp>>(iter: I) -> Fp {
        iter.fold(Fp::ZERO, |a, b| a + b)
    }
}

/// On the wire a field element is its canonical `u64` (postcard: a varint).
impl Serialize for Fp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

/// Decoding rejects non-canonical values (`>= p`) instead of reducing them silently.
impl<'de> Deserialize<'de> for Fp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(deserializer)?;
        Fp::new(v).map_err(|_| serde::de::Error::custom("field element is not below p"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_is_one_mod_2n() {
        assert_eq!(P % (2 * RING_DEGREE as u64), 1);
        assert_eq!(P, 1152921504606830593);
        const { assert!(P < (1 << P_BITS) && P > (1 << (P_BITS - 1))) };
    }

    #[test]
    fn reduction_matches_u128_modulo() {
        let samples = [
            0u128,
            1,
            P as u128 - 1,
            P as u128,
            u64::MAX as u128,
            (P as u128 - 1) * (P as u128 - 1),
            u128::MAX,
            u128::MAX - 12345,
            1u128 << 127,
        ];
        for v in samples {
            assert_eq!(Fp::from_u128_reduced(v).value() as u128, v % P as u128, "{v}");
        }
        for v in [0u64, 1, P - 1, P, P + 1, u64::MAX, u64::MAX - P] {
            assert_eq!(Fp::from_u64_reduced(v).value(), v % P);
        }
        // The 32-bit limb product at the extremes (the proptest covers the rest).
        let edges = [0, 1, 2, C, 1 << 46, (1 << 46) - 1, 1 << 59, MASK60 >> 1, P - 2, P - 1];
        for a in edges {
            for b in edges {
                let want = (a as u128 * b as u128 % P as u128) as u64;
                assert_eq!(mul_mod_limbs32(a, b), want, "{a} * {b}");
            }
        }
    }

    mod laws {
        use super::*;
        use proptest::prelude::*;

        fn fp() -> impl Strategy<Value = Fp> {
            prop_oneof![
                any::<u64>().prop_map(Fp::from_u64_reduced),
                // Edge values near 0, p/2 and p.
                (0u64..64).prop_map(Fp::from_u64_reduced),
                (0u64..64).prop_map(|k| Fp::from_u64_reduced(P - 1 - k)),
                (0u64..64).prop_map(|k| Fp::from_u64_reduced(HALF - 32 + k)),
            ]
        }

        proptest! {
            #[test]
            fn ring_laws(a in fp(), b in fp(), c in fp()) {
                prop_assert_eq!(a + b, b + a);
                prop_assert_eq!(a * b, b * a);
                prop_assert_eq!((a + b) + c, a + (b + c));
                prop_assert_eq!((a * b) * c, a * (b * c));
                prop_assert_eq!(a * (b + c), a * b + a * c);
                prop_assert_eq!(a + Fp::ZERO, a);
                prop_assert_eq!(a * Fp::ONE, a);
                prop_assert_eq!(a + (-a), Fp::ZERO);
                prop_assert_eq!(a - b, a + (-b));
                prop_assert_eq!(-(-a), a);
            }

            #[test]
            fn limb_multiplication_matches_u128(a in fp(), b in fp()) {
                let want = (a.value() as u128 * b.value() as u128 % P as u128) as u64;
                prop_assert_eq!(mul_mod_limbs32(a.value(), b.value()), want);
            }

            #[test]
            fn matches_u128_arithmetic(a in fp(), b in fp()) {
                let p = P as u128;
                prop_assert_eq!((a * b).value() as u128, a.value() as u128 * b.value() as u128 % p);
                prop_assert_eq!((a + b).value() as u128, (a.value() as u128 + b.value() as u128) % p);
                prop_assert_eq!((a - b).value() as u128, (a.value() as u128 + p - b.value() as u128) % p);
            }

            #[test]
            fn inverse(a in fp()) {
                match a.inverse() {
                    None => prop_assert_eq!(a, Fp::ZERO),
                    Some(inv) => prop_assert_eq!(a * inv, Fp::ONE),
                }
            }

            #[test]
            fn reductions_and_serde(v in any::<u128>(), w in any::<u64>(), s in any::<i64>()) {
                prop_assert_eq!(Fp::from_u128_reduced(v).value() as u128, v % P as u128);
                prop_assert_eq!(Fp::from_u64_reduced(w).value(), w % P);
                prop_assert_eq!(Fp::from_i64(s).value() as i128, (s as i128).rem_euclid(P as i128));
                let x = Fp::from_u64_reduced(w);
                let mut buf = [0u8; 16];
                let bytes = postcard::to_slice(&x, &mut buf).unwrap();
                prop_assert_eq!(postcard::from_bytes::<Fp>(bytes).unwrap(), x);
                let bytes = postcard::to_slice(&w, &mut buf).unwrap();
                prop_assert_eq!(postcard::from_bytes::<Fp>(bytes).is_ok(), w < P);
            }
        }
    }

    #[test]
    fn signed_round_trip_and_inverse() {
        for v in [0i64, 1, -1, 42, -42, (HALF as i64), -(HALF as i64)] {
            assert_eq!(Fp::from_i64(v).to_i64_centered(), v);
        }
        assert_eq!(Fp::from_i64(i64::MIN).value() as i128, (i64::MIN as i128).rem_euclid(P as i128));
        let x = Fp::from_i64(-123456789);
        assert_eq!(x * x.inverse().unwrap(), Fp::ONE);
        assert!(Fp::new(P).is_err());
    }
}
