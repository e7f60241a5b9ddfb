//! TODO: filled in by its owner (see the module list in lib.rs).
//! PLACEHOLDER in the daemon branch (the foundation branch's mask module replaces it at merge).
use crate::field::Fp;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
#[derive(Debug)]
pub struct MaskStream(ChaCha20Rng);
impl MaskStream {
    pub fn new(seed: &[u8; 32], layer: u32, index: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(*seed);
        rng.set_stream(layer as u64);
        rng.set_word_pos(index as u128 * 4);
        MaskStream(rng)
    }
    pub fn next_element(&mut self) -> Fp {
        let lo = self.0.next_u64() as u128;
        let hi = self.0.next_u64() as u128;
        Fp::from_u128_reduced(lo | (hi << 64))
    }
}
