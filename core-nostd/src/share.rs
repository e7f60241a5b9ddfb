//! Two-party additive secret shares over F_p (DESIGN §4).
//!
//! A value `x` is split as `x = client + server (mod p)`. The protocol gives the *client* the
//! mask side (its shares derive from the ChaCha masks `r_i` and the preprocessing results) and
//! the *server* the masked side (`x - r`), so [`share`] returns `(mask, x - mask)`.
//!
//! The two parties' shares are distinct types so that the role-specific operations cannot be
//! swapped by accident: local truncation differs between party 0 (client) and party 1 (server)
//! ([`crate::truncation`]), and a public constant must be added by exactly one party (here: the
//! server, which also owns the biases). Both are `#[repr(transparent)]` over [`Fp`], so slices
//! of shares cost nothing over slices of field elements.

use core::ops::{Add, Sub};

use crate::field::Fp;
use crate::truncation::{truncate_client_share, truncate_server_share};

/// The client's (party 0's) additive share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct ClientShare(pub Fp);

/// The server's (party 1's) additive share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct ServerShare(pub Fp);

/// Split `x` with `mask`: the client keeps `mask`, the server gets `x - mask`. With a uniform
/// mask the server's share is uniform and independent of `x`.
#[inline]
pub fn share(x: Fp, mask: Fp) -> (ClientShare, ServerShare) {
    (ClientShare(mask), ServerShare(x - mask))
}

/// Recombine the two shares: `client + server`.
#[inline]
pub fn reconstruct(client: ClientShare, server: ServerShare) -> Fp {
    client.0 + server.0
}

impl ClientShare {
    /// Local truncation by `bits` (party 0's rule, see [`crate::truncation`]).
    #[inline]
    pub fn truncate(self, bits: u32) -> ClientShare {
        ClientShare(truncate_client_share(self.0, bits))
    }

    /// Multiply by a public constant.
    #[inline]
    pub fn scale(self, c: Fp) -> ClientShare {
        ClientShare(self.0 * c)
    }
}

impl ServerShare {
    /// Local truncation by `bits` (party 1's rule, see [`crate::truncation`]).
    #[inline]
    pub fn truncate(self, bits: u32) -> ServerShare {
        ServerShare(truncate_server_share(self.0, bits))
    }

    /// Multiply by a public constant.
    #[inline]
    pub fn scale(self, c: Fp) -> ServerShare {
        ServerShare(self.0 * c)
    }

    /// Add a public (or server-private) constant; only the server adds constants, so the sum of
    /// the shares moves by exactly `c`.
    #[inline]
    pub fn add_constant(self, c: Fp) -> ServerShare {
        ServerShare(self.0 + c)
    }
}

macro_rules! share_ops {
    ($t:ident) => {
        impl Add for $t {
            type Output = $t;
            #[inline]
            fn add(self, rhs: $t) -> $t {
                $t(self.0 + rhs.0)
            }
        }
        impl Sub for $t {
            type Output = $t;
            #[inline]
            fn sub(self, rhs: $t) -> $t {
                $t(self.0 - rhs.0)
            }
        }
    };
}
share_ops!(ClientShare);
share_ops!(ServerShare);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truncation::truncate_reference;
    use proptest::prelude::*;

    fn fp() -> impl Strategy<Value = Fp> {
        any::<u64>().prop_map(Fp::from_u64_reduced)
    }

    proptest! {
        #[test]
        fn share_reconstruct(x in fp(), m in fp()) {
            let (c, s) = share(x, m);
            prop_assert_eq!(c.0, m);
            prop_assert_eq!(reconstruct(c, s), x);
        }

        #[test]
        fn linear_operations_commute_with_sharing(
            x in fp(), y in fp(), m1 in fp(), m2 in fp(), k in fp(), b in fp()
        ) {
            let (cx, sx) = share(x, m1);
            let (cy, sy) = share(y, m2);
            prop_assert_eq!(reconstruct(cx + cy, sx + sy), x + y);
            prop_assert_eq!(reconstruct(cx - cy, sx - sy), x - y);
            prop_assert_eq!(reconstruct(cx.scale(k), sx.scale(k)), x * k);
            prop_assert_eq!(reconstruct(cx, sx.add_constant(b)), x + b);
        }

        #[test]
        fn typed_truncation_uses_the_right_rule(v in -(1i64 << 30)..(1i64 << 30), m in (1u64 << 31)..(1u64 << 59)) {
            // Mask away from the failure window: the result is the reference or one above.
            let x = Fp::from_i64(v);
            let (c, s) = share(x, Fp::from_u64_reduced(m));
            let got = reconstruct(c.truncate(10), s.truncate(10));
            let diff = (got - truncate_reference(x, 10)).to_i64_centered();
            prop_assert!(diff == 0 || diff == 1, "diff {}", diff);
        }
    }
}
