//! Ciphertexts on the wire: a small header, then one of two bodies, and the reassembly of blobs
//! from `HeChunk` messages.
//!
//! ```text
//! blob   = "PIHE" | version u8 (1) | kind u8 | key id [16] | body
//! Fresh   (client -> server): fhe's own serialisation of a fresh secret-key ciphertext at
//!         level 0; its c1 travels as a 32-byte seed, so it is half the size of a full one.
//! Compact (server -> client): a ciphertext switched down to level 1 (two moduli), each
//!         coefficient CRT-combined and rounded to its top bits (COMPACT_COEFF_BYTES bytes);
//!         c0 only at the coefficients the client reads, c1 whole:
//!         body = c0 count u32 LE | c0 values | c1 values (n)
//! ```
//!
//! The key id binds a ciphertext to the client key it was made under, so a ciphertext of another
//! key (another session, a mixed-up provisioner) is refused instead of decrypting to garbage.
//! Every received ciphertext is re-validated (polynomial count, level, NTT form) before use: fhe
//! accepts some ill-formed ciphertexts in `from_bytes` and asserts later.
//!
//! Dropping `COMPACT_DROP_BITS` low bits adds an error of at most `2^(D-1)` to `c0` and
//! `2^(D-1) ||s||_1 <= 2^(D-1) 20 n` to the decrypted noise: 2^53 with `D = 36`, well inside the
//! 62 bits a level-1 ciphertext holds above the flooded noise switched down (about 2^40).

use std::sync::Arc;

use core_nostd::wire::{BlobChunk, HeRound};
use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};
use fhe_traits::{DeserializeParametrized, Serialize};
use sha2::{Digest, Sha256};

use crate::HeError;

const MAGIC: [u8; 4] = *b"PIHE";
const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 22;
/// Low bits dropped from each coefficient of a compact ciphertext.
pub const COMPACT_DROP_BITS: u32 = 36;
/// Bytes per coefficient of a compact ciphertext (124 - 36 = 88 bits).
pub const COMPACT_COEFF_BYTES: usize = 11;
/// Largest blob either side accepts (a fresh level-0 ciphertext is about 197 KB, a compact one at
/// most 181 KB).
pub const MAX_BLOB_BYTES: usize = 256 * 1024;

/// What a blob's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    Fresh = 1,
    Compact = 2,
}

/// Identifies a client key without revealing it: the first 16 bytes of
/// `SHA-256("pi-he key id v1" | key seed)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub fn of_seed(seed: &[u8; 32]) -> KeyId {
        let digest = Sha256::new().chain_update(b"pi-he key id v1").chain_update(seed).finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        KeyId(id)
    }
}

fn header(kind: BlobKind, key: KeyId) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_BLOB_BYTES / 2);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&key.0);
    out
}

/// Splits a blob into (kind, key id, body).
pub fn parse_header(blob: &[u8]) -> Result<(BlobKind, KeyId, &[u8]), HeError> {
    if blob.len() < HEADER_LEN {
        return Err(HeError::Malformed("shorter than the header"));
    }
    if blob[..4] != MAGIC {
        return Err(HeError::Malformed("bad magic"));
    }
    if blob[4] != VERSION {
        return Err(HeError::Malformed("unsupported blob version"));
    }
    let kind = match blob[5] {
        1 => BlobKind::Fresh,
        2 => BlobKind::Compact,
        _ => return Err(HeError::Malformed("unknown blob kind")),
    };
    let mut key = [0u8; 16];
    key.copy_from_slice(&blob[6..22]);
    Ok((kind, KeyId(key), &blob[HEADER_LEN..]))
}

fn expect(blob: &[u8], kind: BlobKind, key: KeyId) -> Result<&[u8], HeError> {
    let (found, found_key, body) = parse_header(blob)?;
    if found != kind {
        return Err(HeError::WrongKind { expected: kind, found });
    }
    if found_key != key {
        return Err(HeError::WrongKey);
    }
    Ok(body)
}

/// A fresh client ciphertext as a blob.
pub fn encode_fresh(ct: &Ciphertext, key: KeyId) -> Vec<u8> {
    let mut out = header(BlobKind::Fresh, key);
    out.extend_from_slice(&ct.to_bytes());
    out
}

/// Decodes and validates a fresh ciphertext: exactly two polynomials, level 0, NTT form.
pub fn decode_fresh(blob: &[u8], key: KeyId, par: &Arc<BfvParameters>) -> Result<Ciphertext, HeError> {
    if blob.len() > MAX_BLOB_BYTES {
        return Err(HeError::Malformed("blob too large"));
    }
    let body = expect(blob, BlobKind::Fresh, key)?;
    let ct = Ciphertext::from_bytes(body, par)?;
    if ct.len() != 2 {
        return Err(HeError::Malformed("a ciphertext must have two polynomials"));
    }
    if par.level_of_context(ct[0].ctx())? != 0 {
        return Err(HeError::Malformed("a client ciphertext must be at level 0"));
    }
    // Re-checks representation and contexts of every polynomial.
    Ok(Ciphertext::new(ct.to_vec(), par)?)
}

/// The two level-1 moduli and the CRT constants.
struct Crt {
    q0: u64,
    q1: u64,
    /// `q0^-1 mod q1`.
    inv: u64,
    /// `q0 q1`.
    q: u128,
}

impl Crt {
    fn new(par: &BfvParameters) -> Crt {
        let (q0, q1) = (par.moduli()[0], par.moduli()[1]);
        let inv = pow_mod(q0 % q1, q1 - 2, q1);
        Crt { q0, q1, inv, q: u128::from(q0) * u128::from(q1) }
    }

    fn combine(&self, a0: u64, a1: u64) -> u128 {
        let diff = (u128::from(a1) + u128::from(self.q1) - u128::from(a0 % self.q1)) % u128::from(self.q1);
        let k = diff * u128::from(self.inv) % u128::from(self.q1);
        u128::from(a0) + u128::from(self.q0) * k
    }

    fn max_top(&self) -> u128 {
        ((self.q - 1) + (1u128 << (COMPACT_DROP_BITS - 1))) >> COMPACT_DROP_BITS
    }
}

/// `b^e mod m` for `m < 2^64`.
fn pow_mod(b: u64, mut e: u64, m: u64) -> u64 {
    let m = u128::from(m);
    let (mut r, mut b) = (1u128, u128::from(b) % m);
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % m;
        }
        b = b * b % m;
        e >>= 1;
    }
    r as u64
}

/// A level-1 server reply as a compact blob; `c0_positions` are the coefficients of `c0` the
/// client reads (`None`: all of them).
pub fn encode_compact(
    ct: &Ciphertext,
    key: KeyId,
    par: &Arc<BfvParameters>,
    c0_positions: Option<&[usize]>,
) -> Result<Vec<u8>, HeError> {
    if ct.len() != 2 || par.level_of_context(ct[0].ctx())? != 1 {
        return Err(HeError::Malformed("compact blobs hold two-polynomial level-1 ciphertexts"));
    }
    let crt = Crt::new(par);
    let n = par.degree();
    let mut polys = [ct[0].clone(), ct[1].clone()];
    for p in &mut polys {
        p.change_representation(Representation::PowerBasis);
    }
    let all: Vec<usize> = (0..n).collect();
    let positions = c0_positions.unwrap_or(&all);
    let mut out = header(BlobKind::Compact, key);
    out.reserve(4 + (positions.len() + n) * COMPACT_COEFF_BYTES);
    out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    let mut put = |p: &Poly, j: usize| {
        let c = p.coefficients();
        let x = crt.combine(c[[0, j]], c[[1, j]]);
        let top = (x + (1u128 << (COMPACT_DROP_BITS - 1))) >> COMPACT_DROP_BITS;
        out.extend_from_slice(&top.to_le_bytes()[..COMPACT_COEFF_BYTES]);
    };
    for &j in positions {
        put(&polys[0], j);
    }
    for j in 0..n {
        put(&polys[1], j);
    }
    Ok(out)
}

/// Decodes a compact reply. `c0_positions` must be the positions the server was asked to send;
/// the other coefficients of `c0` are zero (their plaintext coefficients decrypt to garbage).
pub fn decode_compact(
    blob: &[u8],
    key: KeyId,
    par: &Arc<BfvParameters>,
    c0_positions: Option<&[usize]>,
) -> Result<Ciphertext, HeError> {
    if blob.len() > MAX_BLOB_BYTES {
        return Err(HeError::Malformed("blob too large"));
    }
    let body = expect(blob, BlobKind::Compact, key)?;
    let n = par.degree();
    let all: Vec<usize> = (0..n).collect();
    let positions = c0_positions.unwrap_or(&all);
    if body.len() < 4 {
        return Err(HeError::Malformed("compact body too short"));
    }
    let count = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if count != positions.len() || body.len() != 4 + (count + n) * COMPACT_COEFF_BYTES {
        return Err(HeError::Malformed("compact ciphertext of the wrong size"));
    }
    let crt = Crt::new(par);
    let max_top = crt.max_top();
    let mut values = body[4..].chunks_exact(COMPACT_COEFF_BYTES).map(|b| {
        let mut w = [0u8; 16];
        w[..COMPACT_COEFF_BYTES].copy_from_slice(b);
        let top = u128::from_le_bytes(w);
        if top > max_top {
            return Err(HeError::Malformed("compact coefficient out of range"));
        }
        let x = (top << COMPACT_DROP_BITS) % crt.q;
        Ok(((x % u128::from(crt.q0)) as u64, (x % u128::from(crt.q1)) as u64))
    });
    let ctx = par.context_at_level(1)?;
    let mut c0 = vec![0u64; 2 * n];
    for &j in positions {
        if j >= n {
            return Err(HeError::Malformed("position outside the ring"));
        }
        let (a0, a1) = values.next().ok_or(HeError::Malformed("truncated"))??;
        c0[j] = a0;
        c0[n + j] = a1;
    }
    let mut c1 = vec![0u64; 2 * n];
    for j in 0..n {
        let (a0, a1) = values.next().ok_or(HeError::Malformed("truncated"))??;
        c1[j] = a0;
        c1[n + j] = a1;
    }
    let mut polys = Vec::with_capacity(2);
    for v in [c0, c1] {
        let mut p = Poly::try_convert_from(v, ctx, false, Representation::PowerBasis)?;
        p.change_representation(Representation::Ntt);
        polys.push(p);
    }
    Ok(Ciphertext::new(polys, par)?)
}

/// Reassembles the blobs of one HE round from `HeChunk`s, with bounded memory: at most
/// `expected` blobs of at most [`MAX_BLOB_BYTES`], each sent whole and in order.
#[derive(Debug)]
pub struct BlobAssembler {
    round: HeRound,
    expected: usize,
    blobs: Vec<Vec<u8>>,
    /// Declared length of the blob being received.
    current_total: usize,
}

impl BlobAssembler {
    pub fn new(round: HeRound, expected: usize) -> BlobAssembler {
        BlobAssembler { round, expected, blobs: Vec::new(), current_total: 0 }
    }

    pub fn round(&self) -> HeRound {
        self.round
    }

    /// Takes one chunk.
    pub fn push(&mut self, chunk: &BlobChunk<'_>) -> Result<(), HeError> {
        if chunk.round != self.round {
            return Err(HeError::Malformed("chunk of another round"));
        }
        let total = chunk.total_len as usize;
        let (blob, offset) = (chunk.blob as usize, chunk.offset as usize);
        let current_done = self.blobs.last().is_none_or(|b| b.len() == self.current_total);
        if offset == 0 && current_done {
            if blob != self.blobs.len() || blob >= self.expected {
                return Err(HeError::Malformed("blob out of order or beyond the round"));
            }
            if total == 0 || total > MAX_BLOB_BYTES {
                return Err(HeError::Malformed("blob length out of bounds"));
            }
            self.blobs.push(Vec::with_capacity(total));
            self.current_total = total;
        } else if blob + 1 != self.blobs.len() || total != self.current_total {
            return Err(HeError::Malformed("chunk does not continue the current blob"));
        }
        let Some(buf) = self.blobs.last_mut() else {
            return Err(HeError::Malformed("chunk before any blob"));
        };
        if offset != buf.len() || buf.len() + chunk.bytes.len() > total {
            return Err(HeError::Malformed("chunk offset or length does not fit the blob"));
        }
        buf.extend_from_slice(chunk.bytes);
        Ok(())
    }

    /// Ends the round: `count` (from `HeRoundEnd`) must be the expected number of whole blobs.
    pub fn finish(self, count: u32) -> Result<Vec<Vec<u8>>, HeError> {
        let complete = self.blobs.last().is_none_or(|b| b.len() == self.current_total);
        if count as usize != self.expected || self.blobs.len() != self.expected || !complete {
            return Err(HeError::Count { expected: self.expected, found: self.blobs.len() });
        }
        Ok(self.blobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parameters;
    use core_nostd::wire::blob_chunks;
    use fhe::bfv::{Encoding, Plaintext, SecretKey};
    use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter};
    use rand::{Rng, SeedableRng};

    fn fixture() -> (Arc<BfvParameters>, SecretKey, rand_chacha::ChaCha20Rng) {
        let par = parameters().unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let sk = SecretKey::random(&par, &mut rng);
        (par, sk, rng)
    }

    #[test]
    fn fresh_round_trip_and_rejections() {
        let (par, sk, mut rng) = fixture();
        let key = KeyId::of_seed(&[1; 32]);
        let v: Vec<u64> = (0..par.degree() as u64).collect();
        let pt = Plaintext::try_encode(v.as_slice(), Encoding::poly(), &par).unwrap();
        let ct = sk.try_encrypt(&pt, &mut rng).unwrap();
        let blob = encode_fresh(&ct, key);
        assert!(blob.len() <= MAX_BLOB_BYTES, "{} bytes", blob.len());
        let back = decode_fresh(&blob, key, &par).unwrap();
        let dec = Vec::<u64>::try_decode(&sk.try_decrypt(&back).unwrap(), Encoding::poly()).unwrap();
        assert_eq!(dec, v);
        // Another key, a truncated blob, a flipped kind, garbage: errors, never panics.
        assert!(matches!(decode_fresh(&blob, KeyId::of_seed(&[2; 32]), &par), Err(HeError::WrongKey)));
        for cut in [0, 10, HEADER_LEN, HEADER_LEN + 1, blob.len() / 2, blob.len() - 1] {
            assert!(decode_fresh(&blob[..cut], key, &par).is_err(), "cut at {cut}");
        }
        let mut other = blob.clone();
        other[5] = BlobKind::Compact as u8;
        assert!(matches!(decode_fresh(&other, key, &par), Err(HeError::WrongKind { .. })));
        // Hostile bodies: bit flips in the protobuf framing and anywhere else, random bytes,
        // random lengths. Any result is fine but a panic.
        for i in 0..400 {
            let mut bad = blob.clone();
            let k = if i % 2 == 0 {
                rng.random_range(HEADER_LEN..bad.len().min(HEADER_LEN + 64))
            } else {
                rng.random_range(HEADER_LEN..bad.len())
            };
            bad[k] ^= 1 << (i % 8);
            if i % 5 == 0 {
                let len = rng.random_range(HEADER_LEN..bad.len());
                bad.truncate(len);
            }
            let _ = decode_fresh(&bad, key, &par);
        }
        for len in [0usize, 1, 7, 100, 5000, 200_000] {
            let mut junk = blob[..HEADER_LEN].to_vec();
            junk.extend((0..len).map(|_| rng.random::<u8>()));
            let _ = decode_fresh(&junk, key, &par);
            let _ = decode_compact(&junk, key, &par, None);
        }
    }

    #[test]
    fn compact_round_trip_decrypts_the_same_plaintext() {
        let (par, sk, mut rng) = fixture();
        let key = KeyId::of_seed(&[3; 32]);
        let v: Vec<u64> = (0..par.degree()).map(|_| rng.random_range(0..core_nostd::field::P)).collect();
        let pt = Plaintext::try_encode(v.as_slice(), Encoding::poly(), &par).unwrap();
        let mut ct: Ciphertext = sk.try_encrypt(&pt, &mut rng).unwrap();
        ct.switch_down().unwrap();
        let positions: Vec<usize> = (0..par.degree()).step_by(3).collect();
        let blob = encode_compact(&ct, key, &par, Some(&positions)).unwrap();
        assert!(blob.len() <= MAX_BLOB_BYTES);
        let back = decode_compact(&blob, key, &par, Some(&positions)).unwrap();
        let dec = Vec::<u64>::try_decode(&sk.try_decrypt(&back).unwrap(), Encoding::poly()).unwrap();
        for &j in &positions {
            assert_eq!(dec[j], v[j]);
        }
        let full = encode_compact(&ct, key, &par, None).unwrap();
        let back = decode_compact(&full, key, &par, None).unwrap();
        let dec = Vec::<u64>::try_decode(&sk.try_decrypt(&back).unwrap(), Encoding::poly()).unwrap();
        assert_eq!(dec, v);
        // The wrong size, the wrong positions, another key.
        assert!(decode_compact(&blob, key, &par, None).is_err());
        assert!(decode_compact(&blob[..blob.len() - 1], key, &par, Some(&positions)).is_err());
        assert!(matches!(
            decode_compact(&blob, KeyId([0; 16]), &par, Some(&positions)),
            Err(HeError::WrongKey)
        ));
        let mut big = full.clone();
        big[HEADER_LEN + 4..HEADER_LEN + 4 + COMPACT_COEFF_BYTES].fill(0xff);
        assert!(decode_compact(&big, key, &par, None).is_err(), "coefficient above q");
    }

    #[test]
    fn assembler_accepts_in_order_blobs_and_refuses_the_rest() {
        let blobs = [vec![1u8; 3000], vec![2u8; 10]];
        let mut a = BlobAssembler::new(HeRound::MaskCiphertexts, 2);
        for (i, b) in blobs.iter().enumerate() {
            for c in blob_chunks(HeRound::MaskCiphertexts, i as u32, b) {
                a.push(&c).unwrap();
            }
        }
        assert_eq!(a.finish(2).unwrap(), blobs);
        // Too many blobs, a gap, another round, a short count.
        let mut a = BlobAssembler::new(HeRound::MaskCiphertexts, 1);
        let chunks: Vec<_> = blob_chunks(HeRound::MaskCiphertexts, 0, &blobs[0]).collect();
        assert!(a.push(&chunks[1]).is_err());
        a.push(&chunks[0]).unwrap();
        assert!(a.push(&chunks[2]).is_err(), "gap");
        let mut b = BlobAssembler::new(HeRound::MaskCiphertexts, 1);
        assert!(b.push(&blob_chunks(HeRound::LinearResults, 0, &blobs[1]).next().unwrap()).is_err());
        let mut c = BlobAssembler::new(HeRound::MaskCiphertexts, 1);
        c.push(&blob_chunks(HeRound::MaskCiphertexts, 0, &blobs[1]).next().unwrap()).unwrap();
        assert!(c.push(&blob_chunks(HeRound::MaskCiphertexts, 1, &blobs[1]).next().unwrap()).is_err());
        assert!(c.finish(2).is_err());
        let huge = BlobChunk {
            round: HeRound::MaskCiphertexts,
            blob: 0,
            offset: 0,
            total_len: u32::MAX,
            bytes: &[0],
        };
        assert!(BlobAssembler::new(HeRound::MaskCiphertexts, 1).push(&huge).is_err());
    }
}
