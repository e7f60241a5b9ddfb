//! The protocol messages (DESIGN §4), in the order the protocol uses them.
//!
//! ```text
//! handshake      C->S ClientHello{version, model_id, arch_hash?}
//!                S->C ServerHello{version, arch}  |  Refused{reason}
//! preprocessing  C->S TicketRequest{model_id}
//!                S->C TicketGranted{ticket_id}
//!                C->S HeChunk{round: MaskCiphertexts, ..}*        HeRoundEnd{MaskCiphertexts, blobs}
//!                S->C HeChunk{round: LinearResults, ..}*          HeRoundEnd{LinearResults, blobs}
//!                C->S HeChunk{round: ActivationCiphertexts, ..}*  HeRoundEnd{ActivationCiphertexts, blobs}
//!                S->C HeChunk{round: ProductResults, ..}*         HeRoundEnd{ProductResults, blobs}
//! online         C->S OnlineBegin{ticket_id}  MaskedInput{layer 0, ..}*            (x - r_1)
//!                per square layer i:  S->C ActivationDelta{layer i, ..}*           (d = ys_i - u_i)
//!                                     C->S MaskedActivation{layer i + 1, ..}*      (zc - r_(i+1))
//!                S->C OutputShare{layer L-1, ..}*                                  (ys_L)
//! any time       Error{code, detail}   (then the sender closes the connection)
//!
//! provisioning (host H = `edge-client provision`, board B, over the board's serial link)
//!                H->B ProvisionOffer{model_id, arch_hash, ticket_len, tickets}
//!                B->H ProvisionAccept{tickets}   (how many it has room for; 0 = none)
//!                per accepted ticket k:  H->B TicketBytes{ticket k, ..}*   B->H TicketStored{ticket k}
//! ```
//!
//! Layers are 0-based map indices. HE blobs are opaque here (the HE halves define their
//! contents); a blob is sent as consecutive [`BlobChunk`]s and a round ends with
//! [`Message::HeRoundEnd`] giving the number of blobs, so the receiver knows it has them all.

use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{
    ChunkError, WireError, FIELD_ELEMENT_BYTES, MAX_CHUNK_BYTES, MAX_CHUNK_VALUES, MAX_DETAIL_LEN,
    MAX_MODEL_ID_LEN,
};
use crate::arch::Architecture;
use crate::field::Fp;

/// A ticket identifier, chosen by the server (random, 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TicketId(pub [u8; 16]);

/// Why the server refuses a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The client's protocol version is not supported; the server speaks `supported`.
    UnsupportedVersion { supported: u16 },
    /// The server has no model of that name.
    UnknownModel,
    /// The client's architecture hash differs from the model's.
    ArchitectureMismatch,
    /// The server is at capacity; retry later.
    Busy,
}

/// The four HE messages of preprocessing (DESIGN §4, preprocessing steps 1-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HeRound {
    /// Client -> server: `Enc(r_i)` for every map (coefficient-packed).
    MaskCiphertexts,
    /// Server -> client: `Enc(W_i r_i - s_i)`, noise-flooded.
    LinearResults,
    /// Client -> server: `Enc(yc_i)` for every activation layer (SIMD-packed).
    ActivationCiphertexts,
    /// Server -> client: `Enc(yc_i * u_i - v_i)`.
    ProductResults,
}

/// Machine-readable cause of an [`Message::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A frame or message could not be decoded.
    Malformed,
    /// The message is valid but not expected in the current protocol state.
    UnexpectedMessage,
    /// Unknown model.
    UnknownModel,
    /// Architecture hash mismatch.
    ArchitectureMismatch,
    /// No such ticket.
    UnknownTicket,
    /// The ticket was already used (tickets are single-use).
    TicketReused,
    /// A ciphertext failed validation.
    BadCiphertext,
    /// A chunk is out of order, out of bounds or the wrong length for the layer.
    BadChunk,
    /// A resource limit was hit (memory, tickets, connections).
    ResourceExhausted,
    /// The peer was too slow.
    Timeout,
    /// An internal error of the sender.
    Internal,
}

/// A chunk of an opaque blob (an HE ciphertext): bytes `offset..offset + bytes.len()` of blob
/// number `blob` (of `total_len` bytes) in round `round`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobChunk<'a> {
    pub round: HeRound,
    pub blob: u32,
    pub offset: u32,
    pub total_len: u32,
    #[serde(borrow)]
    pub bytes: &'a [u8],
}

/// A chunk of a vector of field elements: elements `offset..offset + values.len()` of the
/// vector of map `layer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChunk<'a> {
    pub layer: u16,
    pub offset: u32,
    #[serde(borrow)]
    pub values: FieldElems<'a>,
}

/// A run of at most [`MAX_CHUNK_VALUES`] field elements: either borrowed from the sender's
/// `&[Fp]`, or borrowed from a receive buffer as 8-byte little-endian words (validated
/// canonical by [`crate::wire::decode_payload`]).
#[derive(Clone, Copy)]
pub struct FieldElems<'a>(Repr<'a>);

#[derive(Clone, Copy)]
enum Repr<'a> {
    Values(&'a [Fp]),
    Encoded(&'a [u8]),
}

/// Every protocol message. See the module docs for who sends what, when.
// ServerHello carries the architecture by value (~0.9 KiB): without an allocator it cannot be
// boxed, and one message of that size on the stack is fine on the target boards.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// C->S, first message. `arch_hash` is [`Architecture::hash`] of the model the client was
    /// built for, or `None` if it learns the architecture from the [`Message::ServerHello`].
    ClientHello { version: u16, model_id: &'a str, arch_hash: Option<[u8; 32]> },
    /// S->C: accepted; the public architecture of the model.
    ServerHello { version: u16, arch: Architecture },
    /// S->C: handshake refused; the server closes the connection.
    Refused { reason: RefuseReason },
    /// C->S: start preprocessing a new ticket for the model.
    TicketRequest { model_id: &'a str },
    /// S->C: the id under which the server stores its half of the ticket.
    TicketGranted { ticket_id: TicketId },
    /// Either direction: a chunk of an HE ciphertext.
    HeChunk(#[serde(borrow)] BlobChunk<'a>),
    /// Either direction: the sender has sent all `blobs` blobs of `round`.
    HeRoundEnd { round: HeRound, blobs: u32 },
    /// C->S: run an inference with this (single-use) ticket.
    OnlineBegin { ticket_id: TicketId },
    /// C->S: `x - r_1` (layer 0).
    MaskedInput(#[serde(borrow)] FieldChunk<'a>),
    /// S->C: `d = ys_i - u_i` for square layer `i` (the output of map `i`).
    ActivationDelta(#[serde(borrow)] FieldChunk<'a>),
    /// C->S: `zc - r_(i+1)`, the masked input of map `i + 1`.
    MaskedActivation(#[serde(borrow)] FieldChunk<'a>),
    /// S->C: the server's share `ys_L` of the output (the last map).
    OutputShare(#[serde(borrow)] FieldChunk<'a>),
    /// Either direction: a fatal error; the sender closes the connection.
    Error { code: ErrorCode, detail: &'a str },
    /// Provisioner -> board: `tickets` tickets of `ticket_len` bytes each for `model_id`.
    ProvisionOffer { model_id: &'a str, arch_hash: [u8; 32], ticket_len: u32, tickets: u32 },
    /// Board -> provisioner: the board takes the first `tickets` tickets offered.
    ProvisionAccept { tickets: u32 },
    /// Provisioner -> board: bytes `offset..offset + bytes.len()` of ticket number `ticket`.
    TicketBytes {
        ticket: u32,
        offset: u32,
        #[serde(borrow)]
        bytes: &'a [u8],
    },
    /// Board -> provisioner: ticket number `ticket` is stored (the provisioner may delete its copy).
    TicketStored { ticket: u32 },
}

impl<'a> FieldElems<'a> {
    /// Elements to send (at most [`MAX_CHUNK_VALUES`]; [`crate::wire::encode_frame`] refuses
    /// more).
    pub const fn from_values(values: &'a [Fp]) -> FieldElems<'a> {
        FieldElems(Repr::Values(values))
    }

    /// Number of elements (of an encoded run: whole 8-byte words).
    pub fn len(&self) -> usize {
        match self.0 {
            Repr::Values(v) => v.len(),
            Repr::Encoded(b) => b.len() / FIELD_ELEMENT_BYTES,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i`. Values from a decoded message were checked canonical; a non-canonical word
    /// (only reachable by bypassing [`crate::wire::decode_payload`]) is reduced mod p.
    pub fn get(&self, i: usize) -> Option<Fp> {
        match self.0 {
            Repr::Values(v) => v.get(i).copied(),
            Repr::Encoded(b) => {
                let word = b.get(i * FIELD_ELEMENT_BYTES..(i + 1) * FIELD_ELEMENT_BYTES)?;
                Some(Fp::from_u64_reduced(le_word(word)))
            }
        }
    }

    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = Fp> + '_ {
        // One of the two is empty; walking the words directly (no per-element bounds checks)
        // matters on a Cortex-M0+, where this runs for every value received.
        let (values, bytes): (&[Fp], &[u8]) = match self.0 {
            Repr::Values(v) => (v, &[]),
            Repr::Encoded(b) => (&[], b),
        };
        values
            .iter()
            .copied()
            .chain(bytes.chunks_exact(FIELD_ELEMENT_BYTES).map(|w| Fp::from_u64_reduced(le_word(w))))
    }

    /// Check the chunking rules and that every element is canonical.
    pub fn validate(&self) -> Result<(), WireError> {
        match self.0 {
            Repr::Values(v) => {
                if v.len() > MAX_CHUNK_VALUES {
                    return Err(ChunkError::TooLong { len: v.len() }.into());
                }
            }
            Repr::Encoded(b) => {
                if b.len() > MAX_CHUNK_BYTES {
                    return Err(ChunkError::TooLong { len: b.len() / FIELD_ELEMENT_BYTES }.into());
                }
                if b.len() % FIELD_ELEMENT_BYTES != 0 {
                    return Err(ChunkError::Misaligned { len: b.len() }.into());
                }
                for (index, word) in b.chunks_exact(FIELD_ELEMENT_BYTES).enumerate() {
                    let value = le_word(word);
                    if Fp::new(value).is_err() {
                        return Err(WireError::NonCanonical { index, value });
                    }
                }
            }
        }
        Ok(())
    }
}

impl PartialEq for FieldElems<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for FieldElems<'_> {}

impl core::fmt::Debug for FieldElems<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for FieldElems<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Repr::Encoded(b) => serializer.serialize_bytes(b),
            Repr::Values(v) => {
                if v.len() > MAX_CHUNK_VALUES {
                    return Err(serde::ser::Error::custom("field chunk longer than MAX_CHUNK_VALUES"));
                }
                // One contiguous little-endian image of the run, on the stack (1 KiB at most).
                let mut buf = [0u8; MAX_CHUNK_BYTES];
                for (x, out) in v.iter().zip(buf.chunks_exact_mut(FIELD_ELEMENT_BYTES)) {
                    out.copy_from_slice(&x.value().to_le_bytes());
                }
                serializer.serialize_bytes(&buf[..v.len() * FIELD_ELEMENT_BYTES])
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FieldElems<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = &'de [u8];
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a borrowed byte string of little-endian field elements")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(v)
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
                Err(E::custom("field elements must be borrowed from the input"))
            }
        }
        // Length, alignment and canonicity are checked by `Message::validate`, with typed
        // errors (a frame payload is at most MAX_PAYLOAD_SIZE bytes anyway).
        let bytes = deserializer.deserialize_bytes(BytesVisitor)?;
        Ok(FieldElems(Repr::Encoded(bytes)))
    }
}

/// A little-endian 8-byte word (`w` holds at least 8 bytes; shorter input reads as zeros), as
/// two 32-bit halves: cheaper than a byte-wise `u64` on 32-bit targets.
#[inline(always)]
fn le_word(w: &[u8]) -> u64 {
    let b = |i: usize| w.get(i).copied().unwrap_or(0);
    let lo = u32::from_le_bytes([b(0), b(1), b(2), b(3)]);
    let hi = u32::from_le_bytes([b(4), b(5), b(6), b(7)]);
    (u64::from(hi) << 32) | u64::from(lo)
}

fn check_u32_range(offset: u32, len: usize, total: u64) -> Result<(), ChunkError> {
    let end = offset as u64 + len as u64;
    if end > total {
        Err(ChunkError::OutOfBounds { offset: offset as u64, len: len as u64, total })
    } else {
        Ok(())
    }
}

impl BlobChunk<'_> {
    /// Chunking rules: at most [`MAX_CHUNK_BYTES`], inside `total_len`.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.bytes.len() > MAX_CHUNK_BYTES {
            return Err(ChunkError::TooLong { len: self.bytes.len() }.into());
        }
        check_u32_range(self.offset, self.bytes.len(), self.total_len as u64)?;
        Ok(())
    }

    /// Copy this chunk into the blob being reassembled (`dest.len()` = `total_len`).
    pub fn copy_into(&self, dest: &mut [u8]) -> Result<(), WireError> {
        let start = self.offset as usize;
        let end = start.saturating_add(self.bytes.len());
        let len = dest.len();
        let slot = dest.get_mut(start..end).ok_or(WireError::DestinationTooSmall { end, len })?;
        slot.copy_from_slice(self.bytes);
        Ok(())
    }
}

impl FieldChunk<'_> {
    /// Chunking rules and canonical elements; the element range must fit in `u32`.
    pub fn validate(&self) -> Result<(), WireError> {
        self.values.validate()?;
        check_u32_range(self.offset, self.values.len(), u32::MAX as u64 + 1)?;
        Ok(())
    }

    /// Copy the elements into the vector being reassembled, at `offset`.
    pub fn copy_into(&self, dest: &mut [Fp]) -> Result<(), WireError> {
        let start = self.offset as usize;
        let end = start.saturating_add(self.values.len());
        let len = dest.len();
        let slot = dest.get_mut(start..end).ok_or(WireError::DestinationTooSmall { end, len })?;
        for (d, v) in slot.iter_mut().zip(self.values.iter()) {
            *d = v;
        }
        Ok(())
    }
}

fn check_str(s: &str, max: usize, allow_empty: bool) -> Result<(), WireError> {
    if s.len() > max || (!allow_empty && s.is_empty()) {
        Err(WireError::BadString { len: s.len(), max })
    } else {
        Ok(())
    }
}

impl Message<'_> {
    /// Semantic checks beyond what postcard enforces; run by both encode and decode.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            Message::ClientHello { model_id, .. } | Message::TicketRequest { model_id } => {
                check_str(model_id, MAX_MODEL_ID_LEN, false)
            }
            Message::ServerHello { arch, .. } => arch.validate().map_err(WireError::BadArchitecture),
            Message::HeChunk(c) => c.validate(),
            Message::MaskedInput(c)
            | Message::ActivationDelta(c)
            | Message::MaskedActivation(c)
            | Message::OutputShare(c) => c.validate(),
            Message::Error { detail, .. } => check_str(detail, MAX_DETAIL_LEN, true),
            Message::ProvisionOffer { model_id, .. } => check_str(model_id, MAX_MODEL_ID_LEN, false),
            Message::TicketBytes { bytes, .. } if bytes.len() > MAX_CHUNK_BYTES => {
                Err(ChunkError::TooLong { len: bytes.len() }.into())
            }
            Message::Refused { .. }
            | Message::TicketGranted { .. }
            | Message::HeRoundEnd { .. }
            | Message::OnlineBegin { .. }
            | Message::ProvisionAccept { .. }
            | Message::TicketBytes { .. }
            | Message::TicketStored { .. } => Ok(()),
        }
    }
}

/// Split `values` (the vector of map `layer`) into chunks of at most [`MAX_CHUNK_VALUES`].
pub fn field_chunks(layer: u16, values: &[Fp]) -> impl Iterator<Item = FieldChunk<'_>> {
    values.chunks(MAX_CHUNK_VALUES).enumerate().map(move |(i, c)| FieldChunk {
        layer,
        offset: (i * MAX_CHUNK_VALUES) as u32,
        values: FieldElems::from_values(c),
    })
}

/// Split blob number `blob` of `round` into chunks of at most [`MAX_CHUNK_BYTES`]. Blobs are
/// limited to `u32::MAX` bytes; longer input yields no chunk at all (and would be a bug).
pub fn blob_chunks(round: HeRound, blob: u32, bytes: &[u8]) -> impl Iterator<Item = BlobChunk<'_>> {
    let total_len = u32::try_from(bytes.len()).ok();
    let usable = if total_len.is_some() { bytes } else { &[] };
    usable.chunks(MAX_CHUNK_BYTES).enumerate().map(move |(i, c)| BlobChunk {
        round,
        blob,
        offset: (i * MAX_CHUNK_BYTES) as u32,
        total_len: total_len.unwrap_or(0),
        bytes: c,
    })
}
