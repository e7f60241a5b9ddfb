//! THE wire format of the protocol, defined once for both parties (DESIGN §4-5).
//!
//! # Layers
//!
//! * [`message`]: the [`Message`] enum, serialised with `postcard` (compact, `no_std`, borrows
//!   strings and byte/element runs straight out of the receive buffer, so a microcontroller
//!   decodes without an allocator). Variant order is part of the format: changing it, or any
//!   field, bumps [`PROTOCOL_VERSION`].
//! * [`frame`]: length-prefixed frames, `[version: u16 LE][payload length: u16 LE][payload]`,
//!   payload at most [`MAX_PAYLOAD_SIZE`] bytes. A length prefix rather than COBS: the transports
//!   (TCP on hosts, embassy-net TCP on the boards) are reliable byte streams, so resynchronising
//!   after corruption is not needed (a bad frame ends the connection), and a prefix lets the
//!   receiver refuse an oversized frame from its first four bytes, before buffering anything.
//!   The version in every frame makes a peer speaking another version fail on its first frame
//!   with [`WireError::WrongVersion`] instead of misparsing it.
//! * Long vectors (HE ciphertexts, activation vectors) travel as chunks of at most
//!   [`MAX_CHUNK_BYTES`] = 1 KiB of payload, which a microcontroller can buffer: field elements
//!   as fixed 8-byte little-endian words ([`MAX_CHUNK_VALUES`] = 128 per chunk), validated
//!   canonical (`< p`) on decode.
//!
//! Every decoding failure is a typed [`WireError`], never a panic: garbage
//! ([`WireError::Malformed`]), truncated ([`WireError::Truncated`]), oversized
//! ([`WireError::Oversized`]), wrong version, non-canonical field element, malformed chunk.
//! Encoding runs the same validation, so a peer can never produce what the other side rejects.

pub mod frame;
pub mod message;

#[cfg(test)]
mod tests;

pub use frame::{
    decode_frame, decode_payload, encode_frame, FrameDecoder, FRAME_HEADER_LEN, MAX_FRAME_SIZE,
    MAX_PAYLOAD_SIZE,
};
pub use message::{
    blob_chunks, field_chunks, BlobChunk, ErrorCode, FieldChunk, FieldElems, HeRound, Message, RefuseReason,
    TicketId,
};

use crate::arch::ArchError;

/// Version of the wire format; carried in every frame header and in the hellos.
pub const PROTOCOL_VERSION: u16 = 1;
/// Most payload bytes in one chunk of a long vector or blob.
pub const MAX_CHUNK_BYTES: usize = 1024;
/// Bytes of one field element on the wire (little-endian `u64`).
pub const FIELD_ELEMENT_BYTES: usize = 8;
/// Most field elements in one chunk.
pub const MAX_CHUNK_VALUES: usize = MAX_CHUNK_BYTES / FIELD_ELEMENT_BYTES;
/// Longest human-readable detail of an [`Message::Error`].
pub const MAX_DETAIL_LEN: usize = 128;
/// Longest model identifier on the wire (same limit as the architecture descriptor).
pub const MAX_MODEL_ID_LEN: usize = crate::arch::MAX_MODEL_ID;

/// What is wrong with a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// More than [`MAX_CHUNK_BYTES`] bytes (or [`MAX_CHUNK_VALUES`] elements).
    TooLong { len: usize },
    /// A field-element run whose byte length is not a multiple of 8.
    Misaligned { len: usize },
    /// `offset + len` exceeds the declared total or `u32`.
    OutOfBounds { offset: u64, len: u64, total: u64 },
}

/// Every way encoding or decoding can fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the frame header or its declared payload length.
    Truncated { needed: usize, available: usize },
    /// The length prefix (or an encoded message) exceeds [`MAX_PAYLOAD_SIZE`].
    Oversized { len: usize },
    /// The frame carries another protocol version.
    WrongVersion { found: u16 },
    /// The payload is not a valid postcard [`Message`] (garbage).
    Malformed(postcard::Error),
    /// The payload has bytes after a complete message.
    TrailingBytes { extra: usize },
    /// Field element number `index` of a chunk is `>= p`.
    NonCanonical { index: usize, value: u64 },
    /// A chunk violates the chunking rules.
    BadChunk(ChunkError),
    /// A string field is longer than its limit (or empty where a name is required).
    BadString { len: usize, max: usize },
    /// The architecture in a [`Message::ServerHello`] does not validate.
    BadArchitecture(ArchError),
    /// The caller's buffer is too small to hold the encoded frame.
    BufferTooSmall { capacity: usize },
    /// A chunk does not fit the destination vector it is copied into.
    DestinationTooSmall { end: usize, len: usize },
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Truncated { needed, available } => {
                write!(f, "truncated frame: need {needed} bytes, have {available}")
            }
            WireError::Oversized { len } => {
                write!(f, "frame payload of {len} bytes exceeds the maximum of {MAX_PAYLOAD_SIZE}")
            }
            WireError::WrongVersion { found } => {
                write!(f, "peer speaks protocol version {found}, this side speaks {PROTOCOL_VERSION}")
            }
            WireError::Malformed(e) => write!(f, "malformed message: {e}"),
            WireError::TrailingBytes { extra } => write!(f, "{extra} bytes after the message"),
            WireError::NonCanonical { index, value } => {
                write!(f, "field element {index} of the chunk ({value}) is not below p")
            }
            WireError::BadChunk(c) => write!(f, "bad chunk: {c:?}"),
            WireError::BadString { len, max } => write!(f, "string of {len} bytes (limit {max})"),
            WireError::BadArchitecture(e) => write!(f, "invalid architecture: {e}"),
            WireError::BufferTooSmall { capacity } => {
                write!(f, "encode buffer of {capacity} bytes is too small")
            }
            WireError::DestinationTooSmall { end, len } => {
                write!(f, "chunk ends at element {end}, destination holds {len}")
            }
        }
    }
}

impl From<ChunkError> for WireError {
    fn from(e: ChunkError) -> Self {
        WireError::BadChunk(e)
    }
}
