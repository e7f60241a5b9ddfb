//! HE preprocessing, server half (DESIGN §4, preprocessing steps 2 and 4).
//!
//! Parameters, blob formats, noise bounds and the circuit-privacy argument are shared with the
//! client and documented in the `he_bfv` crate. This module holds what only the server knows:
//!
//! * [`HeModel`]: the kernels of every affine map as centred plaintext polynomials in NttShoup
//!   form, encoded once at model load (`core_nostd::packing::LinearPacking` places them: Cheetah-
//!   style coefficient packing, one negacyclic product per (input group, output ciphertext), no
//!   rotations and no Galois keys), and the flooding width of every returned ciphertext.
//! * [`ServerPreprocessing`]: one ticket's preprocessing as an explicit state machine over the
//!   four HE rounds; it ends with the server's half of the ticket, [`ServerMaterial`].
//!
//! Work within a round is spread over threads (one job per returned ciphertext).

use std::sync::Arc;

use core_nostd::arch::Architecture;
use core_nostd::packing::activation_slot;
use core_nostd::wire::HeRound;
use core_nostd::Fp;
use fhe::bfv::{BfvParameters, Ciphertext, Encoding, Plaintext};
use fhe_math::rq::Poly;
use fhe_traits::FheEncoder;
use he_bfv::blob::{decode_fresh, encode_compact, parse_header};
use he_bfv::noise::{
    centred_poly, encryption_of_zero, flooding_bits, flooding_poly, l1_norm, multiply_accumulate,
    simd_noise_bound_any, split_limbs, SimdCoder, FRESH_NOISE_BOUND,
};
use he_bfv::{noise_capacity_bits, BlobAssembler, HeError, KeyId, Layout};

use crate::inference::ServerMaterial;
use crate::model::MergedModel;

/// The encoded kernels of one affine map.
struct LinearHe {
    /// `kernels[out_ct][group]`.
    kernels: Vec<Vec<Poly>>,
    /// Flooding width of each output ciphertext.
    flood_bits: Vec<u32>,
}

/// A model ready for HE preprocessing: built once at load, shared by every client.
pub struct HeModel {
    par: Arc<BfvParameters>,
    arch: Architecture,
    layout: Layout,
    maps: Vec<LinearHe>,
    coder: SimdCoder,
    simd_flood_bits: u32,
    threads: usize,
    full_replies: bool,
}

impl std::fmt::Debug for HeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeModel").field("model_id", &self.arch.model_id).finish_non_exhaustive()
    }
}

impl HeModel {
    /// Encodes the kernels of `m` and fixes the flooding widths. Fails if a map does not fit the
    /// ring or the flooding would not leave the ciphertexts decryptable.
    pub fn new(m: &MergedModel) -> Result<HeModel, HeError> {
        let par = he_bfv::parameters()?;
        let n = par.degree();
        let layout = Layout::of(&m.arch, n)?;
        let ctx = par.context_at_level(0)?.clone();
        let capacity = noise_capacity_bits(&par, 0);
        let linear_coefficients = n * layout.linear_blobs();
        let mut maps = Vec::with_capacity(layout.maps.len());
        for (map, packing) in m.maps.iter().zip(&layout.maps) {
            let (c_in, kh, kw) = (packing.c_in, packing.kh, packing.kw);
            let mut polys =
                vec![vec![vec![0i64; n]; packing.input_ciphertexts()]; packing.output_ciphertexts()];
            for o in 0..packing.c_out {
                for c in 0..c_in {
                    for a in 0..kh {
                        for b in 0..kw {
                            let s = packing.kernel_slot(o, c, a, b);
                            polys[s.out_ct][s.group][s.coeff] =
                                map.weights[((o * c_in + c) * kh + a) * kw + b];
                        }
                    }
                }
            }
            // Noise of output ciphertext j: |e ⊛ w| <= 21 sum_g ||k_jg||_1, plus 1 for the
            // rounding of the subtracted mask.
            let flood_bits = polys
                .iter()
                .map(|row| {
                    let bound = FRESH_NOISE_BOUND * row.iter().map(|k| l1_norm(k)).sum::<u128>() + 1;
                    flooding_bits(bound, linear_coefficients, capacity)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let kernels = polys
                .iter()
                .map(|row| row.iter().map(|k| centred_poly(&ctx, k)).collect())
                .collect::<Result<Vec<Vec<_>>, _>>()?;
            maps.push(LinearHe { kernels, flood_bits });
        }
        let simd_flood_bits =
            flooding_bits(simd_noise_bound_any(n) + 1, n * layout.simd_ciphertexts.max(1), capacity)?;
        Ok(HeModel {
            coder: SimdCoder::new(n)?,
            par,
            arch: m.arch.clone(),
            layout,
            maps,
            simd_flood_bits,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            full_replies: false,
        })
    }

    /// Use `threads` worker threads per round (default: all cores).
    pub fn with_threads(mut self, threads: usize) -> HeModel {
        self.threads = threads.max(1);
        self
    }

    /// Diagnostics only: send `c0` of linear results whole instead of only at the output
    /// coefficients, so that a test client can measure the noise of every coefficient. Such
    /// replies do not decode in a normal client (the sizes differ).
    pub fn with_full_replies(mut self) -> HeModel {
        self.full_replies = true;
        self
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn arch(&self) -> &Architecture {
        &self.arch
    }

    /// Flooding widths (bits): per linear output ciphertext, and of the SIMD round.
    pub fn flooding_widths(&self) -> (Vec<u32>, u32) {
        (self.maps.iter().flat_map(|m| m.flood_bits.iter().copied()).collect(), self.simd_flood_bits)
    }

    /// Ciphertext-plaintext products of one ticket: linear (per input group and output
    /// ciphertext) plus two per SIMD ciphertext.
    pub fn products(&self) -> usize {
        self.layout.maps.iter().map(|p| p.products()).sum::<usize>() + 2 * self.layout.simd_ciphertexts
    }

    /// Steps 1-2: from the client's public key and `Enc(r_i)`, `Enc(W_i r_i - M)` (flooded,
    /// compact) and the server's masks `s_i`.
    fn linear_round(&self, blobs: &[Vec<u8>]) -> Result<(LinearState, Vec<Vec<u8>>), HeError> {
        let Some(first) = blobs.first() else {
            return Err(HeError::Count { expected: self.layout.mask_blobs(), found: 0 });
        };
        let (_, key, _) = parse_header(first)?;
        let pk = decode_fresh(first, key, &self.par)?;
        let inputs =
            blobs[1..].iter().map(|b| decode_fresh(b, key, &self.par)).collect::<Result<Vec<_>, _>>()?;
        if inputs.len() + 1 != self.layout.mask_blobs() {
            return Err(HeError::Count { expected: self.layout.mask_blobs(), found: blobs.len() });
        }
        // One job per returned ciphertext: (map, output ciphertext, first input of the map).
        let mut jobs = Vec::new();
        let mut first_input = 0;
        for (i, packing) in self.layout.maps.iter().enumerate() {
            for j in 0..packing.output_ciphertexts() {
                jobs.push((i, j, first_input));
            }
            first_input += packing.input_ciphertexts();
        }
        let results = parallel_map(self.threads, &jobs, |&(i, j, first)| {
            let map = &self.maps[i];
            let groups = self.layout.maps[i].input_ciphertexts();
            let ins: Vec<&Ciphertext> = inputs[first..first + groups].iter().collect();
            let ks: Vec<&Poly> = map.kernels[j].iter().collect();
            let mut rng = rand::rng();
            let mask: Vec<u64> =
                (0..self.par.degree()).map(|_| core_nostd::mask::uniform_fp(&mut rng).value()).collect();
            let mut ct = multiply_accumulate(&self.par, &ins, &ks)?;
            ct -= &Plaintext::try_encode(mask.as_slice(), Encoding::poly(), &self.par)?;
            let positions = (!self.full_replies).then(|| self.layout.c0_positions[i][j].as_slice());
            let blob = self.finish_reply(ct, &pk, key, map.flood_bits[j], positions)?;
            Ok::<_, HeError>((blob, mask))
        });
        let mut replies = Vec::with_capacity(jobs.len());
        let mut masks: Vec<Vec<Vec<u64>>> = self.layout.maps.iter().map(|_| Vec::new()).collect();
        for ((i, _, _), r) in jobs.iter().zip(results) {
            let (blob, mask) = r?;
            replies.push(blob);
            masks[*i].push(mask);
        }
        let s = self
            .arch
            .maps
            .iter()
            .zip(&self.layout.maps)
            .zip(&masks)
            .map(|((m, packing), masks)| {
                (0..m.kind.output_len())
                    .map(|k| {
                        let slot = packing.output_slot_of(k);
                        Fp::from_u64_reduced(masks[slot.ct][slot.coeff])
                    })
                    .collect()
            })
            .collect();
        Ok((LinearState { key, pk, s }, replies))
    }

    /// Steps 3-4: from `Enc(yc)` and `Enc(2^30 yc)` per SIMD ciphertext, `Enc(yc u - v)`.
    fn product_round(
        &self,
        state: LinearState,
        blobs: &[Vec<u8>],
    ) -> Result<(ServerMaterial, Vec<Vec<u8>>), HeError> {
        if blobs.len() != self.layout.activation_blobs() {
            return Err(HeError::Count { expected: self.layout.activation_blobs(), found: blobs.len() });
        }
        let LinearState { key, pk, s } = state;
        let inputs = blobs.iter().map(|b| decode_fresh(b, key, &self.par)).collect::<Result<Vec<_>, _>>()?;
        let n = self.par.degree();
        let squares = self.arch.maps.len() - 1;
        let mut rng = rand::rng();
        let mut uniform =
            |len: usize| -> Vec<Fp> { (0..len).map(|_| core_nostd::mask::uniform_fp(&mut rng)).collect() };
        let u: Vec<Vec<Fp>> =
            self.arch.maps[..squares].iter().map(|m| uniform(m.kind.output_len())).collect();
        let v: Vec<Vec<Fp>> =
            self.arch.maps[..squares].iter().map(|m| uniform(m.kind.output_len())).collect();
        let simd = self.layout.simd_ciphertexts;
        let mut u_slots = vec![vec![0u64; n]; simd];
        let mut v_slots = vec![vec![0u64; n]; simd];
        for layer in 0..squares {
            for (k, (a, b)) in u[layer].iter().zip(&v[layer]).enumerate() {
                let slot = activation_slot(&self.arch, layer, k, n);
                u_slots[slot.ct][slot.coeff] = a.value();
                v_slots[slot.ct][slot.coeff] = b.value();
            }
        }
        let jobs: Vec<usize> = (0..simd).collect();
        let ctx = self.par.context_at_level(0)?;
        let replies = parallel_map(self.threads, &jobs, |&j| {
            let (lo, hi) = split_limbs(&self.coder.coefficients(&u_slots[j]));
            let (lo, hi) = (centred_poly(ctx, &lo)?, centred_poly(ctx, &hi)?);
            let mut ct = multiply_accumulate(&self.par, &[&inputs[2 * j], &inputs[2 * j + 1]], &[&lo, &hi])?;
            ct -= &Plaintext::try_encode(v_slots[j].as_slice(), Encoding::simd(), &self.par)?;
            self.finish_reply(ct, &pk, key, self.simd_flood_bits, None)
        })
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        Ok((ServerMaterial { s, u, v }, replies))
    }

    /// Re-randomise, flood, switch to level 1, encode compactly.
    fn finish_reply(
        &self,
        mut ct: Ciphertext,
        pk: &Ciphertext,
        key: KeyId,
        flood_bits: u32,
        c0_positions: Option<&[usize]>,
    ) -> Result<Vec<u8>, HeError> {
        let mut rng = rand::rng();
        ct += &encryption_of_zero(&self.par, pk, &mut rng)?;
        let flood = flooding_poly(self.par.context_at_level(0)?, flood_bits, &mut rng);
        ct[0] += &flood;
        ct.switch_down()?;
        encode_compact(&ct, key, &self.par, c0_positions)
    }
}

/// `f` over `items` on `threads` scoped threads, results in order.
fn parallel_map<T: Sync, R: Send>(threads: usize, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if threads <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            items.chunks(per).map(|chunk| scope.spawn(|| chunk.iter().map(&f).collect::<Vec<R>>())).collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// What the server keeps between the two HE round trips.
struct LinearState {
    key: KeyId,
    pk: Ciphertext,
    s: Vec<Vec<Fp>>,
}

/// Where one ticket's preprocessing stands.
enum Phase {
    /// Receiving the public key and `Enc(r_i)`.
    AwaitMasks(BlobAssembler),
    /// Linear results sent; receiving `Enc(yc)`.
    AwaitActivations(BlobAssembler, LinearState),
    /// Finished or failed.
    Done,
}

/// What a completed round asks the caller to send.
#[derive(Debug)]
pub enum PrepStep {
    /// Send these blobs as `round`, then keep feeding chunks.
    Reply { round: HeRound, blobs: Vec<Vec<u8>> },
    /// Send these blobs as `round`; preprocessing is complete and `material` is the server's half
    /// of the ticket.
    Finished { round: HeRound, blobs: Vec<Vec<u8>>, material: ServerMaterial },
}

/// One ticket's preprocessing on the server, sans-I/O.
///
/// ```text
/// AwaitMasks --HeChunk*--> AwaitMasks --HeRoundEnd{MaskCiphertexts}--> AwaitActivations  (LinearResults)
/// AwaitActivations --HeChunk*, HeRoundEnd{ActivationCiphertexts}--> Done                  (ProductResults)
/// any error --> Done
/// ```
pub struct ServerPreprocessing {
    model: Arc<HeModel>,
    phase: Phase,
}

impl std::fmt::Debug for ServerPreprocessing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPreprocessing").finish_non_exhaustive()
    }
}

impl ServerPreprocessing {
    pub fn new(model: Arc<HeModel>) -> ServerPreprocessing {
        let expected = model.layout.mask_blobs();
        ServerPreprocessing {
            model,
            phase: Phase::AwaitMasks(BlobAssembler::new(HeRound::MaskCiphertexts, expected)),
        }
    }

    /// One `HeChunk`.
    pub fn on_chunk(&mut self, chunk: &core_nostd::wire::BlobChunk<'_>) -> Result<(), HeError> {
        let result = match &mut self.phase {
            Phase::AwaitMasks(a) | Phase::AwaitActivations(a, _) => a.push(chunk),
            Phase::Done => Err(HeError::Malformed("preprocessing is over")),
        };
        if result.is_err() {
            self.phase = Phase::Done;
        }
        result
    }

    /// One `HeRoundEnd`: runs the round's HE work.
    pub fn on_round_end(&mut self, round: HeRound, blobs: u32) -> Result<PrepStep, HeError> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::AwaitMasks(a) if round == HeRound::MaskCiphertexts => {
                let (state, replies) = self.model.linear_round(&a.finish(blobs)?)?;
                let expected = self.model.layout.activation_blobs();
                self.phase = Phase::AwaitActivations(
                    BlobAssembler::new(HeRound::ActivationCiphertexts, expected),
                    state,
                );
                Ok(PrepStep::Reply { round: HeRound::LinearResults, blobs: replies })
            }
            Phase::AwaitActivations(a, state) if round == HeRound::ActivationCiphertexts => {
                let (material, replies) = self.model.product_round(state, &a.finish(blobs)?)?;
                Ok(PrepStep::Finished { round: HeRound::ProductResults, blobs: replies, material })
            }
            _ => Err(HeError::Malformed("round end out of order")),
        }
    }
}
