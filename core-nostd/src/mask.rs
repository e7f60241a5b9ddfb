//! Client mask streams: every mask `r_i` of a ticket is a pure function of a 32-byte seed
//! (DESIGN §4), so a microcontroller stores the seed and regenerates masks on demand.
//!
//! # Construction
//!
//! The seed is the ChaCha key. Each (purpose, layer) pair selects its own 64-bit ChaCha stream
//! (`stream = tag << 32 | layer`, [`stream_id`]), and element `index` of that stream is read from
//! the fixed word position `4 * index`: four 32-bit words = 128 random bits, reduced mod p with
//! [`Fp::from_u128_reduced`]. Fixed words per element make the stream *random access*: any
//! `(layer, index)` is one `set_stream` + `set_word_pos` away ([`mask_at`], [`MaskStream::seek`]),
//! and the sequential iterator ([`MaskStream`]) yields exactly the same values.
//!
//! Domain separation: different tickets use different seeds (derive them with [`ticket_seed`]
//! from a device secret and the server-assigned ticket id, or store random ones); within a ticket
//! the layer and the purpose tag select disjoint streams, and the index selects disjoint words.
//!
//! # Uniformity
//!
//! 128 uniform bits reduced mod p (a 60-bit prime) are at statistical distance at most
//! `p / 2^128 < 2^-68` from uniform over F_p, inside the required `2^-64` per element; 64 bits
//! would give only `2^-4`. The same reduction serves [`uniform_fp`] for the server's `s, u, v`
//! from any [`RngCore`].
//!
//! # Cost on a Cortex-M0+, and why ChaCha12
//!
//! One element costs 16 bytes of keystream, a quarter of a 64-byte ChaCha block. Measured on the
//! emulated board (thumbv6m code, `boards/mps2-an385`, `src/bin/costs.rs`): 833 instructions per
//! element with ChaCha20, the largest single cost of a board's online phase (about 9 M of
//! `minionn-sq`'s 10 340 activations + 784 inputs). The masks therefore use ChaCha12 (the round
//! count of `rand`'s `StdRng`): 636 instructions per element, and still a wide margin (the best
//! published attacks reach 7 rounds). The mask is a one-time pad on the client's input, so the
//! stream must stay a PRF in the seed: 12 rounds are the
//! conservative choice between ChaCha8 (enough per Aumasson's "Too Much Crypto") and ChaCha20.
//! HE key generation keeps ChaCha20 (`edge_client::preprocess`): it runs once per ticket on a
//! host. Changing the variant changes every mask, so it bumped the ticket format
//! ([`crate::ticket::FORMAT_VERSION`] 2): an old ticket is refused, never silently misused.
//! Random access is dearer than sequential: `rand_chacha` refills a 4-block (256-byte) buffer on
//! every seek, so seek once per layer and iterate.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use sha2::{Digest, Sha256};

use crate::field::Fp;

/// A 32-byte ticket seed (the ChaCha key).
pub type Seed = [u8; 32];

/// 32-bit words of keystream per field element (128 bits).
pub const WORDS_PER_ELEMENT: u128 = 4;

/// What a stream of a ticket is used for; each purpose has its own streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Purpose {
    /// The input masks `r_i` of the affine maps (`layer` = map index, 0-based).
    MapInput = 0x6d61_736b, // "mask"
    /// Client-side randomness of the HE half of preprocessing (e.g. key or encryption seeds),
    /// kept apart from the masks so reusing one can never reveal the other.
    HeRandomness = 0x6865_7261, // "hera"
}

/// The ChaCha stream number of `(purpose, layer)`.
#[inline]
pub const fn stream_id(purpose: Purpose, layer: u32) -> u64 {
    ((purpose as u64) << 32) | layer as u64
}

/// Derive a ticket's seed from a long-term device secret and the ticket id, so a device can
/// hold many tickets while storing one secret: `SHA-256(tag || secret || ticket_id)`. The input
/// has a fixed length, so the prefix-keyed hash is a PRF (no length-extension issue).
pub fn ticket_seed(device_secret: &[u8; 32], ticket_id: &[u8; 16]) -> Seed {
    let mut h = Sha256::new();
    h.update(b"pi-cnn/ticket-seed/v1\0");
    h.update(device_secret);
    h.update(ticket_id);
    h.finalize().into()
}

/// A uniform element of F_p from any RNG (128 bits reduced; statistical distance < 2^-68).
#[inline]
pub fn uniform_fp<R: RngCore + ?Sized>(rng: &mut R) -> Fp {
    let lo = rng.next_u64() as u128;
    let hi = rng.next_u64() as u128;
    Fp::from_u128_reduced((hi << 64) | lo)
}

/// Fill `out` with uniform elements of F_p.
pub fn fill_uniform<R: RngCore + ?Sized>(rng: &mut R, out: &mut [Fp]) {
    for x in out {
        *x = uniform_fp(rng);
    }
}

/// The mask stream of one `(seed, purpose, layer)`: a sequential iterator with random access.
#[derive(Clone, Debug)]
pub struct MaskStream {
    rng: ChaCha12Rng,
    index: u64,
}

impl MaskStream {
    /// The stream positioned at element 0.
    pub fn new(seed: &Seed, purpose: Purpose, layer: u32) -> MaskStream {
        let mut rng = ChaCha12Rng::from_seed(*seed);
        rng.set_stream(stream_id(purpose, layer));
        rng.set_word_pos(0);
        MaskStream { rng, index: 0 }
    }

    /// The input-mask stream `r_layer` of a ticket.
    pub fn for_map_input(seed: &Seed, layer: u32) -> MaskStream {
        MaskStream::new(seed, Purpose::MapInput, layer)
    }

    /// Move to element `index` (the next [`Iterator::next`] returns it).
    pub fn seek(&mut self, index: u64) {
        self.rng.set_word_pos(index as u128 * WORDS_PER_ELEMENT);
        self.index = index;
    }

    /// Index of the element the next call returns.
    pub fn position(&self) -> u64 {
        self.index
    }

    /// The next element (never ends: ChaCha's 64-bit block counter covers 2^62 elements).
    #[inline]
    pub fn next_fp(&mut self) -> Fp {
        self.index = self.index.wrapping_add(1);
        uniform_fp(&mut self.rng)
    }

    /// Fill `out` with the next `out.len()` elements.
    pub fn fill(&mut self, out: &mut [Fp]) {
        for x in out {
            *x = self.next_fp();
        }
    }
}

impl Iterator for MaskStream {
    type Item = Fp;
    #[inline]
    fn next(&mut self) -> Option<Fp> {
        Some(self.next_fp())
    }
}

/// One mask element, regenerated from the seed (random access; prefer [`MaskStream`] for runs).
pub fn mask_at(seed: &Seed, purpose: Purpose, layer: u32, index: u64) -> Fp {
    let mut s = MaskStream::new(seed, purpose, layer);
    s.seek(index);
    s.next_fp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::P;
    use proptest::prelude::*;
    use rand_chacha::rand_core::RngCore;

    const SEED: Seed = [7u8; 32];

    #[test]
    fn sequential_equals_random_access() {
        let seq: std::vec::Vec<Fp> = MaskStream::for_map_input(&SEED, 3).take(100).collect();
        for (i, x) in seq.iter().enumerate() {
            assert_eq!(*x, mask_at(&SEED, Purpose::MapInput, 3, i as u64), "index {i}");
        }
        let mut s = MaskStream::for_map_input(&SEED, 3);
        s.seek(37);
        assert_eq!(s.position(), 37);
        let mut buf = [Fp::ZERO; 10];
        s.fill(&mut buf);
        assert_eq!(&buf[..], &seq[37..47]);
        assert_eq!(s.position(), 47);
        // Seeking backwards works too.
        s.seek(2);
        assert_eq!(s.next(), Some(seq[2]));
    }

    #[test]
    fn streams_are_separated() {
        let a = mask_at(&SEED, Purpose::MapInput, 0, 5);
        assert_ne!(a, mask_at(&SEED, Purpose::MapInput, 1, 5));
        assert_ne!(a, mask_at(&SEED, Purpose::HeRandomness, 0, 5));
        assert_ne!(a, mask_at(&SEED, Purpose::MapInput, 0, 6));
        let mut other = SEED;
        other[31] ^= 1;
        assert_ne!(a, mask_at(&other, Purpose::MapInput, 0, 5));
        assert_eq!(a, mask_at(&SEED, Purpose::MapInput, 0, 5));
        let t1 = ticket_seed(&SEED, &[1; 16]);
        assert_ne!(t1, ticket_seed(&SEED, &[2; 16]));
        assert_eq!(t1, ticket_seed(&SEED, &[1; 16]));
    }

    #[test]
    fn element_is_128_bits_of_chacha12_reduced() {
        // Element i is words 4i..4i+4 of stream (tag << 32 | layer), little-endian u128: pin the
        // construction so the firmware and host can never diverge.
        let mut rng = ChaCha12Rng::from_seed(SEED);
        rng.set_stream(stream_id(Purpose::MapInput, 2));
        rng.set_word_pos(4 * 9);
        let mut bytes = [0u8; 16];
        <ChaCha12Rng as RngCore>::fill_bytes(&mut rng, &mut bytes);
        let expected = Fp::from_u128_reduced(u128::from_le_bytes(bytes));
        assert_eq!(mask_at(&SEED, Purpose::MapInput, 2, 9), expected);
    }

    #[test]
    fn masks_look_uniform() {
        // Coarse sanity check on 2^16 elements: mean of x/p near 1/2 and every 1/16 bucket filled
        // close to evenly (a broken reduction, e.g. 64 bits mod p, or a constant stream fails).
        let mut counts = [0u32; 16];
        let mut sum = 0.0f64;
        let n = 1u32 << 16;
        for x in MaskStream::for_map_input(&SEED, 0).take(n as usize) {
            assert!(x.value() < P);
            let u = x.value() as f64 / P as f64;
            sum += u;
            counts[(u * 16.0) as usize] += 1;
        }
        let mean = sum / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let expected = n as f64 / 16.0;
        for c in counts {
            // Binomial sd is about 62; allow 6 sd.
            assert!((c as f64 - expected).abs() < 6.0 * 62.0, "{counts:?}");
        }
    }

    proptest! {
        #[test]
        fn seek_anywhere(layer in any::<u32>(), index in 0u64..(1 << 40)) {
            let mut s = MaskStream::for_map_input(&SEED, layer);
            s.seek(index);
            let a = s.next_fp();
            let b = s.next_fp();
            prop_assert_eq!(a, mask_at(&SEED, Purpose::MapInput, layer, index));
            prop_assert_eq!(b, mask_at(&SEED, Purpose::MapInput, layer, index + 1));
        }
    }
}
