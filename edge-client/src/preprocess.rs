//! HE preprocessing, client half (DESIGN §4, preprocessing steps 1 and 3), and the driver that
//! runs it over a [`Connection`] to produce one ticket.
//!
//! [`ClientPreprocessing`] is sans-I/O: it makes the client's blobs and consumes the server's.
//! Its HE key is generated per ticket from a fresh 32-byte seed and dropped with the state;
//! only the ticket (mask seed, `yc_i`, `e_i`) survives. Blob formats and rounds: `he_bfv`.
//!
//! ```text
//! new()                     -> MaskCiphertexts blobs (public key, Enc(r_i) coefficient-packed)
//! on_linear_results(blobs)  -> ActivationCiphertexts blobs (Enc(yc), Enc(2^30 yc) SIMD-packed)
//! on_product_results(blobs) -> the ticket bytes (core_nostd::ticket layout)
//! ```

use std::io::{Read, Write};
use std::sync::Arc;

use core_nostd::arch::Architecture;
use core_nostd::mask::MaskStream;
use core_nostd::packing::activation_slot;
use core_nostd::ticket::{write_body, TicketHeader};
use core_nostd::truncation::truncate_client_share;
use core_nostd::wire::{blob_chunks, HeRound, Message};
use core_nostd::Fp;
use fhe::bfv::{BfvParameters, Ciphertext, Encoding, Plaintext, SecretKey};
use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter};
use he_bfv::blob::{decode_compact, encode_fresh};
use he_bfv::noise::SIMD_LIMB_BITS;
use he_bfv::{BlobAssembler, HeError, KeyId, Layout};
use rand::{CryptoRng, SeedableRng};

use crate::transport::{Connection, TransportError};

/// Where the client's preprocessing stands.
enum Phase {
    AwaitLinearResults,
    AwaitProductResults { yc: Vec<Vec<Fp>> },
    Done,
}

/// One ticket's preprocessing on the client.
pub struct ClientPreprocessing {
    par: Arc<BfvParameters>,
    arch: Architecture,
    layout: Layout,
    sk: SecretKey,
    key: KeyId,
    header: TicketHeader,
    phase: Phase,
}

impl std::fmt::Debug for ClientPreprocessing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key and the mask seed are secret.
        f.debug_struct("ClientPreprocessing")
            .field("model", &self.arch.model_id.as_str())
            .finish_non_exhaustive()
    }
}

impl ClientPreprocessing {
    /// Starts a ticket for `arch` under the server's `ticket_id`: draws the key and mask seeds
    /// and returns the `MaskCiphertexts` blobs.
    pub fn new(
        arch: &Architecture,
        ticket_id: [u8; 16],
        rng: &mut impl CryptoRng,
    ) -> Result<(ClientPreprocessing, Vec<Vec<u8>>), HeError> {
        let par = he_bfv::parameters()?;
        let layout = Layout::of(arch, par.degree())?;
        let (mut key_seed, mut mask_seed) = ([0u8; 32], [0u8; 32]);
        rng.fill_bytes(&mut key_seed);
        rng.fill_bytes(&mut mask_seed);
        let sk = SecretKey::random(&par, &mut rand_chacha::ChaCha20Rng::from_seed(key_seed));
        let key = KeyId::of_seed(&key_seed);
        let mut blobs = Vec::with_capacity(layout.mask_blobs());
        let zero = Plaintext::zero(Encoding::poly(), &par)?;
        blobs.push(encode_fresh(&sk.try_encrypt(&zero, rng)?, key));
        for (i, (map, packing)) in arch.maps.iter().zip(&layout.maps).enumerate() {
            let mut polys = vec![vec![0u64; par.degree()]; packing.input_ciphertexts()];
            let mut stream = MaskStream::for_map_input(&mask_seed, i as u32);
            for k in 0..map.kind.input_len() {
                let slot = packing.input_slot_of(k);
                polys[slot.ct][slot.coeff] = stream.next_fp().value();
            }
            for poly in &polys {
                let pt = Plaintext::try_encode(poly.as_slice(), Encoding::poly(), &par)?;
                blobs.push(encode_fresh(&sk.try_encrypt(&pt, rng)?, key));
            }
        }
        let header = TicketHeader { arch_hash: arch.hash(), ticket_id, seed: mask_seed };
        let prep = ClientPreprocessing {
            par,
            arch: arch.clone(),
            layout,
            sk,
            key,
            header,
            phase: Phase::AwaitLinearResults,
        };
        Ok((prep, blobs))
    }

    /// The number of blobs the server must send in `round`.
    pub fn expected_blobs(&self, round: HeRound) -> usize {
        match round {
            HeRound::LinearResults => self.layout.linear_blobs(),
            HeRound::ProductResults => self.layout.product_blobs(),
            HeRound::MaskCiphertexts => self.layout.mask_blobs(),
            HeRound::ActivationCiphertexts => self.layout.activation_blobs(),
        }
    }

    /// Bits of noise budget left in a server reply (`c0` whole), at level 1. Diagnostics for
    /// tests and benchmarks: the measurement runs in time that depends on the secret noise.
    pub fn noise_budget(&self, blob: &[u8]) -> Result<u32, HeError> {
        let ct = decode_compact(blob, self.key, &self.par, None)?;
        // SAFETY: `measure_noise` is only variable-time; it is used on diagnostics paths.
        let noise = unsafe { self.sk.measure_noise(&ct)? } as u32;
        Ok(he_bfv::noise_capacity_bits(&self.par, 1).saturating_sub(noise))
    }

    fn decrypt(&self, ct: &Ciphertext, encoding: Encoding) -> Result<Vec<u64>, HeError> {
        Ok(Vec::<u64>::try_decode(&self.sk.try_decrypt(ct)?, encoding)?)
    }

    /// Decrypts `W_i r_i - s_i`, truncates it into the client's shares `yc_i`, and returns the
    /// `ActivationCiphertexts` blobs.
    pub fn on_linear_results(
        &mut self,
        blobs: &[Vec<u8>],
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<Vec<u8>>, HeError> {
        if !matches!(self.phase, Phase::AwaitLinearResults) {
            return Err(HeError::Malformed("linear results not expected now"));
        }
        self.phase = Phase::Done;
        if blobs.len() != self.layout.linear_blobs() {
            return Err(HeError::Count { expected: self.layout.linear_blobs(), found: blobs.len() });
        }
        let mut next = blobs.iter();
        let mut yc = Vec::with_capacity(self.arch.maps.len());
        for (i, (map, packing)) in self.arch.maps.iter().zip(&self.layout.maps).enumerate() {
            let mut plain = Vec::with_capacity(packing.output_ciphertexts());
            for positions in &self.layout.c0_positions[i] {
                let blob = next.next().ok_or(HeError::Malformed("missing linear result"))?;
                let ct = decode_compact(blob, self.key, &self.par, Some(positions))?;
                plain.push(self.decrypt(&ct, Encoding::poly())?);
            }
            let bits = u32::from(map.truncate_bits);
            yc.push(
                (0..map.kind.output_len())
                    .map(|k| {
                        let slot = packing.output_slot_of(k);
                        truncate_client_share(Fp::from_u64_reduced(plain[slot.ct][slot.coeff]), bits)
                    })
                    .collect::<Vec<Fp>>(),
            );
        }
        let n = self.par.degree();
        let mut slots = vec![vec![0u64; n]; self.layout.simd_ciphertexts];
        for (layer, values) in yc.iter().enumerate().take(self.arch.maps.len() - 1) {
            for (k, v) in values.iter().enumerate() {
                let slot = activation_slot(&self.arch, layer, k, n);
                slots[slot.ct][slot.coeff] = v.value();
            }
        }
        let shift = Fp::from_u64_reduced(1 << SIMD_LIMB_BITS);
        let mut out = Vec::with_capacity(self.layout.activation_blobs());
        for s in &slots {
            let shifted: Vec<u64> = s.iter().map(|&v| (Fp::from_u64_reduced(v) * shift).value()).collect();
            for values in [s, &shifted] {
                let pt = Plaintext::try_encode(values.as_slice(), Encoding::simd(), &self.par)?;
                out.push(encode_fresh(&self.sk.try_encrypt(&pt, rng)?, self.key));
            }
        }
        self.phase = Phase::AwaitProductResults { yc };
        Ok(out)
    }

    /// Decrypts `e_i = yc_i u_i - v_i` and writes the ticket.
    pub fn on_product_results(mut self, blobs: &[Vec<u8>]) -> Result<Vec<u8>, HeError> {
        let Phase::AwaitProductResults { yc } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Err(HeError::Malformed("product results not expected now"));
        };
        if blobs.len() != self.layout.product_blobs() {
            return Err(HeError::Count { expected: self.layout.product_blobs(), found: blobs.len() });
        }
        let plain = blobs
            .iter()
            .map(|b| {
                let ct = decode_compact(b, self.key, &self.par, None)?;
                self.decrypt(&ct, Encoding::simd())
            })
            .collect::<Result<Vec<_>, HeError>>()?;
        let n = self.par.degree();
        let squares = self.arch.maps.len() - 1;
        let e: Vec<Vec<Fp>> = (0..squares)
            .map(|layer| {
                (0..self.arch.maps[layer].kind.output_len())
                    .map(|k| {
                        let slot = activation_slot(&self.arch, layer, k, n);
                        Fp::from_u64_reduced(plain[slot.ct][slot.coeff])
                    })
                    .collect()
            })
            .collect();
        let mut ticket = self.header.to_bytes().to_vec();
        let yc_refs: Vec<&[Fp]> = yc.iter().map(Vec::as_slice).collect();
        let e_refs: Vec<&[Fp]> = e.iter().map(Vec::as_slice).collect();
        write_body::<()>(&yc_refs, &e_refs, |b| {
            ticket.extend_from_slice(b);
            Ok(())
        })
        .map_err(|_| HeError::Malformed("ticket body"))?;
        Ok(ticket)
    }
}

/// Why preprocessing over a connection failed.
#[derive(Debug)]
pub enum PreprocessError {
    Transport(TransportError),
    He(HeError),
}

impl std::fmt::Display for PreprocessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreprocessError::Transport(e) => write!(f, "{e}"),
            PreprocessError::He(e) => write!(f, "HE: {e}"),
        }
    }
}

impl std::error::Error for PreprocessError {}

impl From<TransportError> for PreprocessError {
    fn from(e: TransportError) -> Self {
        PreprocessError::Transport(e)
    }
}

impl From<HeError> for PreprocessError {
    fn from(e: HeError) -> Self {
        PreprocessError::He(e)
    }
}

/// Sends the blobs of one round.
fn send_round<S: Read + Write>(
    conn: &mut Connection<S>,
    round: HeRound,
    blobs: &[Vec<u8>],
) -> Result<(), TransportError> {
    for (i, blob) in blobs.iter().enumerate() {
        for chunk in blob_chunks(round, i as u32, blob) {
            conn.queue(&Message::HeChunk(chunk))?;
        }
    }
    conn.queue(&Message::HeRoundEnd { round, blobs: blobs.len() as u32 })?;
    conn.flush()
}

/// Receives the blobs of one round.
fn recv_round<S: Read + Write>(
    conn: &mut Connection<S>,
    round: HeRound,
    expected: usize,
) -> Result<Vec<Vec<u8>>, PreprocessError> {
    let mut assembler = BlobAssembler::new(round, expected);
    loop {
        let end = conn.recv(|msg| match msg {
            Message::HeChunk(chunk) => {
                assembler.push(chunk).map_err(|e| TransportError::Unexpected(he_detail(&e)))?;
                Ok(None)
            }
            Message::HeRoundEnd { round: r, blobs } if *r == round => Ok(Some(*blobs)),
            _ => Err(TransportError::Unexpected("expected an HE chunk or round end")),
        })?;
        if let Some(count) = end {
            return Ok(assembler.finish(count)?);
        }
    }
}

fn he_detail(e: &HeError) -> &'static str {
    match e {
        HeError::Malformed(s) => s,
        _ => "bad HE chunk",
    }
}

/// Bytes and time of one preprocessing run.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreprocessStats {
    pub client_seconds: f64,
    pub total_seconds: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Runs preprocessing for one ticket over a connection that completed the handshake for `arch`;
/// returns the ticket bytes (to store in a [`crate::tickets::TicketWallet`]).
pub fn preprocess<S: Read + Write>(
    conn: &mut Connection<S>,
    arch: &Architecture,
    rng: &mut impl CryptoRng,
) -> Result<(Vec<u8>, PreprocessStats), PreprocessError> {
    let start = std::time::Instant::now();
    let traffic = conn.traffic();
    let mut client = std::time::Duration::ZERO;
    conn.queue(&Message::TicketRequest { model_id: arch.model_id.as_str() })?;
    let ticket_id = conn.recv(|msg| match msg {
        Message::TicketGranted { ticket_id } => Ok(ticket_id.0),
        _ => Err(TransportError::Unexpected("expected TicketGranted")),
    })?;
    let t = std::time::Instant::now();
    let (mut prep, blobs) = ClientPreprocessing::new(arch, ticket_id, rng)?;
    client += t.elapsed();
    send_round(conn, HeRound::MaskCiphertexts, &blobs)?;
    let replies = recv_round(conn, HeRound::LinearResults, prep.expected_blobs(HeRound::LinearResults))?;
    let t = std::time::Instant::now();
    let blobs = prep.on_linear_results(&replies, rng)?;
    client += t.elapsed();
    send_round(conn, HeRound::ActivationCiphertexts, &blobs)?;
    let replies = recv_round(conn, HeRound::ProductResults, prep.expected_blobs(HeRound::ProductResults))?;
    let t = std::time::Instant::now();
    let ticket = prep.on_product_results(&replies)?;
    client += t.elapsed();
    let moved = conn.traffic() - traffic;
    Ok((
        ticket,
        PreprocessStats {
            client_seconds: client.as_secs_f64(),
            total_seconds: start.elapsed().as_secs_f64(),
            bytes_sent: moved.sent,
            bytes_received: moved.received,
        },
    ))
}
