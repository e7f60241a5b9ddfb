//! Local truncation of additive shares (SecureML-style) and its failure probability (DESIGN §3).
//!
//! After a product the fixed-point scale doubles (`2^(2f)`, or `2^(f + t)` after an affine map
//! with `t`-bit weights) and must be divided back by `2^d`. Dividing the secret value requires no
//! interaction: each party shifts its own share.
//!
//! * Reference (plaintext) truncation: `floor(x_signed / 2^d)`, an arithmetic shift of the centred
//!   value ([`truncate_reference`]).
//! * Party 0 (the client) holds `x0`: `floor(x0 / 2^d)` on its canonical value
//!   ([`truncate_client_share`]).
//! * Party 1 (the server) holds `x1`: `-floor((-x1 mod p) / 2^d) mod p`, i.e.
//!   `p - floor((p - x1) / 2^d)` for `x1 != 0` ([`truncate_server_share`]). At `x1 = 0` the
//!   canonical form gives 0 (exact), where the literal `p - floor(p / 2^d)` would be off by
//!   `p / 2^d`; using the canonical `-x1` removes that one bad case.
//!
//! # Why it works, and when it fails
//!
//! Let `X` be the signed value (`|X| < p/2`), `x1 = X - x0 mod p` and `y = -x1 mod p` in
//! `[0, p)`, so `y = x0 - X mod p`. If the integers satisfy `x0 - y = X` exactly (no wrap-around),
//! then `floor(x0 / 2^d) - floor((x0 - X) / 2^d)` is `floor(X / 2^d)` or `floor(X / 2^d) + 1`:
//! the protocol result is the **reference or reference + 1** (one ulp), and exactly the
//! reference when `2^d` divides `X`. The wrap-around happens only when `x0` falls in a window
//! of `|X|` values (`X >= 0`: `x0 < X`; `X < 0`: `x0 >= p - |X|`); then the result is off by
//! about `p / 2^d`, i.e. garbage. Since one share is uniform (it is masked), the failure
//! probability per element is exactly `|X| / p` ([`failure_probability`]); for a whole
//! inference the union bound sums it over every truncated element
//! ([`inference_failure_bound`]).
//!
//! All three functions are branch-free in the share value (they run on secret data).

use crate::field::{Fp, P};

/// The largest shift that still means something for a 60-bit field: shifting by 63 already maps
/// every value to 0 or -1 (the floor of a value below 2^59 divided by 2^63).
const MAX_SHIFT: u32 = 63;

/// Plaintext reference: `floor(x_centred / 2^bits) mod p` (arithmetic shift of the signed value).
#[inline]
pub fn truncate_reference(x: Fp, bits: u32) -> Fp {
    Fp::from_i64(x.to_i64_centered() >> bits.min(MAX_SHIFT))
}

/// Party 0 (client) share truncation: `floor(x0 / 2^bits)` on the canonical value.
#[inline]
pub fn truncate_client_share(x0: Fp, bits: u32) -> Fp {
    // The shifted value is below p: canonical.
    Fp::from_u64_reduced(x0.value() >> bits.min(MAX_SHIFT))
}

/// Party 1 (server) share truncation: `-floor((-x1 mod p) / 2^bits) mod p`, which is
/// `p - floor((p - x1) / 2^bits)` for `x1 != 0` and 0 for `x1 = 0`.
#[inline]
pub fn truncate_server_share(x1: Fp, bits: u32) -> Fp {
    // (-x1) is canonical, in [0, p); its quotient is below p, so the negation is branch-free.
    let q = (-x1).value() >> bits.min(MAX_SHIFT);
    -Fp::from_u64_reduced(q)
}

/// Truncate a slice of client shares in place.
pub fn truncate_client_slice(xs: &mut [Fp], bits: u32) {
    for x in xs {
        *x = truncate_client_share(*x, bits);
    }
}

/// Truncate a slice of server shares in place.
pub fn truncate_server_slice(xs: &mut [Fp], bits: u32) {
    for x in xs {
        *x = truncate_server_share(*x, bits);
    }
}

/// The project's target for the probability that any truncation of one inference fails
/// (DESIGN §3): `2^-30`.
pub const INFERENCE_FAILURE_TARGET: f64 = 1.0 / (1u64 << 30) as f64;

/// Probability that the local truncation of one element with `|X| <= value_bound` (the signed
/// value *at the truncation point*, i.e. at the doubled scale) is not within one ulp of the
/// reference: at most `value_bound / p` (exactly `|X| / p` for the value `X`), taken over the
/// uniform mask.
pub fn failure_probability(value_bound: u64) -> f64 {
    value_bound as f64 / P as f64
}

/// Union bound on the probability that *any* truncation of an inference fails, from a list of
/// `(count, value_bound)` pairs: `count` truncated elements whose values at the truncation point
/// are bounded by `value_bound` (e.g. one pair per affine map and one per square layer).
pub fn inference_failure_bound(sites: &[(u64, u64)]) -> f64 {
    sites.iter().map(|&(count, bound)| count as f64 * failure_probability(bound)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::uniform_fp;
    use proptest::prelude::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Outcome of the shared truncation of `x` split with client share `x0`: `None` if it is
    /// within one ulp above the reference, `Some(difference)` otherwise.
    fn shared_error(x: Fp, x0: Fp, bits: u32) -> Option<i64> {
        let x1 = x - x0;
        let got = truncate_client_share(x0, bits) + truncate_server_share(x1, bits);
        let diff = (got - truncate_reference(x, bits)).to_i64_centered();
        if diff == 0 || diff == 1 {
            None
        } else {
            Some(diff)
        }
    }

    #[test]
    fn reference_is_arithmetic_shift() {
        assert_eq!(truncate_reference(Fp::from_i64(-1), 4), Fp::from_i64(-1));
        assert_eq!(truncate_reference(Fp::from_i64(-16), 4), Fp::from_i64(-1));
        assert_eq!(truncate_reference(Fp::from_i64(-17), 4), Fp::from_i64(-2));
        assert_eq!(truncate_reference(Fp::from_i64(31), 4), Fp::from_i64(1));
        assert_eq!(truncate_reference(Fp::from_i64(-5), 200), Fp::from_i64(-1));
        assert_eq!(truncate_reference(Fp::from_i64(5), 200), Fp::ZERO);
    }

    #[test]
    fn edge_shares() {
        // x1 = 0 (so x0 = x): the server output is 0 and the result exact.
        assert_eq!(truncate_server_share(Fp::ZERO, 8), Fp::ZERO);
        assert_eq!(shared_error(Fp::from_i64(1 << 30), Fp::from_i64(1 << 30), 8), None);
        // Literal formula elsewhere: p - floor((p - x1) / 2^d).
        let x1 = Fp::from_u64_reduced(123456789012345);
        assert_eq!(truncate_server_share(x1, 8), Fp::from_u64_reduced(P - ((P - x1.value()) >> 8)));
        assert_eq!(truncate_server_share(Fp::ZERO, 0), Fp::ZERO);
        // x1 = p - 1 = -1: -floor(1 / 2^d) = 0 for d > 0.
        assert_eq!(truncate_server_share(-Fp::ONE, 8), Fp::ZERO);
        assert_eq!(truncate_server_share(-Fp::ONE, 0), -Fp::ONE);
        // bits = 0 is the identity for both parties.
        let x = Fp::from_i64(-987654321);
        assert_eq!(truncate_client_share(x, 0), x);
        assert_eq!(truncate_server_share(x, 0), x);
        // Shares that wrap: x0 < X for X >= 0 is a failure.
        assert!(shared_error(Fp::from_i64(5 << 20), Fp::from_i64(3), 12).is_some());
        assert!(shared_error(Fp::from_i64(5 << 20), Fp::from_i64(1 << 40), 12).is_none());
    }

    proptest! {
        #[test]
        fn within_one_ulp_away_from_the_wrap(v in -(1i64 << 40)..(1i64 << 40), x0 in any::<u64>(), bits in 0u32..32) {
            let x = Fp::from_i64(v);
            let x0 = Fp::from_u64_reduced(x0);
            // Away from the failure windows the result is the reference or reference + 1.
            let in_window = if v >= 0 { x0.value() < v as u64 } else { x0.value() >= P - v.unsigned_abs() };
            prop_assume!(!in_window);
            prop_assert_eq!(shared_error(x, x0, bits), None);
        }

        #[test]
        fn slices_match_scalars(xs in proptest::collection::vec(any::<u64>(), 0..16), bits in 0u32..40) {
            let xs: std::vec::Vec<Fp> = xs.into_iter().map(Fp::from_u64_reduced).collect();
            let mut a = xs.clone();
            let mut b = xs.clone();
            truncate_client_slice(&mut a, bits);
            truncate_server_slice(&mut b, bits);
            for i in 0..xs.len() {
                prop_assert_eq!(a[i], truncate_client_share(xs[i], bits));
                prop_assert_eq!(b[i], truncate_server_share(xs[i], bits));
            }
        }
    }

    /// Count failures of the shared truncation over `samples` random (value, mask) pairs with
    /// values drawn by `draw`, and return (failures, sum of the exact per-sample probabilities).
    fn measure(samples: u32, bits: u32, mut draw: impl FnMut(&mut ChaCha8Rng) -> i64) -> (u64, f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(0x7275_6e63);
        let mut failures = 0u64;
        let mut expected = 0.0f64;
        for _ in 0..samples {
            let v = draw(&mut rng);
            let x0 = uniform_fp(&mut rng);
            // Exact failure probability of this value: |X| / p.
            expected += v.unsigned_abs() as f64 / P as f64;
            if shared_error(Fp::from_i64(v), x0, bits).is_some() {
                failures += 1;
            }
        }
        (failures, expected)
    }

    /// Empirical failure rate over 2 * 10^6 samples at a value bound of p / 2^10, where failures
    /// are frequent enough (about 1e-3) to compare with the prediction within a few standard
    /// deviations.
    #[test]
    fn empirical_failure_rate_matches_prediction() {
        const SAMPLES: u32 = 1_000_000;
        let bound = P >> 10;
        let bits = 16;
        let predicted_at_bound = failure_probability(bound);

        // 1. Every value at the bound (random sign): the rate must match failure_probability.
        let (fails, expected) = measure(SAMPLES, bits, |rng| {
            let b = bound as i64;
            if rng.next_u32() & 1 == 0 {
                b
            } else {
                -b
            }
        });
        let rate = fails as f64 / SAMPLES as f64;
        let sigma = (expected * (1.0 - expected / SAMPLES as f64)).sqrt();
        std::println!(
            "truncation failures at |x| = p/2^10 ({bound}): measured {fails}/{SAMPLES} = {rate:.3e}, \
             predicted failure_probability = {predicted_at_bound:.3e} (expected count {expected:.1} +- {sigma:.1})"
        );
        assert!(fails > 0, "failures must actually occur at this bound");
        assert!((fails as f64 - expected).abs() <= 5.0 * sigma, "{fails} vs {expected} +- {sigma}");
        assert!(rate <= predicted_at_bound * 1.1);

        // 2. Values uniform in [-bound, bound]: the union-bound style prediction is an upper bound
        //    (the mean of |X| / p is about half of it) and the exact mean must match.
        let (fails, expected) =
            measure(SAMPLES, bits, |rng| (rng.next_u64() % (2 * bound + 1)) as i64 - bound as i64);
        let rate = fails as f64 / SAMPLES as f64;
        let sigma = expected.sqrt();
        std::println!(
            "truncation failures for |x| uniform in [0, p/2^10]: measured {rate:.3e}, \
             expected {:.3e}, bound {predicted_at_bound:.3e}",
            expected / SAMPLES as f64
        );
        assert!((fails as f64 - expected).abs() <= 5.0 * sigma, "{fails} vs {expected} +- {sigma}");
        assert!(rate <= predicted_at_bound);
    }

    #[test]
    fn inference_bound_sums_sites() {
        let sites = [(10u64, 100u64), (5, 200)];
        let expected = (10.0 * 100.0 + 5.0 * 200.0) / P as f64;
        assert!((inference_failure_bound(&sites) - expected).abs() < 1e-25);
        assert_eq!(inference_failure_bound(&[]), 0.0);
    }
}
