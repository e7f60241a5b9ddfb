//! Blocking frame transport for hosts: the wire format of `core_nostd::wire` over any
//! `Read + Write` byte stream (a `TcpStream` normally).
//!
//! Writes are batched: frames are queued and flushed only when the client is about to block on
//! a read, so answering 72 chunks of `d` costs one system call, not 72, while the protocol order
//! is unchanged. Byte counters feed the per-phase traffic figures the CLI reports.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use core_nostd::arch::Architecture;
use core_nostd::wire::{
    encode_frame, ErrorCode, FrameDecoder, Message, RefuseReason, WireError, MAX_FRAME_SIZE, PROTOCOL_VERSION,
};

/// Errors of a client connection.
#[derive(Debug)]
pub enum TransportError {
    Io(io::Error),
    /// The peer sent bytes that are not a valid frame or message.
    Wire(WireError),
    /// The peer closed the connection.
    Closed,
    /// The server refused the handshake.
    Refused(RefuseReason),
    /// The server reported an error and closed.
    Server {
        code: ErrorCode,
        detail: String,
    },
    /// A valid message that does not fit the protocol state.
    Unexpected(&'static str),
    /// The server's architecture is invalid or not the expected one.
    BadArchitecture(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Io(e) => write!(f, "i/o error: {e}"),
            TransportError::Wire(e) => write!(f, "malformed data from the server: {e}"),
            TransportError::Closed => write!(f, "the server closed the connection"),
            TransportError::Refused(r) => write!(f, "the server refused the connection: {r:?}"),
            TransportError::Server { code, detail } => write!(f, "server error {code:?}: {detail}"),
            TransportError::Unexpected(what) => write!(f, "protocol violation by the server: {what}"),
            TransportError::BadArchitecture(why) => write!(f, "bad architecture: {why}"),
        }
    }
}

impl std::error::Error for TransportError {}

impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        TransportError::Io(e)
    }
}

impl From<WireError> for TransportError {
    fn from(e: WireError) -> Self {
        TransportError::Wire(e)
    }
}

/// Bytes moved so far in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub sent: u64,
    pub received: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, rhs: Traffic) -> Traffic {
        Traffic { sent: self.sent - rhs.sent, received: self.received - rhs.received }
    }
}

/// A framed, blocking connection.
pub struct Connection<S> {
    stream: S,
    decoder: Box<FrameDecoder>,
    inbuf: Vec<u8>,
    start: usize,
    end: usize,
    outbuf: Vec<u8>,
    traffic: Traffic,
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("traffic", &self.traffic).finish_non_exhaustive()
    }
}

impl Connection<TcpStream> {
    /// Connect over TCP with an I/O timeout on every read and write.
    pub fn connect(addr: impl ToSocketAddrs, io_timeout: Duration) -> Result<Self, TransportError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(io_timeout))?;
        stream.set_write_timeout(Some(io_timeout))?;
        Ok(Connection::new(stream))
    }
}

impl<S: Read + Write> Connection<S> {
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            decoder: Box::new(FrameDecoder::new()),
            inbuf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            outbuf: Vec::new(),
            traffic: Traffic::default(),
        }
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Queue a message (sent at the next [`Self::flush`] or before the next blocking read).
    pub fn queue(&mut self, msg: &Message<'_>) -> Result<(), TransportError> {
        let mut buf = [0u8; MAX_FRAME_SIZE];
        let frame = encode_frame(msg, &mut buf)?;
        self.outbuf.extend_from_slice(frame);
        Ok(())
    }

    /// Write all queued frames.
    pub fn flush(&mut self) -> Result<(), TransportError> {
        if !self.outbuf.is_empty() {
            self.stream.write_all(&self.outbuf)?;
            self.stream.flush()?;
            self.traffic.sent += self.outbuf.len() as u64;
            self.outbuf.clear();
        }
        Ok(())
    }

    /// Queue an already encoded frame (from a sans-I/O machine such as
    /// `core_nostd::session::ClientSession`).
    pub fn queue_frame(&mut self, frame: &[u8]) {
        self.outbuf.extend_from_slice(frame);
    }

    /// Make sure received bytes are buffered: if none are, send what is queued and read.
    fn fill(&mut self) -> Result<(), TransportError> {
        if self.start == self.end {
            self.flush()?;
            let n = self.stream.read(&mut self.inbuf)?;
            if n == 0 {
                return Err(TransportError::Closed);
            }
            self.traffic.received += n as u64;
            self.start = 0;
            self.end = n;
        }
        Ok(())
    }

    /// Hand the buffered received bytes (reading first if there are none) to `f`, which consumes
    /// from the front of the slice; what it leaves stays buffered.
    pub fn with_received<R>(&mut self, f: impl FnOnce(&mut &[u8]) -> R) -> Result<R, TransportError> {
        self.fill()?;
        let mut input = &self.inbuf[self.start..self.end];
        let before = input.len();
        let r = f(&mut input);
        self.start += before - input.len();
        Ok(r)
    }

    /// Receive the next message and hand it to `f` (messages borrow the receive buffer).
    /// A server `Error` message becomes [`TransportError::Server`].
    pub fn recv<R>(
        &mut self,
        f: impl FnOnce(&Message<'_>) -> Result<R, TransportError>,
    ) -> Result<R, TransportError> {
        loop {
            self.fill()?;
            let mut input = &self.inbuf[self.start..self.end];
            let before = input.len();
            let msg = self.decoder.next_message(&mut input)?;
            self.start += before - input.len();
            if let Some(msg) = msg {
                if let Message::Error { code, detail } = msg {
                    return Err(TransportError::Server { code, detail: detail.to_owned() });
                }
                return f(&msg);
            }
        }
    }

    /// Handshake: ask for `model_id`, optionally pinning its architecture hash; returns the
    /// server's public architecture (validated, and checked against the pin).
    pub fn hello(&mut self, model_id: &str, pin: Option<[u8; 32]>) -> Result<Architecture, TransportError> {
        self.queue(&Message::ClientHello { version: PROTOCOL_VERSION, model_id, arch_hash: pin })?;
        let arch = self.recv(|msg| match msg {
            Message::ServerHello { arch, .. } => Ok(arch.clone()),
            Message::Refused { reason } => Err(TransportError::Refused(*reason)),
            _ => Err(TransportError::Unexpected("expected ServerHello")),
        })?;
        arch.validate().map_err(|e| TransportError::BadArchitecture(e.to_string()))?;
        if arch.model_id.as_str() != model_id {
            return Err(TransportError::BadArchitecture(format!(
                "asked for {model_id}, got {}",
                arch.model_id
            )));
        }
        if pin.is_some_and(|h| h != arch.hash()) {
            return Err(TransportError::BadArchitecture(
                "architecture hash differs from the pinned one".into(),
            ));
        }
        Ok(arch)
    }
}
