//! Drives one online inference on a host: the core-nostd client session
//! ([`core_nostd::session::ClientSession`], the same code a board runs, framing included) over a
//! [`Connection`] whose handshake is done.
//!
//! Flow (DESIGN §4): `OnlineBegin{ticket}`, all chunks of `x - r_0`, then for each square layer
//! the server's `d` chunks, each answered at once with a chunk of `zc - r_next`, and finally the
//! server's share of the logits.

use std::io::{Read, Write};

use core_nostd::arch::Architecture;
use core_nostd::client::ClientError;
use core_nostd::session::{ClientSession, Event, SessionError};
use core_nostd::ticket::SliceBody;
use core_nostd::wire::MAX_FRAME_SIZE;
use core_nostd::Fp;

use crate::tickets::Ticket;
use crate::transport::{Connection, TransportError};

/// Why an online inference failed.
#[derive(Debug)]
pub enum OnlineError {
    Transport(TransportError),
    /// The client state machine refused a message (a protocol violation by the server, or an
    /// unusable ticket).
    Client(ClientError),
    /// The session refused the server's behaviour (a message out of place, a wrong model).
    Session(SessionError),
    /// The input has the wrong number of elements.
    InputLength {
        expected: usize,
        found: usize,
    },
}

impl std::fmt::Display for OnlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnlineError::Transport(e) => write!(f, "{e}"),
            OnlineError::Client(e) => write!(f, "client: {e}"),
            OnlineError::Session(e) => write!(f, "session: {e}"),
            OnlineError::InputLength { expected, found } => {
                write!(f, "input has {found} elements, the model expects {expected}")
            }
        }
    }
}

impl std::error::Error for OnlineError {}

impl From<TransportError> for OnlineError {
    fn from(e: TransportError) -> Self {
        OnlineError::Transport(e)
    }
}

impl From<ClientError> for OnlineError {
    fn from(e: ClientError) -> Self {
        OnlineError::Client(e)
    }
}

/// Map a session error to the host's error types (the server's explanation comes along).
fn session_error(e: SessionError, detail: &str) -> OnlineError {
    match e {
        SessionError::Server(code) => {
            OnlineError::Transport(TransportError::Server { code, detail: detail.to_owned() })
        }
        SessionError::Refused(reason) => OnlineError::Transport(TransportError::Refused(reason)),
        SessionError::Wire(w) => OnlineError::Transport(w.into()),
        SessionError::Client(c) => OnlineError::Client(c),
        SessionError::InputLength { expected, found } => OnlineError::InputLength { expected, found },
        other => OnlineError::Session(other),
    }
}

/// Run one private inference of `input` (fixed-point encoded, `arch.input_len()` elements) with
/// `ticket`, over a connection that completed the handshake for `arch`. Returns the logits
/// (fixed-point, `arch.frac_bits` fraction bits).
pub fn infer<S: Read + Write>(
    conn: &mut Connection<S>,
    arch: &Architecture,
    ticket: &Ticket,
    input: &[Fp],
) -> Result<Vec<Fp>, OnlineError> {
    let body = SliceBody::of_ticket(&ticket.bytes).map_err(ClientError::from)?;
    let mut session = ClientSession::with_architecture(arch.clone()).map_err(|e| session_error(e, ""))?;
    session.start(ticket.header, body, input).map_err(|e| session_error(e, ""))?;
    let mut tx = [0u8; MAX_FRAME_SIZE];
    loop {
        while let Some(frame) = session.poll_transmit(&mut tx).map_err(|e| session_error(e, ""))? {
            conn.queue_frame(frame);
        }
        let event = conn.with_received(|bytes| session.receive(bytes))?;
        match event {
            Ok(Event::Output) => return Ok(session.logits().unwrap_or_default().to_vec()),
            Ok(_) => {}
            Err(e) => return Err(session_error(e, session.server_detail())),
        }
    }
}
