//! Which ciphertexts a ticket's four HE rounds carry, in which order, for one architecture.
//!
//! ```text
//! MaskCiphertexts        blob 0: the client's public key (a fresh encryption of zero),
//!                        then for each map i: its LinearPacking input ciphertexts of r_i
//! LinearResults          for each map i: its output ciphertexts, Enc(W_i r_i - M)
//! ActivationCiphertexts  for each SIMD ciphertext j: Enc(yc) then Enc(2^30 yc)
//! ProductResults         for each SIMD ciphertext j: Enc(yc u - v)
//! ```

use core_nostd::arch::Architecture;
use core_nostd::packing::{activation_ciphertexts, LinearPacking};

use crate::HeError;

/// Relative size of an uploaded ciphertext (fresh, level 0: 3 residues of 8 bytes per
/// coefficient) and a downloaded one (compact: `c1` at 11 bytes per coefficient, `c0` only where
/// outputs are): the packing is chosen to move the fewest bytes.
pub const UPLOAD_CIPHERTEXT_COST: usize = 24;
pub const DOWNLOAD_CIPHERTEXT_COST: usize = 12;

/// The packing of every map of a model and the counts of every round.
#[derive(Clone, Debug)]
pub struct Layout {
    pub degree: usize,
    pub maps: Vec<LinearPacking>,
    /// `c0_positions[i][j]`: the coefficients of output ciphertext `j` of map `i` that hold
    /// outputs, ascending (the only ones of `c0` the server sends).
    pub c0_positions: Vec<Vec<Vec<usize>>>,
    /// SIMD ciphertexts holding all activations.
    pub simd_ciphertexts: usize,
}

impl Layout {
    pub fn of(arch: &Architecture, degree: usize) -> Result<Layout, HeError> {
        let maps = arch
            .maps
            .iter()
            .map(|m| {
                LinearPacking::plan_with_costs(
                    &m.kind,
                    degree,
                    UPLOAD_CIPHERTEXT_COST,
                    DOWNLOAD_CIPHERTEXT_COST,
                )
                .ok_or(HeError::DoesNotFit)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let c0_positions = arch
            .maps
            .iter()
            .zip(&maps)
            .map(|(m, p)| {
                let mut per_ct = vec![Vec::new(); p.output_ciphertexts()];
                for k in 0..m.kind.output_len() {
                    let s = p.output_slot_of(k);
                    per_ct[s.ct].push(s.coeff);
                }
                for v in &mut per_ct {
                    v.sort_unstable();
                    v.dedup();
                }
                per_ct
            })
            .collect();
        Ok(Layout { degree, maps, c0_positions, simd_ciphertexts: activation_ciphertexts(arch, degree) })
    }

    /// Blobs of the `MaskCiphertexts` round (public key first).
    pub fn mask_blobs(&self) -> usize {
        1 + self.maps.iter().map(LinearPacking::input_ciphertexts).sum::<usize>()
    }

    /// Blobs of the `LinearResults` round.
    pub fn linear_blobs(&self) -> usize {
        self.maps.iter().map(LinearPacking::output_ciphertexts).sum()
    }

    /// Blobs of the `ActivationCiphertexts` round (two limbs per SIMD ciphertext).
    pub fn activation_blobs(&self) -> usize {
        2 * self.simd_ciphertexts
    }

    /// Blobs of the `ProductResults` round.
    pub fn product_blobs(&self) -> usize {
        self.simd_ciphertexts
    }
}
