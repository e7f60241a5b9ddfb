//! The client ticket: what preprocessing leaves on the client for one future inference.
//!
//! DESIGN §4: the client keeps `(seed, yc_i, e_i)`. The masks `r_i` are not stored: they are
//! regenerated from the 32-byte seed (see `mask`). A ticket of `minionn-sq` is about 165 KB, more
//! than a small microcontroller's RAM, so the layout is a flat, fixed-width byte stream that the
//! online state machine reads front to back exactly once, in the order it needs the values:
//!
//! ```text
//! header (88 bytes):
//!   magic "PITK" | format version u16 LE | reserved u16 (0) | architecture hash [32]
//!   | ticket id [16] | mask seed [32]
//! body, for each square layer k = 0 .. L-2 (output of map k), for each element j:
//!   yc_k[j] as u64 LE | e_k[j] as u64 LE                       (16 bytes per activation)
//! then for the last map: yc_(L-1)[j] as u64 LE                  (8 bytes per logit)
//! ```
//!
//! A body value that is not a canonical field element is an error, never reduced silently.
//! The ticket id lets the server find its half; the architecture hash binds the ticket to one
//! model so it cannot be replayed against another.

use crate::arch::Architecture;
use crate::field::Fp;

/// First bytes of every ticket.
pub const MAGIC: [u8; 4] = *b"PITK";
/// Version of the layout above and of the mask derivation the seed feeds (2: ChaCha12 masks,
/// see [`crate::mask`]).
pub const FORMAT_VERSION: u16 = 2;
/// Length of the header.
pub const HEADER_LEN: usize = 88;

/// The fixed-size head of a ticket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TicketHeader {
    pub arch_hash: [u8; 32],
    pub ticket_id: [u8; 16],
    /// Secret: keys the client's mask stream.
    pub seed: [u8; 32],
}

impl core::fmt::Debug for TicketHeader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The seed is secret: never print it.
        f.debug_struct("TicketHeader").field("ticket_id", &self.ticket_id).finish_non_exhaustive()
    }
}

/// Why a ticket cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketFormatError {
    /// Not a ticket (wrong magic).
    BadMagic,
    /// A ticket of another format version.
    UnsupportedVersion(u16),
    /// Fewer bytes than the layout needs.
    Truncated,
    /// A body value `>= p`.
    NotCanonical,
    /// The ticket was made for another architecture.
    WrongModel,
    /// The underlying storage failed (flash read error, I/O error).
    Storage,
}

impl core::fmt::Display for TicketFormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TicketFormatError::BadMagic => write!(f, "not a ticket (bad magic)"),
            TicketFormatError::UnsupportedVersion(v) => write!(f, "unsupported ticket format version {v}"),
            TicketFormatError::Truncated => write!(f, "ticket is truncated"),
            TicketFormatError::NotCanonical => write!(f, "ticket holds a value that is not a field element"),
            TicketFormatError::WrongModel => write!(f, "ticket belongs to another model"),
            TicketFormatError::Storage => write!(f, "ticket storage read failed"),
        }
    }
}

impl TicketHeader {
    /// Encode the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[8..40].copy_from_slice(&self.arch_hash);
        out[40..56].copy_from_slice(&self.ticket_id);
        out[56..88].copy_from_slice(&self.seed);
        out
    }

    /// Decode and check a header.
    pub fn from_bytes(bytes: &[u8]) -> Result<TicketHeader, TicketFormatError> {
        let bytes: &[u8; HEADER_LEN] =
            bytes.get(..HEADER_LEN).and_then(|b| b.try_into().ok()).ok_or(TicketFormatError::Truncated)?;
        if bytes[..4] != MAGIC {
            return Err(TicketFormatError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != FORMAT_VERSION {
            return Err(TicketFormatError::UnsupportedVersion(version));
        }
        let mut h = TicketHeader { arch_hash: [0; 32], ticket_id: [0; 16], seed: [0; 32] };
        h.arch_hash.copy_from_slice(&bytes[8..40]);
        h.ticket_id.copy_from_slice(&bytes[40..56]);
        h.seed.copy_from_slice(&bytes[56..88]);
        Ok(h)
    }

    /// Refuse a ticket made for another architecture.
    pub fn check_model(&self, arch: &Architecture) -> Result<(), TicketFormatError> {
        if self.arch_hash == arch.hash() {
            Ok(())
        } else {
            Err(TicketFormatError::WrongModel)
        }
    }
}

/// Length in bytes of a whole ticket (header + body) for `arch`.
pub fn ticket_len(arch: &Architecture) -> usize {
    HEADER_LEN + 16 * arch.activations() + 8 * arch.output_len()
}

/// A source of ticket body values, read front to back (a slice, a flash region, a file).
pub trait TicketBody {
    /// Fill `out` with the next `out.len()` values of the body.
    fn read(&mut self, out: &mut [Fp]) -> Result<(), TicketFormatError>;
}

/// Decode one little-endian canonical field element.
#[inline]
pub fn decode_value(bytes: [u8; 8]) -> Result<Fp, TicketFormatError> {
    Fp::new(u64::from_le_bytes(bytes)).map_err(|_| TicketFormatError::NotCanonical)
}

/// A ticket body held in memory (RAM or memory-mapped flash).
#[derive(Debug)]
pub struct SliceBody<'a> {
    rest: &'a [u8],
}

impl<'a> SliceBody<'a> {
    /// The body of a whole ticket (header checked separately with [`TicketHeader::from_bytes`]).
    pub fn of_ticket(ticket: &'a [u8]) -> Result<Self, TicketFormatError> {
        ticket.get(HEADER_LEN..).map(|rest| SliceBody { rest }).ok_or(TicketFormatError::Truncated)
    }
}

impl TicketBody for SliceBody<'_> {
    fn read(&mut self, out: &mut [Fp]) -> Result<(), TicketFormatError> {
        let need = out.len().checked_mul(8).ok_or(TicketFormatError::Truncated)?;
        if self.rest.len() < need {
            return Err(TicketFormatError::Truncated);
        }
        let (now, rest) = self.rest.split_at(need);
        for (o, c) in out.iter_mut().zip(now.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            *o = decode_value(b)?;
        }
        self.rest = rest;
        Ok(())
    }
}

/// Writes a ticket body in the layout above (used by the provisioner that makes tickets).
/// `yc[k]` are the client's truncated shares of every map's output, `e[k]` the correlations of
/// every square layer.
pub fn write_body<E>(
    yc: &[&[Fp]],
    e: &[&[Fp]],
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    for (y, e) in yc.iter().zip(e) {
        for (a, b) in y.iter().zip(e.iter()) {
            sink(&a.value().to_le_bytes())?;
            sink(&b.value().to_le_bytes())?;
        }
    }
    if let Some(last) = yc.get(e.len()) {
        for a in last.iter() {
            sink(&a.value().to_le_bytes())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_errors() {
        let h = TicketHeader { arch_hash: [3; 32], ticket_id: [4; 16], seed: [5; 32] };
        let b = h.to_bytes();
        assert!(TicketHeader::from_bytes(&b) == Ok(h));
        assert_eq!(TicketHeader::from_bytes(&b[..87]), Err(TicketFormatError::Truncated));
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(TicketHeader::from_bytes(&bad), Err(TicketFormatError::BadMagic));
        let mut v2 = b;
        v2[4] = 1;
        assert_eq!(TicketHeader::from_bytes(&v2), Err(TicketFormatError::UnsupportedVersion(1)));
    }

    #[test]
    fn body_streams_in_layer_order() {
        let y0 = [Fp::from_i64(1), Fp::from_i64(2)];
        let e0 = [Fp::from_i64(3), Fp::from_i64(4)];
        let y1 = [Fp::from_i64(-5)];
        let mut bytes = [0u8; 8 * 5];
        let mut at = 0;
        write_body::<()>(&[&y0, &y1], &[&e0], |b| {
            bytes[at..at + b.len()].copy_from_slice(b);
            at += b.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(at, bytes.len());
        let mut body = SliceBody { rest: &bytes };
        let mut pair = [Fp::ZERO; 2];
        body.read(&mut pair).unwrap();
        assert_eq!(pair, [y0[0], e0[0]]);
        body.read(&mut pair).unwrap();
        assert_eq!(pair, [y0[1], e0[1]]);
        let mut one = [Fp::ZERO; 1];
        body.read(&mut one).unwrap();
        assert_eq!(one, y1);
        assert_eq!(body.read(&mut one), Err(TicketFormatError::Truncated));
        let mut body = SliceBody { rest: &[0xff; 8] };
        assert_eq!(body.read(&mut one), Err(TicketFormatError::NotCanonical));
    }
}
