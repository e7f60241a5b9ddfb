//! The online protocol's arithmetic, shared by both parties (DESIGN §4, online stage).
//!
//! After an affine map the parties hold additive shares `yc + ys = y` of the pre-activation
//! (each already truncated locally). With the preprocessed correlation `e = yc * u - v` held by
//! the client and `(u, v)` held by the server, the server sends `d = ys - u` and
//!
//! ```text
//! zc = yc^2 + 2 (yc * d + e)        (client)
//! zs = ys^2 + 2 v                   (server)
//! zc + zs = yc^2 + 2 yc ys - 2 yc u + 2 yc u - 2 v + ys^2 + 2 v = (yc + ys)^2 = y^2
//! ```
//!
//! Both shares are at `2 * frac_bits` fraction bits, so each party truncates its own share by
//! `frac_bits`. These two functions are the only place this formula is written: the client
//! state machine and the server engine both call them.

use crate::field::Fp;
use crate::truncation::{truncate_client_share, truncate_server_share};

/// The client's share of `y^2`, truncated back to `frac_bits` fraction bits.
#[inline]
pub fn client_square_share(yc: Fp, d: Fp, e: Fp, frac_bits: u32) -> Fp {
    // yc^2 + 2 (yc d + e) = yc (yc + 2d) + 2e: one field product instead of two (the product is
    // the costliest step on a Cortex-M0+; the result is the same field element).
    truncate_client_share(yc * (yc + d + d) + e + e, frac_bits)
}

/// The server's share of `y^2`, truncated back to `frac_bits` fraction bits.
#[inline]
pub fn server_square_share(ys: Fp, v: Fp, frac_bits: u32) -> Fp {
    truncate_server_share(ys * ys + v + v, frac_bits)
}

/// The server's message for one element of a square layer: `d = ys - u`.
#[inline]
pub fn square_mask(ys: Fp, u: Fp) -> Fp {
    ys - u
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truncation::truncate_reference;

    #[test]
    fn one_product_form_equals_the_protocol_formula() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..1000 {
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Fp::from_u64_reduced(x)
            };
            let (yc, d, e) = (next(), next(), next());
            let protocol = yc * yc + (yc * d + e) + (yc * d + e);
            assert_eq!(client_square_share(yc, d, e, 7), truncate_client_share(protocol, 7));
        }
    }

    #[test]
    fn shares_of_the_square_reconstruct_within_one_ulp() {
        // y = 3.25 at 8 fraction bits, split with arbitrary masks.
        let f = 8;
        for (y, mask, u, v) in
            [(832i64, 987654321u64, 5u64, 77u64), (-832, 1 << 59, 1 << 40, 3), (0, 12, 13, 14)]
        {
            let y = Fp::from_i64(y);
            let yc = Fp::from_u64_reduced(mask);
            let ys = y - yc;
            let (u, v) = (Fp::from_u64_reduced(u), Fp::from_u64_reduced(v));
            let e = yc * u - v;
            let d = square_mask(ys, u);
            let z = client_square_share(yc, d, e, f) + server_square_share(ys, v, f);
            let expect = truncate_reference(y * y, f);
            let diff = (z - expect).to_i64_centered();
            assert!(diff == 0 || diff == 1, "diff {diff}");
        }
    }
}
