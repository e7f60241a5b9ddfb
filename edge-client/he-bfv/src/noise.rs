//! Noise arithmetic of the server's products: centred plaintext polynomials, deterministic noise
//! bounds, flooding, re-randomisation, and the SIMD-to-coefficient map with limb splitting.
//!
//! Everything here is exact integer reasoning on worst cases, never a measured or "typical"
//! noise: the flooding argument in the crate docs needs a bound that holds for every input.

use std::sync::Arc;

use core_nostd::field::P;
use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::ntt::NttOperator;
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Context, Poly, Representation};
use fhe_math::zq::Modulus;
use rand::CryptoRng;

use crate::{HeError, STATISTICAL_SECURITY_BITS, VARIANCE};

/// Bound on the noise of a fresh secret-key ciphertext of fhe, per coefficient: the error is
/// centred binomial in `[-20, 20]` and the scaled message `round(q m / t)` adds at most `1/2`.
pub const FRESH_NOISE_BOUND: u128 = 21;
/// Width of the limbs a SIMD plaintext is split into (see the crate docs).
pub const SIMD_LIMB_BITS: u32 = 30;

/// `ceil(log2(x))` for `x >= 1`.
pub fn ceil_log2(x: u128) -> u32 {
    if x <= 1 {
        0
    } else {
        128 - (x - 1).leading_zeros()
    }
}

/// The flooding width `f` for a round that returns `coefficients` coefficients whose
/// secret-dependent noise is at most `noise_bound` each: statistical distance at most
/// `2^-(STATISTICAL_SECURITY_BITS + 2)` for the round. Fails if the flooded ciphertext would not
/// decrypt (`f + 1` must stay below `capacity_bits`, with one bit left for the rest).
pub fn flooding_bits(noise_bound: u128, coefficients: usize, capacity_bits: u32) -> Result<u32, HeError> {
    let f = ceil_log2(noise_bound) + ceil_log2(coefficients as u128) + STATISTICAL_SECURITY_BITS + 1;
    if f + 2 > capacity_bits {
        return Err(HeError::NoRoomForFlooding { needed: f + 2, available: capacity_bits });
    }
    Ok(f)
}

/// A polynomial of uniform integers in `[-2^bits, 2^bits)`, NTT form (`bits <= 126`).
pub fn flooding_poly(ctx: &Arc<Context>, bits: u32, rng: &mut impl CryptoRng) -> Poly {
    debug_assert!(bits <= 126);
    let n = core_nostd::field::RING_DEGREE;
    let moduli = ctx.moduli();
    let mut residues = vec![0u64; moduli.len() * n];
    let mask = (1u128 << (bits + 1)) - 1;
    for j in 0..n {
        let raw = ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())) & mask;
        let x = raw as i128 - (1i128 << bits);
        for (i, &q) in moduli.iter().enumerate() {
            residues[i * n + j] = x.rem_euclid(i128::from(q)) as u64;
        }
    }
    let mut p = Poly::try_convert_from(residues, ctx, false, Representation::PowerBasis)
        .expect("the residue vector has the context's shape");
    p.change_representation(Representation::Ntt);
    p
}

/// A plaintext polynomial with *centred* (signed) coefficients, ready to multiply ciphertext
/// polynomials (NttShoup form). fhe's own encoding lifts `-1` to `t - 1`, which costs as much
/// noise as a uniform plaintext; the centred lift keeps the noise at `|e| ||w||_1`.
pub fn centred_poly(ctx: &Arc<Context>, coefficients: &[i64]) -> Result<Poly, HeError> {
    let mut p = Poly::try_convert_from(coefficients, ctx, false, Representation::PowerBasis)?;
    p.change_representation(Representation::NttShoup);
    Ok(p)
}

/// `||w||_1` of a coefficient vector.
pub fn l1_norm(coefficients: &[i64]) -> u128 {
    coefficients.iter().map(|&c| u128::from(c.unsigned_abs())).sum()
}

/// `sum_g inputs[g] ⊛ kernels[g]`, polynomial by polynomial (a ciphertext-plaintext product
/// with centred plaintexts). Noise: at most `FRESH_NOISE_BOUND * sum_g ||kernels[g]||_1` for
/// fresh inputs.
pub fn multiply_accumulate(
    par: &Arc<BfvParameters>,
    inputs: &[&Ciphertext],
    kernels: &[&Poly],
) -> Result<Ciphertext, HeError> {
    if inputs.len() != kernels.len() || inputs.is_empty() {
        return Err(HeError::Count { expected: kernels.len(), found: inputs.len() });
    }
    let mut c0 = &inputs[0][0] * kernels[0];
    let mut c1 = &inputs[0][1] * kernels[0];
    for (ct, k) in inputs.iter().zip(kernels).skip(1) {
        c0 += &(&ct[0] * *k);
        c1 += &(&ct[1] * *k);
    }
    Ok(Ciphertext::new(vec![c0, c1], par)?)
}

/// A fresh encryption of zero under the client's public key `pk` (itself an encryption of zero
/// under the secret key): `(u pk0 + e1, u pk1 + e2)`, `u, e1, e2` small. Its noise, at most
/// `20 n 20 + 20 + 20 n 20`, does not depend on anything the server holds.
pub fn encryption_of_zero(
    par: &Arc<BfvParameters>,
    pk: &Ciphertext,
    rng: &mut impl CryptoRng,
) -> Result<Ciphertext, HeError> {
    let ctx = pk[0].ctx();
    let u = Poly::small(ctx, Representation::Ntt, VARIANCE, rng)?;
    let e1 = Poly::small(ctx, Representation::Ntt, VARIANCE, rng)?;
    let e2 = Poly::small(ctx, Representation::Ntt, VARIANCE, rng)?;
    let mut c0 = &u * &pk[0];
    c0 += &e1;
    let mut c1 = &u * &pk[1];
    c1 += &e2;
    Ok(Ciphertext::new(vec![c0, c1], par)?)
}

/// Turns SIMD slot values into the coefficients of the plaintext polynomial fhe's SIMD encoding
/// would produce, centred in `(-t/2, t/2]`: the form [`centred_poly`] multiplies with.
#[derive(Debug)]
pub struct SimdCoder {
    ntt: NttOperator,
    /// Slot `i` is NTT point `index_map[i]` (fhe's `matrix_reps_index_map`).
    index_map: Vec<usize>,
}

impl SimdCoder {
    pub fn new(degree: usize) -> Result<SimdCoder, HeError> {
        let modulus = Modulus::new(P)?;
        let ntt = NttOperator::new(&modulus, degree).ok_or(HeError::Malformed("no NTT for t"))?;
        // As fhe 0.1.1 builds it (bfv/parameters.rs): slots in the order of the powers of 3.
        let row_size = degree >> 1;
        let m = degree << 1;
        let mut pos = 1usize;
        let mut index_map = vec![0usize; degree];
        let shift = degree.leading_zeros() + 1;
        for i in 0..row_size {
            let index1 = (pos - 1) >> 1;
            let index2 = (m - pos - 1) >> 1;
            index_map[i] = index1.reverse_bits() >> shift;
            index_map[row_size | i] = index2.reverse_bits() >> shift;
            pos = (pos * 3) & (m - 1);
        }
        Ok(SimdCoder { ntt, index_map })
    }

    /// Centred coefficients of the SIMD encoding of `slots` (values `< t`; missing slots are 0).
    pub fn coefficients(&self, slots: &[u64]) -> Vec<i64> {
        let mut w = vec![0u64; self.index_map.len()];
        for (&v, &i) in slots.iter().zip(&self.index_map) {
            w[i] = v;
        }
        self.ntt.backward(&mut w);
        w.iter().map(|&c| if c > P / 2 { c as i64 - P as i64 } else { c as i64 }).collect()
    }
}

/// Splits centred coefficients `c` (|c| < 2^59) into `c = lo + 2^SIMD_LIMB_BITS hi` with
/// `lo` in `[-2^29, 2^29)` and `|hi| <= 2^29`.
pub fn split_limbs(coefficients: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let half = 1i64 << (SIMD_LIMB_BITS - 1);
    let full = 1i64 << SIMD_LIMB_BITS;
    coefficients
        .iter()
        .map(|&c| {
            let lo = (c + half).rem_euclid(full) - half;
            (lo, (c - lo) >> SIMD_LIMB_BITS)
        })
        .unzip()
}

/// Noise bound of one limb-split SIMD product: `21 (||U_lo||_1 + ||U_hi||_1)`.
pub fn simd_noise_bound(lo: &[i64], hi: &[i64]) -> u128 {
    FRESH_NOISE_BOUND * (l1_norm(lo) + l1_norm(hi))
}

/// The worst case of [`simd_noise_bound`] for any SIMD plaintext: `21 n 2^30`. The flooding
/// width must be fixed before the server draws `u`, so it uses this.
pub fn simd_noise_bound_any(degree: usize) -> u128 {
    FRESH_NOISE_BOUND * degree as u128 * (1u128 << SIMD_LIMB_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parameters;
    use fhe::bfv::{Encoding, Plaintext, SecretKey};
    use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter};
    use num_bigint::BigUint;
    use rand::{Rng, SeedableRng};

    #[test]
    fn limbs_recombine() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let c: Vec<i64> = (0..1000).map(|_| rng.random_range(-(P as i64) / 2..=(P as i64) / 2)).collect();
        let (lo, hi) = split_limbs(&c);
        for ((&c, &l), &h) in c.iter().zip(&lo).zip(&hi) {
            assert_eq!(l + (h << SIMD_LIMB_BITS), c);
            assert!(l.abs() <= 1 << 29 && h.abs() <= 1 << 29);
        }
    }

    #[test]
    fn flooding_is_within_its_width() {
        let par = parameters().unwrap();
        let ctx = par.context_at_level(0).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let mut p = flooding_poly(ctx, 100, &mut rng);
        p.change_representation(Representation::PowerBasis);
        let q: BigUint = par.moduli().iter().map(|&m| BigUint::from(m)).product();
        let half = &q >> 1u32;
        let sizes: Vec<u64> = Vec::<BigUint>::from(&p)
            .iter()
            .map(|x| if x > &half { (&q - x).bits() } else { x.bits() })
            .collect();
        assert!(sizes.iter().all(|&b| b <= 100), "within [-2^100, 2^100]");
        assert!(sizes.iter().filter(|&&b| b >= 99).count() > par.degree() / 2, "roughly uniform");
    }

    /// The centred SIMD product equals fhe's own SIMD product, and its noise stays within the
    /// deterministic bound.
    #[test]
    fn limb_split_simd_product_is_the_slotwise_product() {
        let par = parameters().unwrap();
        let ctx = par.context_at_level(0).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let sk = SecretKey::random(&par, &mut rng);
        let n = par.degree();
        let y: Vec<u64> = (0..n).map(|_| rng.random_range(0..P)).collect();
        let u: Vec<u64> = (0..n).map(|_| rng.random_range(0..P)).collect();
        let y_shift: Vec<u64> =
            y.iter().map(|&v| ((u128::from(v) << SIMD_LIMB_BITS) % u128::from(P)) as u64).collect();
        let enc = |v: &[u64], rng: &mut rand_chacha::ChaCha20Rng| {
            sk.try_encrypt(&Plaintext::try_encode(v, Encoding::simd(), &par).unwrap(), rng).unwrap()
        };
        let (ct_lo, ct_hi) = (enc(&y, &mut rng), enc(&y_shift, &mut rng));
        let coder = SimdCoder::new(n).unwrap();
        let (lo, hi) = split_limbs(&coder.coefficients(&u));
        let (plo, phi) = (centred_poly(ctx, &lo).unwrap(), centred_poly(ctx, &hi).unwrap());
        let prod = multiply_accumulate(&par, &[&ct_lo, &ct_hi], &[&plo, &phi]).unwrap();
        let got = Vec::<u64>::try_decode(&sk.try_decrypt(&prod).unwrap(), Encoding::simd()).unwrap();
        for j in 0..n {
            assert_eq!(u128::from(got[j]), u128::from(y[j]) * u128::from(u[j]) % u128::from(P), "slot {j}");
        }
        // SAFETY: variable-time noise measurement on test data.
        let noise = unsafe { sk.measure_noise(&prod).unwrap() } as u32;
        let bound = simd_noise_bound(&lo, &hi);
        assert!(noise <= ceil_log2(bound) && bound <= simd_noise_bound_any(n), "noise {noise} bits");
        println!("SIMD product noise {noise} bits, bound {} bits", ceil_log2(bound));
    }
}
