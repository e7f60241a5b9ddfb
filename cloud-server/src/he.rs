//! HE preprocessing, linear part (DESIGN §4, preprocessing steps 1-2) — first piece.
//!
//! BFV (crate `fhe` 0.1.1) with plaintext modulus `t = p` (`core_nostd::field::P`), ring degree
//! `n = 8192`, ciphertext modulus 3 x 62-bit primes = 186 bits: within the 218 bits the HE
//! standard's table allows for 128-bit security at `n = 8192`. Parameters are built here from
//! constants only, never from network input (fhe's builder can panic on some inputs).
//!
//! For one affine map, the client sends `Enc(r)` coefficient-packed by
//! `core_nostd::packing::LinearPacking`; the server multiplies by the kernel plaintexts (encoded
//! once per model) and subtracts a fresh uniform mask polynomial `M`, returning
//! `Enc(W r - M)`. The client reads `W r - s` at the output coefficients (`s` = `M` there); every
//! other coefficient is uniform, so the plaintext reveals nothing about `W` beyond the outputs.
//!
//! Not done yet (issue "HE preprocessing"): noise flooding of the returned ciphertexts (circuit
//! privacy of the *noise*), the SIMD element-wise round, modulus switching of replies, threads,
//! the message flow over the wire and the client half in `edge-client`.

use std::sync::Arc;

use core_nostd::arch::LinearKind;
use core_nostd::field::{P, RING_DEGREE};
use core_nostd::packing::LinearPacking;
use core_nostd::Fp;
use fhe::bfv::{BfvParameters, BfvParametersBuilder, Ciphertext, Encoding, Plaintext};
use fhe_traits::FheEncoder;
use rand::RngCore;

/// Sizes of the ciphertext moduli (bits).
pub const MODULI_BITS: [usize; 3] = [62, 62, 62];

/// Errors of the HE layer.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    #[error("fhe: {0}")]
    Fhe(#[from] fhe::Error),
    #[error("the map does not fit the ring (a single channel is larger than n / 2)")]
    DoesNotFit,
    #[error("expected {expected} input ciphertexts, got {found}")]
    InputCount { expected: usize, found: usize },
}

/// The BFV parameters of the whole system (one `Arc`: fhe requires objects to share it).
pub fn parameters() -> Result<Arc<BfvParameters>, HeError> {
    Ok(BfvParametersBuilder::new()
        .set_degree(RING_DEGREE)
        .set_plaintext_modulus(P)
        .set_moduli_sizes(&MODULI_BITS)
        .build_arc()?)
}

/// The server's encoded kernels of one affine map.
#[derive(Debug)]
pub struct LinearHe {
    pub packing: LinearPacking,
    /// `kernels[out_ct][group]`, encoded once per model.
    kernels: Vec<Vec<Plaintext>>,
    par: Arc<BfvParameters>,
}

impl LinearHe {
    /// Encode the kernels of a map (`weights` in `MergedModel` layout).
    pub fn new(par: &Arc<BfvParameters>, kind: &LinearKind, weights: &[i64]) -> Result<LinearHe, HeError> {
        let packing = LinearPacking::plan(kind, par.degree()).ok_or(HeError::DoesNotFit)?;
        let (c_in, kh, kw) = (packing.c_in, packing.kh, packing.kw);
        let mut polys =
            vec![vec![vec![0i64; par.degree()]; packing.input_ciphertexts()]; packing.output_ciphertexts()];
        for o in 0..packing.c_out {
            for c in 0..c_in {
                for a in 0..kh {
                    for b in 0..kw {
                        let s = packing.kernel_slot(o, c, a, b);
                        polys[s.out_ct][s.group][s.coeff] = weights[((o * c_in + c) * kh + a) * kw + b];
                    }
                }
            }
        }
        let kernels = polys
            .iter()
            .map(|row| {
                row.iter().map(|p| Plaintext::try_encode(p.as_slice(), Encoding::poly(), par)).collect()
            })
            .collect::<Result<Vec<Vec<_>>, _>>()?;
        Ok(LinearHe { packing, kernels, par: par.clone() })
    }

    /// `Enc(W r - M)` for every output ciphertext, and `s` (the mask at the output coefficients,
    /// channel-major, one per output element).
    pub fn apply(
        &self,
        inputs: &[Ciphertext],
        rng: &mut impl RngCore,
    ) -> Result<(Vec<Ciphertext>, Vec<Fp>), HeError> {
        let p = &self.packing;
        if inputs.len() != p.input_ciphertexts() {
            return Err(HeError::InputCount { expected: p.input_ciphertexts(), found: inputs.len() });
        }
        let n = self.par.degree();
        let mut outputs = Vec::with_capacity(p.output_ciphertexts());
        let mut masks = Vec::with_capacity(p.output_ciphertexts());
        for row in &self.kernels {
            let mut acc = &inputs[0] * &row[0];
            for (ct, k) in inputs.iter().zip(row).skip(1) {
                acc += &(ct * k);
            }
            let mask: Vec<u64> = (0..n).map(|_| core_nostd::mask::uniform_fp(rng).value()).collect();
            let m = Plaintext::try_encode(mask.as_slice(), Encoding::poly(), &self.par)?;
            acc -= &m;
            outputs.push(acc);
            masks.push(mask);
        }
        let len = p.c_out * p.out_h * p.out_w;
        let s = (0..len)
            .map(|k| {
                let slot = p.output_slot_of(k);
                Fp::from_u64_reduced(masks[slot.ct][slot.coeff])
            })
            .collect();
        Ok((outputs, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::merged::linear_reference;
    use core_nostd::arch::Shape;
    use fhe::bfv::SecretKey;
    use fhe_traits::{FheDecoder, FheDecrypter, FheEncrypter};
    use rand::{Rng, SeedableRng};

    /// The client's side, inline for the test: encrypt the packed mask, decrypt the reply.
    fn round_trip(kind: LinearKind, seed: u64) {
        let par = parameters().unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let sk = SecretKey::random(&par, &mut rng);
        let nw = crate::model::merged::weight_count(&kind);
        let weights: Vec<i64> = (0..nw).map(|_| rng.random_range(-1000..=1000)).collect();
        let he = LinearHe::new(&par, &kind, &weights).unwrap();
        let p = he.packing;
        let r: Vec<Fp> = (0..kind.input_len()).map(|_| core_nostd::mask::uniform_fp(&mut rng)).collect();
        let mut polys = vec![vec![0u64; par.degree()]; p.input_ciphertexts()];
        for (k, v) in r.iter().enumerate() {
            let s = p.input_slot_of(k);
            polys[s.ct][s.coeff] = v.value();
        }
        let cts: Vec<Ciphertext> = polys
            .iter()
            .map(|v| {
                sk.try_encrypt(
                    &Plaintext::try_encode(v.as_slice(), Encoding::poly(), &par).unwrap(),
                    &mut rng,
                )
                .unwrap()
            })
            .collect();
        let (replies, s) = he.apply(&cts, &mut rng).unwrap();
        let decoded: Vec<Vec<u64>> = replies
            .iter()
            .map(|ct| Vec::<u64>::try_decode(&sk.try_decrypt(ct).unwrap(), Encoding::poly()).unwrap())
            .collect();
        let wr = linear_reference(&kind, &weights, &r);
        for (k, (&want, &sk_)) in wr.iter().zip(&s).enumerate() {
            let slot = p.output_slot_of(k);
            let yc = Fp::new(decoded[slot.ct][slot.coeff]).unwrap();
            assert_eq!(yc + sk_, want, "{kind:?} output {k}");
        }
    }

    #[test]
    fn encrypted_linear_maps_equal_the_plaintext_product() {
        round_trip(LinearKind::Dense { inputs: 100, outputs: 10 }, 1);
        round_trip(
            LinearKind::Conv2d {
                input: Shape::new(3, 9, 7),
                out_channels: 5,
                kernel_h: 3,
                kernel_w: 3,
                stride_h: 2,
                stride_w: 1,
                pad_h: 1,
                pad_w: 1,
            },
            2,
        );
    }
}

#[cfg(test)]
mod noise {
    use super::*;
    use core_nostd::arch::Shape;
    use fhe::bfv::SecretKey;
    use fhe_traits::FheEncrypter;
    use rand::{Rng, SeedableRng};

    /// Noise left after the linear step of the largest bundled map (minionn-sq's merged second
    /// conv, 16x24x24, kernel 10, stride 2, weights of 11 bits): the room noise flooding will
    /// need (40 bits of statistical distance above this noise) must remain.
    #[test]
    fn linear_step_leaves_room_for_noise_flooding() {
        let par = parameters().unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let sk = SecretKey::random(&par, &mut rng);
        let kind = LinearKind::Conv2d {
            input: Shape::new(16, 24, 24),
            out_channels: 16,
            kernel_h: 10,
            kernel_w: 10,
            stride_h: 2,
            stride_w: 2,
            pad_h: 0,
            pad_w: 0,
        };
        let weights: Vec<i64> =
            (0..crate::model::merged::weight_count(&kind)).map(|_| rng.random_range(-2048..=2048)).collect();
        let he = LinearHe::new(&par, &kind, &weights).unwrap();
        let cts: Vec<Ciphertext> = (0..he.packing.input_ciphertexts())
            .map(|_| {
                let v: Vec<u64> =
                    (0..par.degree()).map(|_| core_nostd::mask::uniform_fp(&mut rng).value()).collect();
                sk.try_encrypt(
                    &Plaintext::try_encode(v.as_slice(), Encoding::poly(), &par).unwrap(),
                    &mut rng,
                )
                .unwrap()
            })
            .collect();
        let (replies, _) = he.apply(&cts, &mut rng).unwrap();
        // Decryption is correct while the noise stays below q / (2t): 186 - 60 - 1 = 125 bits.
        let capacity = MODULI_BITS.iter().sum::<usize>() - core_nostd::field::P_BITS as usize - 1;
        for ct in &replies {
            // SAFETY: measure_noise is `unsafe` only because it runs in variable time on the
            // secret noise; this is a test on random data.
            let noise = unsafe { sk.measure_noise(ct).unwrap() };
            println!("noise {noise} bits of {capacity}: {} bits left", capacity - noise);
            assert!(noise + 40 + 2 <= capacity, "only {} bits left for flooding", capacity - noise);
        }
    }
}
