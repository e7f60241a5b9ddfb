//! What both halves of HE preprocessing (DESIGN §4, preprocessing) must agree on: the BFV
//! parameter set, the ciphertext blobs that cross the wire, the noise bounds and the flooding
//! that makes returned ciphertexts circuit-private.
//!
//! The client half lives in `edge-client` (keys, encryption, decryption, the ticket), the server
//! half in `cloud-server` (encoded kernels, the products); this crate is the contract between
//! them, so neither re-implements the other's encoding.
//!
//! # Parameters and security
//!
//! BFV (crate `fhe` 0.1.1), ring degree `n = 8192`, plaintext modulus `t = p`
//! (`core_nostd::field::P`, a 60-bit prime `= 1 mod 2n`, so both coefficient and SIMD encodings
//! work), ciphertext modulus `q` = three 62-bit NTT primes, `log2 q` about 186. The HE
//! standard's table (homomorphicencryption.org, 2018, ternary / small secrets, classical) allows at
//! most 218 bits of `q` at `n = 8192` for 128-bit security: 186 is within it. Secrets and errors
//! come from fhe's centred binomial distribution of variance 10 (values in `[-20, 20]`). The
//! parameters are built from these constants only, never from network input (fhe's builder can
//! panic on some inputs).
//!
//! # Circuit privacy (why a returned ciphertext reveals only its plaintext)
//!
//! The server returns `ct' = ct ⊛ w - Enc(M) + Enc_pk(0) + (F, 0)`, then switches it to two
//! moduli and drops low bits ([`blob`]). Each piece does one job:
//! * `Enc_pk(0)`, an encryption of zero under the client's public key (itself a fresh
//!   encryption of zero the client sends), re-randomises the `c1` part: without it `c1 * w` would
//!   let the client divide out the weights.
//! * `F`, uniform in `[-2^f, 2^f)` per coefficient, floods the noise. The noise that depends on
//!   the server's secrets is bounded *deterministically* ([`noise`]): `|e ⊛ w| <= 21 ||w||_1`
//!   for a fresh client ciphertext. For a round that returns `N` coefficients of noise at most
//!   `B`, the statistical distance between the flooded noise and `F` alone is at most
//!   `N B / 2^(f+1)`; [`noise::flooding_bits`] takes `f = ceil(log2 B) + ceil(log2 N) + 41`, so
//!   each of the two rounds is within `2^-42` and a whole ticket within `2^-41`, below the
//!   design's `2^-40`.
//! * SIMD products multiply by a plaintext whose coefficients are uniform in `Z_t` (60 bits): the
//!   worst-case noise `21 n t / 2` would leave no room. So the plaintext is split in two 30-bit
//!   limbs and the client sends `Enc(y)` and `Enc(2^30 y)`: the server computes
//!   `Enc(y) ⊛ U_lo + Enc(2^30 y) ⊛ U_hi`, whose noise is below `2^48`.
//! * Modulus switching and bit dropping are public functions of the flooded ciphertext, so they
//!   keep its privacy; they cut the reply to under half of fhe's own serialisation.

pub mod blob;
pub mod layout;
pub mod noise;

use std::sync::Arc;

use core_nostd::field::{P, RING_DEGREE};
use fhe::bfv::{BfvParameters, BfvParametersBuilder};

pub use blob::{BlobAssembler, BlobKind, KeyId};
pub use layout::Layout;

/// Sizes of the ciphertext moduli (bits). Every modulus must exceed `t` (fhe decrypts wrongly
/// otherwise), and none may have `t`'s own size (fhe's builder panics).
pub const MODULI_BITS: [usize; 3] = [62, 62, 62];
/// The variance of fhe's secret and error distribution (centred binomial, values in `[-20, 20]`).
pub const VARIANCE: usize = 10;
/// Statistical security of the flooding, per ticket (DESIGN §2: at least 40 bits).
pub const STATISTICAL_SECURITY_BITS: u32 = 40;

/// Errors of HE preprocessing.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    #[error("fhe: {0}")]
    Fhe(#[from] fhe::Error),
    #[error("fhe-math: {0}")]
    Math(#[from] fhe_math::Error),
    #[error("malformed ciphertext blob: {0}")]
    Malformed(&'static str),
    #[error("the ciphertext was made under another key")]
    WrongKey,
    #[error("expected a {expected:?} blob, got {found:?}")]
    WrongKind { expected: BlobKind, found: BlobKind },
    #[error("expected {expected} ciphertexts, got {found}")]
    Count { expected: usize, found: usize },
    #[error("the map does not fit the ring (one input channel is larger than n)")]
    DoesNotFit,
    #[error("noise flooding needs {needed} bits of noise room, only {available} exist")]
    NoRoomForFlooding { needed: u32, available: u32 },
}

/// The BFV parameters of the whole system (one `Arc`: fhe requires that objects share it).
pub fn parameters() -> Result<Arc<BfvParameters>, HeError> {
    Ok(BfvParametersBuilder::new()
        .set_degree(RING_DEGREE)
        .set_plaintext_modulus(P)
        .set_moduli_sizes(&MODULI_BITS)
        .set_variance(VARIANCE)
        .build_arc()?)
}

/// `log2` of the ciphertext modulus at `level` (level 0: all moduli).
pub fn log2_modulus(par: &BfvParameters, level: usize) -> f64 {
    par.moduli()[..par.moduli().len() - level].iter().map(|&q| (q as f64).log2()).sum()
}

/// Bits of noise a ciphertext at `level` can hold and still decrypt correctly: the noise must
/// stay below `q / (2t)`.
pub fn noise_capacity_bits(par: &BfvParameters, level: usize) -> u32 {
    (log2_modulus(par, level) - (P as f64).log2() - 1.0).floor() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_within_the_128_bit_table_and_above_t() {
        let par = parameters().unwrap();
        assert_eq!(par.degree(), 8192);
        assert!(log2_modulus(&par, 0) <= 218.0, "HE standard: log q <= 218 at n = 8192");
        assert!(par.moduli().iter().all(|&q| q > P), "t must be below every modulus");
        assert_eq!(noise_capacity_bits(&par, 0), 124);
        assert_eq!(noise_capacity_bits(&par, 1), 62);
    }
}
