//! The client's whole conversation with the server, sans I/O: handshake, then any number of
//! online inferences, each with one ticket (DESIGN §4, online stage).
//!
//! [`crate::client::OnlineClient`] is the arithmetic of one inference; this module adds the
//! frames around it, so that every client (a board over embassy-net, the emulated board over a
//! UART, a host) runs the same protocol code and only moves bytes. In the style of rustls'
//! `Connection`: the caller pulls frames to send with [`ClientSession::poll_transmit`] and pushes
//! received bytes with [`ClientSession::receive`]; [`blocking`] and [`asynch`] are the two
//! ten-line loops that do this over `embedded-io` / `embedded-io-async` links.
//!
//! ```text
//! Hello --(ClientHello sent)--> AwaitingServerHello --(ServerHello, arch hash checked)--> Ready
//! Ready --start(ticket, input)--> Running --(all logits received)--> Ready (logits available)
//! any error --> Failed (terminal: close the link; the ticket in use is spent)
//! ```
//!
//! Working set: the frame decoder (one frame, 1.2 KB), one chunk of values (1 KB), the
//! architecture (~0.9 KB), the logits, plus the caller's receive and frame buffers. The ticket
//! body and the input are streams (flash on a board), never copied whole.

use crate::arch::{Architecture, MAX_MODEL_ID};
use crate::client::{ClientError, ClientState, OnlineClient};
use crate::field::Fp;
use crate::fixed_point::encode_pixel;
use crate::ticket::{TicketBody, TicketHeader};
use crate::wire::{
    encode_frame, ErrorCode, FieldChunk, FieldElems, FrameDecoder, Message, RefuseReason, TicketId,
    WireError, MAX_CHUNK_VALUES, MAX_DETAIL_LEN, PROTOCOL_VERSION,
};

/// Most logits a session holds (the bundled models have 10).
pub const MAX_LOGITS: usize = 64;

/// The client's input, read chunk by chunk when it is masked.
pub trait InputSource {
    /// Number of elements.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Write elements `offset..offset + out.len()`, encoded with `frac_bits` fraction bits.
    fn read(&mut self, offset: usize, out: &mut [Fp], frac_bits: u32);
}

/// An input already encoded in the field.
impl InputSource for &[Fp] {
    fn len(&self) -> usize {
        <[Fp]>::len(self)
    }

    fn read(&mut self, offset: usize, out: &mut [Fp], _frac_bits: u32) {
        for (o, x) in out.iter_mut().zip(self.iter().skip(offset)) {
            *o = *x;
        }
    }
}

/// An 8-bit image (a camera frame, a Fashion-MNIST picture), encoded as `pixel / 255` exactly as
/// every client encodes it ([`encode_pixel`]), so a board needs one byte per pixel, not eight.
#[derive(Clone, Copy, Debug)]
pub struct PixelInput<'a> {
    pixels: &'a [u8],
}

impl<'a> PixelInput<'a> {
    pub const fn new(pixels: &'a [u8]) -> PixelInput<'a> {
        PixelInput { pixels }
    }
}

impl InputSource for PixelInput<'_> {
    fn len(&self) -> usize {
        self.pixels.len()
    }

    fn read(&mut self, offset: usize, out: &mut [Fp], frac_bits: u32) {
        for (o, &p) in out.iter_mut().zip(self.pixels.iter().skip(offset)) {
            *o = encode_pixel(p, frac_bits);
        }
    }
}

/// Where the session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// The handshake is not complete.
    Handshaking,
    /// The architecture is known; an inference can start.
    Ready,
    /// An inference is running.
    Running(ClientState),
    /// Terminal: close the link.
    Failed,
}

/// What a call to [`ClientSession::receive`] completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing complete yet (a partial frame, or a message that needs no answer).
    Pending,
    /// A message was processed; [`ClientSession::poll_transmit`] may have a frame to send.
    Progress,
    /// The handshake completed: [`ClientSession::architecture`] is known.
    Ready,
    /// The inference completed: [`ClientSession::logits`] holds the result.
    Output,
}

/// Why the session failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// A frame could not be decoded or encoded.
    Wire(WireError),
    /// The online machine refused a message or the ticket.
    Client(ClientError),
    /// The server refused the handshake.
    Refused(RefuseReason),
    /// The server reported an error and closed the connection.
    Server(ErrorCode),
    /// The server's architecture does not hash to the one the ticket was made for.
    ArchitectureMismatch,
    /// The server speaks another protocol version.
    WrongVersion(u16),
    /// A message that does not fit the session state.
    UnexpectedMessage,
    /// `start` while not [`SessionState::Ready`], or a model name too long.
    NotReady,
    /// The input length differs from the model's.
    InputLength { expected: usize, found: usize },
    /// The model has more than [`MAX_LOGITS`] outputs.
    TooManyLogits(usize),
}

impl From<WireError> for SessionError {
    fn from(e: WireError) -> Self {
        SessionError::Wire(e)
    }
}

impl From<ClientError> for SessionError {
    fn from(e: ClientError) -> Self {
        SessionError::Client(e)
    }
}

impl core::fmt::Display for SessionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SessionError::Wire(e) => write!(f, "wire: {e}"),
            SessionError::Client(e) => write!(f, "client: {e}"),
            SessionError::Refused(r) => write!(f, "server refused the handshake: {r:?}"),
            SessionError::Server(c) => write!(f, "server error: {c:?}"),
            SessionError::ArchitectureMismatch => {
                write!(f, "the server's architecture is not the one the ticket was made for")
            }
            SessionError::WrongVersion(v) => write!(f, "server speaks protocol version {v}"),
            SessionError::UnexpectedMessage => write!(f, "message does not fit the session state"),
            SessionError::NotReady => write!(f, "the session cannot start an inference now"),
            SessionError::InputLength { expected, found } => {
                write!(f, "input has {found} elements, the model expects {expected}")
            }
            SessionError::TooManyLogits(n) => write!(f, "{n} logits exceed the limit of {MAX_LOGITS}"),
        }
    }
}

/// Where an inference stands between frames.
struct Running<B, I> {
    client: OnlineClient<Architecture, B>,
    input: I,
    begin_sent: bool,
    /// A `MaskedActivation` chunk waiting to be sent: (layer, offset, length in `values`).
    reply: Option<(u16, u32, usize)>,
}

enum Phase<B, I> {
    Hello,
    AwaitingServerHello,
    Ready(Architecture),
    Running(Running<B, I>),
    Failed,
}

/// The client side of one connection. `B` streams ticket bodies, `I` is the input type.
pub struct ClientSession<B, I> {
    model_id: heapless::String<MAX_MODEL_ID>,
    arch_hash: [u8; 32],
    phase: Phase<B, I>,
    decoder: FrameDecoder,
    values: [Fp; MAX_CHUNK_VALUES],
    logits: heapless::Vec<Fp, MAX_LOGITS>,
    logits_ready: bool,
    /// The text of the server's last `Error` message (for the user; the code is in the error).
    server_detail: heapless::String<MAX_DETAIL_LEN>,
}

impl<B, I> core::fmt::Debug for ClientSession<B, I> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientSession").field("model_id", &self.model_id).finish_non_exhaustive()
    }
}

impl<B: TicketBody, I: InputSource> ClientSession<B, I> {
    /// A session for `model_id`, pinned to the architecture hash its tickets were made for
    /// (a ticket's [`TicketHeader::arch_hash`]): the server refuses a different model, and the
    /// session refuses a server whose architecture does not hash to the pin.
    pub fn new(model_id: &str, arch_hash: [u8; 32]) -> Result<Self, SessionError> {
        let model_id = heapless::String::try_from(model_id).map_err(|_| SessionError::NotReady)?;
        Ok(ClientSession {
            model_id,
            arch_hash,
            phase: Phase::Hello,
            decoder: FrameDecoder::new(),
            values: [Fp::ZERO; MAX_CHUNK_VALUES],
            logits: heapless::Vec::new(),
            logits_ready: false,
            server_detail: heapless::String::new(),
        })
    }

    /// A session on a connection whose handshake is already done (a host client that asked for
    /// the architecture itself): starts [`SessionState::Ready`].
    pub fn with_architecture(arch: Architecture) -> Result<Self, SessionError> {
        let mut s = ClientSession::new(&arch.model_id, arch.hash())?;
        s.phase = Phase::Ready(arch);
        Ok(s)
    }

    /// The explanation the server sent with its last `Error` message (empty if none).
    pub fn server_detail(&self) -> &str {
        &self.server_detail
    }

    pub fn state(&self) -> SessionState {
        match &self.phase {
            Phase::Hello | Phase::AwaitingServerHello => SessionState::Handshaking,
            Phase::Ready(_) => SessionState::Ready,
            Phase::Running(r) => SessionState::Running(r.client.state()),
            Phase::Failed => SessionState::Failed,
        }
    }

    /// The model's architecture, once the handshake is complete.
    pub fn architecture(&self) -> Option<&Architecture> {
        match &self.phase {
            Phase::Ready(a) => Some(a),
            Phase::Running(r) => Some(r.client.architecture()),
            _ => None,
        }
    }

    /// The logits (fixed point) of the last completed inference.
    pub fn logits(&self) -> Option<&[Fp]> {
        self.logits_ready.then_some(&self.logits[..])
    }

    /// Start an inference of `input` with a ticket. The caller must have made the ticket
    /// unusable for a second inference (burnt it in flash) before: tickets are single-use.
    pub fn start(&mut self, header: TicketHeader, body: B, input: I) -> Result<(), SessionError> {
        let Phase::Ready(arch) = core::mem::replace(&mut self.phase, Phase::Failed) else {
            return Err(SessionError::NotReady);
        };
        if input.len() != arch.input_len() {
            let e = SessionError::InputLength { expected: arch.input_len(), found: input.len() };
            self.phase = Phase::Ready(arch);
            return Err(e);
        }
        let outputs = arch.output_len();
        if outputs > MAX_LOGITS {
            self.phase = Phase::Ready(arch);
            return Err(SessionError::TooManyLogits(outputs));
        }
        // A ticket made for another model leaves the session usable for the next ticket.
        if let Err(e) = header.check_model(&arch) {
            self.phase = Phase::Ready(arch);
            return Err(SessionError::Client(e.into()));
        }
        let client = OnlineClient::new(arch, header, body)?;
        self.logits.clear();
        self.logits.resize(outputs, Fp::ZERO).map_err(|_| SessionError::TooManyLogits(outputs))?;
        self.logits_ready = false;
        self.phase = Phase::Running(Running { client, input, begin_sent: false, reply: None });
        Ok(())
    }

    /// The next frame to send, encoded into `buf` (at least [`crate::wire::MAX_FRAME_SIZE`]
    /// bytes), or `None` when the session waits for the server.
    pub fn poll_transmit<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, SessionError> {
        let result = self.next_frame(buf);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn next_frame<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, SessionError> {
        match &mut self.phase {
            Phase::Hello => {
                let msg = Message::ClientHello {
                    version: PROTOCOL_VERSION,
                    model_id: &self.model_id,
                    arch_hash: Some(self.arch_hash),
                };
                let frame = encode_frame(&msg, buf)?;
                self.phase = Phase::AwaitingServerHello;
                Ok(Some(frame))
            }
            Phase::Running(run) => {
                if !run.begin_sent {
                    run.begin_sent = true;
                    let msg = Message::OnlineBegin { ticket_id: TicketId(run.client.ticket_id()) };
                    return Ok(Some(encode_frame(&msg, buf)?));
                }
                if let Some((layer, offset, n)) = run.reply.take() {
                    let values = FieldElems::from_values(&self.values[..n]);
                    let msg = Message::MaskedActivation(FieldChunk { layer, offset, values });
                    return Ok(Some(encode_frame(&msg, buf)?));
                }
                if let ClientState::SendingInput { offset } = run.client.state() {
                    let arch = run.client.architecture();
                    let n = (arch.input_len() - offset).min(MAX_CHUNK_VALUES);
                    let frac_bits = u32::from(arch.frac_bits);
                    let mut x = [Fp::ZERO; MAX_CHUNK_VALUES];
                    run.input.read(offset, &mut x[..n], frac_bits);
                    let offset = run.client.mask_input(&x[..n], &mut self.values)?;
                    let values = FieldElems::from_values(&self.values[..n]);
                    let msg = Message::MaskedInput(FieldChunk { layer: 0, offset: offset as u32, values });
                    return Ok(Some(encode_frame(&msg, buf)?));
                }
                Ok(None)
            }
            Phase::AwaitingServerHello | Phase::Ready(_) | Phase::Failed => Ok(None),
        }
    }

    /// How many bytes to read next at most: the rest of the frame being received.
    pub fn wanted(&self) -> usize {
        self.decoder.wanted()
    }

    /// Consume received bytes from the front of `bytes` (advancing it) up to and including at
    /// most one complete message, and process it. Call [`poll_transmit`](Self::poll_transmit)
    /// until it returns `None` before the next call: an answer waits there.
    pub fn receive(&mut self, bytes: &mut &[u8]) -> Result<Event, SessionError> {
        if matches!(self.phase, Phase::Failed) {
            return Err(SessionError::UnexpectedMessage);
        }
        if matches!(&self.phase, Phase::Running(r) if r.reply.is_some()) {
            // The previous answer was not sent yet; its buffer is still in use.
            return Ok(Event::Pending);
        }
        let result = self.receive_one(bytes);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn receive_one(&mut self, bytes: &mut &[u8]) -> Result<Event, SessionError> {
        let Some(msg) = self.decoder.next_message(bytes)? else {
            return Ok(Event::Pending);
        };
        match msg {
            Message::Error { code, detail } => {
                // `decode_payload` checked the length against MAX_DETAIL_LEN.
                self.server_detail = heapless::String::try_from(detail).unwrap_or_default();
                return Err(SessionError::Server(code));
            }
            Message::Refused { reason } => return Err(SessionError::Refused(reason)),
            _ => {}
        }
        match &mut self.phase {
            Phase::AwaitingServerHello => {
                let Message::ServerHello { version, arch } = msg else {
                    return Err(SessionError::UnexpectedMessage);
                };
                if version != PROTOCOL_VERSION {
                    return Err(SessionError::WrongVersion(version));
                }
                // `decode_payload` validated the descriptor; the hash pins it to the tickets.
                if arch.hash() != self.arch_hash {
                    return Err(SessionError::ArchitectureMismatch);
                }
                self.phase = Phase::Ready(arch);
                Ok(Event::Ready)
            }
            Phase::Running(run) => match msg {
                Message::ActivationDelta(chunk) => {
                    // Decoding checked the chunk holds at most MAX_CHUNK_VALUES canonical values.
                    let mut d = [Fp::ZERO; MAX_CHUNK_VALUES];
                    let n = chunk.values.len().min(MAX_CHUNK_VALUES);
                    for (slot, v) in d.iter_mut().zip(chunk.values.iter()) {
                        *slot = v;
                    }
                    let (layer, offset) = (chunk.layer as usize, chunk.offset as usize);
                    run.client.on_square_masks(layer, offset, &d[..n], &mut self.values)?;
                    let next = u16::try_from(layer + 1).map_err(|_| SessionError::UnexpectedMessage)?;
                    run.reply = Some((next, chunk.offset, n));
                    Ok(Event::Progress)
                }
                Message::OutputShare(chunk) => {
                    if chunk.layer as usize + 1 != run.client.architecture().maps.len() {
                        return Err(SessionError::UnexpectedMessage);
                    }
                    let mut ys = [Fp::ZERO; MAX_CHUNK_VALUES];
                    let n = chunk.values.len().min(MAX_CHUNK_VALUES);
                    for (slot, v) in ys.iter_mut().zip(chunk.values.iter()) {
                        *slot = v;
                    }
                    let done = run.client.on_output(chunk.offset as usize, &ys[..n], &mut self.logits)?;
                    if !done {
                        return Ok(Event::Progress);
                    }
                    let Phase::Running(run) = core::mem::replace(&mut self.phase, Phase::Failed) else {
                        return Err(SessionError::UnexpectedMessage);
                    };
                    self.phase = Phase::Ready(run.client.into_architecture());
                    self.logits_ready = true;
                    Ok(Event::Output)
                }
                _ => Err(SessionError::UnexpectedMessage),
            },
            Phase::Hello | Phase::Ready(_) | Phase::Failed => Err(SessionError::UnexpectedMessage),
        }
    }
}

/// Why a driven session stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriveError<E> {
    /// The link failed.
    Link(E),
    /// The link closed before the session finished.
    Closed,
    /// The session failed.
    Session(SessionError),
    /// The server sent bytes after the message that completed the step.
    TrailingData,
}

impl<E> From<SessionError> for DriveError<E> {
    fn from(e: SessionError) -> Self {
        DriveError::Session(e)
    }
}

impl<E: core::fmt::Debug> core::fmt::Display for DriveError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DriveError::Link(e) => write!(f, "link: {e:?}"),
            DriveError::Closed => write!(f, "the server closed the connection"),
            DriveError::Session(e) => write!(f, "{e}"),
            DriveError::TrailingData => write!(f, "unexpected bytes from the server"),
        }
    }
}

/// The two drivers, written once: `$io` is `embedded_io` or `embedded_io_async`, and the optional
/// `async` / `.await` tokens make the async variant.
macro_rules! session_drivers {
    ($io:ident, $($async:ident)?, $($await:tt)*) => {
        use $io::{Read, Write};

        use super::{ClientSession, DriveError, Event, InputSource};
        use crate::arch::Architecture;
        use crate::field::Fp;
        use crate::ticket::{TicketBody, TicketHeader};
        use crate::wire::MAX_FRAME_SIZE;

        /// Send what the session has to send, then feed it received bytes until `until`
        /// happens. Reads ask for at most the rest of the current frame
        /// ([`ClientSession::wanted`]).
        $($async)? fn run<L: Read + Write, B: TicketBody, I: InputSource>(
            session: &mut ClientSession<B, I>,
            link: &mut L,
            rx: &mut [u8],
            until: Event,
        ) -> Result<(), DriveError<L::Error>> {
            let mut tx = [0u8; MAX_FRAME_SIZE];
            let mut filled = 0;
            let mut consumed = 0;
            loop {
                while let Some(frame) = session.poll_transmit(&mut tx)? {
                    link.write_all(frame) $($await)* .map_err(DriveError::Link)?;
                }
                if consumed == filled {
                    link.flush() $($await)* .map_err(DriveError::Link)?;
                    let want = session.wanted().min(rx.len());
                    filled = link.read(&mut rx[..want]) $($await)* .map_err(DriveError::Link)?;
                    consumed = 0;
                    if filled == 0 {
                        return Err(DriveError::Closed);
                    }
                }
                let mut pending = &rx[consumed..filled];
                let event = session.receive(&mut pending)?;
                consumed = filled - pending.len();
                if event == until {
                    return if consumed == filled { Ok(()) } else { Err(DriveError::TrailingData) };
                }
            }
        }

        /// Run the handshake; returns the model's architecture.
        pub $($async)? fn handshake<'s, L: Read + Write, B: TicketBody, I: InputSource>(
            session: &'s mut ClientSession<B, I>,
            link: &mut L,
            rx: &mut [u8],
        ) -> Result<&'s Architecture, DriveError<L::Error>> {
            run(session, link, rx, Event::Ready) $($await)* ?;
            session.architecture().ok_or(DriveError::Closed)
        }

        /// Run one inference of `input` with a ticket (already burnt by the caller); returns
        /// the logits.
        pub $($async)? fn infer<'s, L: Read + Write, B: TicketBody, I: InputSource>(
            session: &'s mut ClientSession<B, I>,
            link: &mut L,
            header: TicketHeader,
            body: B,
            input: I,
            rx: &mut [u8],
        ) -> Result<&'s [Fp], DriveError<L::Error>> {
            session.start(header, body, input)?;
            run(session, link, rx, Event::Output) $($await)* ?;
            session.logits().ok_or(DriveError::Closed)
        }
    };
}

/// The drivers over blocking `embedded-io` links (a UART, a host socket through
/// `embedded-io-adapters`).
pub mod blocking {
    session_drivers!(embedded_io,,);
}

/// The same drivers over `embedded-io-async` links (embassy-net's `TcpSocket`).
#[cfg(feature = "async")]
pub mod asynch {
    session_drivers!(embedded_io_async, async, .await);
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::ticket::{ticket_len, SliceBody};
    use crate::wire::{decode_frame, MAX_FRAME_SIZE};

    /// The client machine's test model: dense 3 -> 2, square, dense 2 -> 1.
    fn arch() -> Architecture {
        crate::client::tests::arch()
    }

    fn ticket(a: &Architecture, id: u8) -> Vec<u8> {
        let h = TicketHeader { arch_hash: a.hash(), ticket_id: [id; 16], seed: [id; 32] };
        let mut t = h.to_bytes().to_vec();
        while t.len() < ticket_len(a) {
            t.extend_from_slice(&5u64.to_le_bytes());
        }
        t
    }

    fn frame(msg: &Message<'_>) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME_SIZE];
        encode_frame(msg, &mut buf).unwrap().to_vec()
    }

    type Session<'t> = ClientSession<SliceBody<'t>, &'static [Fp]>;

    /// Every frame the session has to send, decoded to a short description.
    fn drain(s: &mut Session<'_>) -> Vec<std::string::String> {
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_FRAME_SIZE];
        while let Some(f) = s.poll_transmit(&mut buf).unwrap() {
            let (msg, rest) = decode_frame(f).unwrap();
            assert!(rest.is_empty());
            out.push(match msg {
                Message::ClientHello { .. } => "hello".into(),
                Message::OnlineBegin { ticket_id } => std::format!("begin {}", ticket_id.0[0]),
                Message::MaskedInput(c) => std::format!("input {} {} {}", c.layer, c.offset, c.values.len()),
                Message::MaskedActivation(c) => {
                    std::format!("act {} {} {}", c.layer, c.offset, c.values.len())
                }
                other => std::format!("{other:?}"),
            });
        }
        out
    }

    fn feed(s: &mut Session<'_>, bytes: &[u8]) -> Result<Event, SessionError> {
        let mut rest = bytes;
        let mut last = Event::Pending;
        while !rest.is_empty() {
            last = s.receive(&mut rest)?;
        }
        Ok(last)
    }

    fn ready<'t>(a: &Architecture) -> Session<'t> {
        let mut s = Session::new("t", a.hash()).unwrap();
        assert_eq!(drain(&mut s), ["hello"]);
        let hello = frame(&Message::ServerHello { version: PROTOCOL_VERSION, arch: a.clone() });
        assert_eq!(feed(&mut s, &hello), Ok(Event::Ready));
        assert_eq!(s.state(), SessionState::Ready);
        s
    }

    static X: [Fp; 3] = [Fp::ZERO; 3];

    #[test]
    fn two_inferences_on_one_connection() {
        let a = arch();
        let tickets = [ticket(&a, 1), ticket(&a, 2)];
        let mut s = ready(&a);
        for (t, id) in tickets.iter().zip([1u8, 2]) {
            let header = TicketHeader::from_bytes(t).unwrap();
            s.start(header, SliceBody::of_ticket(t).unwrap(), &X[..]).unwrap();
            assert_eq!(drain(&mut s), [std::format!("begin {id}"), "input 0 0 3".into()]);
            // The server's d for square layer 0 in two chunks, each answered at once.
            let d = [Fp::from_i64(3)];
            for offset in 0..2 {
                let c = FieldChunk { layer: 0, offset, values: FieldElems::from_values(&d) };
                assert_eq!(feed(&mut s, &frame(&Message::ActivationDelta(c))), Ok(Event::Progress));
                assert_eq!(drain(&mut s), [std::format!("act 1 {offset} 1")]);
            }
            let c = FieldChunk { layer: 1, offset: 0, values: FieldElems::from_values(&d) };
            assert_eq!(feed(&mut s, &frame(&Message::OutputShare(c))), Ok(Event::Output));
            // yc_L (5, from the ticket) + ys_L (3).
            assert_eq!(s.logits(), Some(&[Fp::from_i64(8)][..]));
            assert_eq!(s.state(), SessionState::Ready);
        }
    }

    #[test]
    fn hostile_or_mismatched_servers_fail_the_session() {
        let a = arch();
        let mut other = arch();
        other.frac_bits = 7;
        let cases: [(Vec<u8>, SessionError); 4] = [
            (
                frame(&Message::ServerHello { version: PROTOCOL_VERSION, arch: other }),
                SessionError::ArchitectureMismatch,
            ),
            (
                frame(&Message::Refused { reason: RefuseReason::Busy }),
                SessionError::Refused(RefuseReason::Busy),
            ),
            (
                frame(&Message::Error { code: ErrorCode::Internal, detail: "x" }),
                SessionError::Server(ErrorCode::Internal),
            ),
            (frame(&Message::TicketStored { ticket: 0 }), SessionError::UnexpectedMessage),
        ];
        for (bytes, want) in cases {
            let mut s = Session::new("t", a.hash()).unwrap();
            drain(&mut s);
            assert_eq!(feed(&mut s, &bytes), Err(want));
            assert_eq!(s.state(), SessionState::Failed);
            assert!(drain(&mut s).is_empty(), "a failed session sends nothing");
        }
        // Garbage instead of a frame.
        let mut s = Session::new("t", a.hash()).unwrap();
        drain(&mut s);
        assert!(matches!(feed(&mut s, &[0xFF; 16]), Err(SessionError::Wire(_))));
    }

    #[test]
    fn out_of_order_chunks_and_wrong_tickets_are_refused() {
        let a = arch();
        let mut s = ready(&a);
        // A ticket of another architecture: refused, and the session stays usable.
        let mut wrong = ticket(&a, 1);
        wrong[8] ^= 1;
        let header = TicketHeader::from_bytes(&wrong).unwrap();
        assert!(s.start(header, SliceBody::of_ticket(&wrong).unwrap(), &X[..]).is_err());
        assert_eq!(s.state(), SessionState::Ready);
        // Wrong input length.
        let t = ticket(&a, 2);
        let header = TicketHeader::from_bytes(&t).unwrap();
        assert_eq!(
            s.start(header, SliceBody::of_ticket(&t).unwrap(), &X[..2]),
            Err(SessionError::InputLength { expected: 3, found: 2 })
        );
        s.start(header, SliceBody::of_ticket(&t).unwrap(), &X[..]).unwrap();
        drain(&mut s);
        let d = [Fp::ONE];
        let c = FieldChunk { layer: 0, offset: 1, values: FieldElems::from_values(&d) };
        assert_eq!(
            feed(&mut s, &frame(&Message::ActivationDelta(c))),
            Err(SessionError::Client(ClientError::OutOfOrder { expected: 0, found: 1 }))
        );
        assert_eq!(s.state(), SessionState::Failed);
        assert!(s.start(header, SliceBody::of_ticket(&t).unwrap(), &X[..]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// A hostile server (garbage, or valid frames in any order after a real handshake) gets a
        /// typed error or progress, never a panic; after an error the session stays failed.
        #[test]
        fn hostile_bytes_never_panic(
            msgs in proptest::collection::vec((0u8..6, 0u16..4, 0u32..4, 0usize..129), 0..8),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            after_hello in proptest::prelude::any::<bool>(),
            split in 1usize..97,
        ) {
            let a = arch();
            // Valid frames of every server message kind, with arbitrary layers, offsets and
            // lengths, then garbage.
            let values = [Fp::from_i64(-3); MAX_CHUNK_VALUES];
            let mut stream = Vec::new();
            for (kind, layer, offset, n) in msgs {
                let c = FieldChunk { layer, offset, values: FieldElems::from_values(&values[..n]) };
                stream.extend(frame(&match kind {
                    0 => Message::ActivationDelta(c),
                    1 => Message::OutputShare(c),
                    2 => Message::ServerHello { version: PROTOCOL_VERSION, arch: a.clone() },
                    3 => Message::Error { code: ErrorCode::Internal, detail: "no" },
                    4 => Message::TicketGranted { ticket_id: TicketId([1; 16]) },
                    _ => Message::MaskedActivation(c),
                }));
            }
            stream.extend(garbage);
            let garbage = stream;
            let t = ticket(&a, 3);
            let mut s = if after_hello { ready(&a) } else { Session::new("t", a.hash()).unwrap() };
            if after_hello {
                let header = TicketHeader::from_bytes(&t).unwrap();
                s.start(header, SliceBody::of_ticket(&t).unwrap(), &X[..]).unwrap();
            }
            let mut buf = [0u8; MAX_FRAME_SIZE];
            for part in garbage.chunks(split) {
                let mut rest = part;
                while !rest.is_empty() {
                    while let Ok(Some(_)) = s.poll_transmit(&mut buf) {}
                    let before = rest.len();
                    if s.receive(&mut rest).is_err() {
                        proptest::prop_assert_eq!(s.state(), SessionState::Failed);
                        rest = &[];
                    } else if rest.len() == before {
                        break; // an answer is pending: poll_transmit above sends it
                    }
                }
            }
        }
    }
}
