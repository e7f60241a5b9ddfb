//! Frames: `[version: u16 LE][payload length: u16 LE][payload]`, payload = postcard [`Message`].
//!
//! Two decoders over the same rules: [`decode_frame`] for a contiguous buffer that holds a whole
//! frame, and [`FrameDecoder`], an incremental accumulator for byte streams that is fed whatever
//! the transport delivered and yields complete frames from a fixed internal buffer (no
//! allocation). The accumulator checks version and length as soon as the four header bytes are
//! in, so an oversized or foreign frame is refused before any of its payload is buffered.

use super::message::Message;
use super::{WireError, PROTOCOL_VERSION};

/// Bytes of the frame header.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest payload a frame may declare: a 1 KiB chunk plus room for the chunk header, and more
/// than the largest architecture descriptor a [`Message::ServerHello`] can carry.
pub const MAX_PAYLOAD_SIZE: usize = 1152;
/// Largest whole frame (header + payload): the buffer size an encoder or receiver needs.
pub const MAX_FRAME_SIZE: usize = FRAME_HEADER_LEN + MAX_PAYLOAD_SIZE;

/// Encode `msg` as one frame at the start of `buf`; returns the frame bytes.
///
/// The message is validated first (chunk limits, string lengths, canonical elements, a valid
/// architecture), so whatever encodes also decodes. A buffer of [`MAX_FRAME_SIZE`] bytes always
/// suffices.
pub fn encode_frame<'b>(msg: &Message<'_>, buf: &'b mut [u8]) -> Result<&'b [u8], WireError> {
    msg.validate()?;
    let capacity = buf.len();
    if capacity < FRAME_HEADER_LEN {
        return Err(WireError::BufferTooSmall { capacity });
    }
    let (header, body) = buf.split_at_mut(FRAME_HEADER_LEN);
    let len = match postcard::to_slice(msg, body) {
        Ok(payload) => payload.len(),
        Err(postcard::Error::SerializeBufferFull) => return Err(WireError::BufferTooSmall { capacity }),
        Err(e) => return Err(WireError::Malformed(e)),
    };
    if len > MAX_PAYLOAD_SIZE {
        return Err(WireError::Oversized { len });
    }
    header[..2].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    header[2..].copy_from_slice(&(len as u16).to_le_bytes());
    Ok(&buf[..FRAME_HEADER_LEN + len])
}

/// Check a frame header; returns the payload length.
fn parse_header(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, WireError> {
    let version = u16::from_le_bytes([header[0], header[1]]);
    if version != PROTOCOL_VERSION {
        return Err(WireError::WrongVersion { found: version });
    }
    let len = u16::from_le_bytes([header[2], header[3]]) as usize;
    if len > MAX_PAYLOAD_SIZE {
        return Err(WireError::Oversized { len });
    }
    Ok(len)
}

/// Decode a payload (the bytes after a frame header) into a validated message borrowing from it.
pub fn decode_payload(payload: &[u8]) -> Result<Message<'_>, WireError> {
    let (msg, rest): (Message<'_>, &[u8]) =
        postcard::take_from_bytes(payload).map_err(WireError::Malformed)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes { extra: rest.len() });
    }
    msg.validate()?;
    Ok(msg)
}

/// Decode the frame at the start of `bytes`; returns the message and the bytes after the frame.
pub fn decode_frame(bytes: &[u8]) -> Result<(Message<'_>, &[u8]), WireError> {
    let header: [u8; FRAME_HEADER_LEN] = match bytes.get(..FRAME_HEADER_LEN) {
        Some(h) => [h[0], h[1], h[2], h[3]],
        None => return Err(WireError::Truncated { needed: FRAME_HEADER_LEN, available: bytes.len() }),
    };
    let len = parse_header(header)?;
    let end = FRAME_HEADER_LEN + len;
    let payload = bytes
        .get(FRAME_HEADER_LEN..end)
        .ok_or(WireError::Truncated { needed: end, available: bytes.len() })?;
    Ok((decode_payload(payload)?, &bytes[end..]))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Collecting the header (`filled < FRAME_HEADER_LEN`).
    Header,
    /// Collecting a payload of `len` bytes.
    Payload { len: usize },
    /// A complete frame of `len` payload bytes is in the buffer; the next feed starts over.
    Complete { len: usize },
    /// A header was refused; the stream cannot be resynchronised.
    Failed(WireError),
}

/// Incremental frame accumulator for a byte stream.
///
/// ```
/// # use core_nostd::wire::{encode_frame, FrameDecoder, Message, TicketId, MAX_FRAME_SIZE};
/// let mut out = [0u8; MAX_FRAME_SIZE];
/// let frame = encode_frame(&Message::OnlineBegin { ticket_id: TicketId([3; 16]) }, &mut out).unwrap();
/// let mut decoder = FrameDecoder::new();
/// let mut input: &[u8] = frame;
/// let mut seen = 0;
/// while !input.is_empty() {
///     if let Some(msg) = decoder.next_message(&mut input).unwrap() {
///         assert_eq!(msg, Message::OnlineBegin { ticket_id: TicketId([3; 16]) });
///         seen += 1;
///     }
/// }
/// assert_eq!(seen, 1);
/// ```
///
/// After an error (wrong version, oversized length) the decoder keeps returning that error:
/// the connection must be closed (or the decoder [`reset`](FrameDecoder::reset) for a new one).
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    buf: [u8; MAX_FRAME_SIZE],
    filled: usize,
    state: State,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    pub const fn new() -> FrameDecoder {
        FrameDecoder { buf: [0; MAX_FRAME_SIZE], filled: 0, state: State::Header }
    }

    /// Forget any partial frame and any error.
    pub fn reset(&mut self) {
        self.filled = 0;
        self.state = State::Header;
    }

    /// Bytes of the current partial frame held in the buffer.
    pub fn buffered(&self) -> usize {
        match self.state {
            State::Complete { .. } | State::Failed(_) => 0,
            _ => self.filled,
        }
    }

    /// Bytes still missing from the current header or payload (a header's worth between frames).
    /// A driver that reads at most this many never reads past a frame, so its reads follow the
    /// frames exactly: deterministic call patterns, and no bytes left over between steps.
    pub fn wanted(&self) -> usize {
        match self.state {
            State::Header => FRAME_HEADER_LEN - self.filled,
            State::Payload { len } => FRAME_HEADER_LEN + len - self.filled,
            State::Complete { .. } | State::Failed(_) => FRAME_HEADER_LEN,
        }
    }

    /// Consume bytes from the front of `input` (advancing it) until a frame is complete; returns
    /// its payload, or `None` once `input` is exhausted with the frame still partial. Bytes after
    /// a complete frame stay in `input` for the next call.
    pub fn feed<'s>(&'s mut self, input: &mut &[u8]) -> Result<Option<&'s [u8]>, WireError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        if let State::Complete { .. } = self.state {
            self.reset();
        }
        loop {
            let target = match self.state {
                State::Header => FRAME_HEADER_LEN,
                State::Payload { len } => FRAME_HEADER_LEN + len,
                // Unreachable by the checks above; kept total without panicking.
                State::Complete { .. } | State::Failed(_) => return Ok(None),
            };
            let take = (target - self.filled).min(input.len());
            self.buf[self.filled..self.filled + take].copy_from_slice(&input[..take]);
            self.filled += take;
            *input = &input[take..];
            if self.filled < target {
                return Ok(None);
            }
            match self.state {
                State::Header => {
                    let header = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
                    match parse_header(header) {
                        Ok(len) => self.state = State::Payload { len },
                        Err(e) => {
                            self.state = State::Failed(e.clone());
                            return Err(e);
                        }
                    }
                }
                State::Payload { len } => {
                    self.state = State::Complete { len };
                    return Ok(Some(&self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]));
                }
                State::Complete { .. } | State::Failed(_) => return Ok(None),
            }
        }
    }

    /// [`feed`](FrameDecoder::feed), then decode the completed payload.
    pub fn next_message<'s>(&'s mut self, input: &mut &[u8]) -> Result<Option<Message<'s>>, WireError> {
        match self.feed(input)? {
            Some(payload) => decode_payload(payload).map(Some),
            None => Ok(None),
        }
    }
}
