//! Drives one online inference on a host: the core-nostd client state machine
//! ([`core_nostd::client::OnlineClient`], the same code a board runs) over a [`Connection`].
//!
//! Flow (DESIGN §4): `OnlineBegin{ticket}`, all chunks of `x - r_0`, then for each square layer
//! the server's `d` chunks, each answered at once with a chunk of `zc - r_next`, and finally the
//! server's share of the logits.

use std::io::{Read, Write};

use core_nostd::arch::Architecture;
use core_nostd::client::{ClientError, OnlineClient};
use core_nostd::ticket::SliceBody;
use core_nostd::wire::{FieldChunk, FieldElems, Message, TicketId, MAX_CHUNK_VALUES};
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

/// Run one private inference of `input` (fixed-point encoded, `arch.input_len()` elements) with
/// `ticket`, over a connection that completed the handshake for `arch`. Returns the logits
/// (fixed-point, `arch.frac_bits` fraction bits).
pub fn infer<S: Read + Write>(
    conn: &mut Connection<S>,
    arch: &Architecture,
    ticket: &Ticket,
    input: &[Fp],
) -> Result<Vec<Fp>, OnlineError> {
    if input.len() != arch.input_len() {
        return Err(OnlineError::InputLength { expected: arch.input_len(), found: input.len() });
    }
    let body = SliceBody::of_ticket(&ticket.bytes).map_err(ClientError::from)?;
    let mut client = OnlineClient::new(arch, ticket.header, body)?;
    conn.queue(&Message::OnlineBegin { ticket_id: TicketId(client.ticket_id()) })?;
    let mut buf = [Fp::ZERO; MAX_CHUNK_VALUES];
    for part in input.chunks(MAX_CHUNK_VALUES) {
        let offset = client.mask_input(part, &mut buf)?;
        let values = FieldElems::from_values(&buf[..part.len()]);
        conn.queue(&Message::MaskedInput(FieldChunk { layer: 0, offset: offset as u32, values }))?;
    }
    let mut logits = vec![Fp::ZERO; arch.output_len()];
    loop {
        // The state machine needs `&mut` while the message borrows the connection's buffer, so
        // copy the (at most 128) values out first.
        let mut values = [Fp::ZERO; MAX_CHUNK_VALUES];
        let (kind, layer, offset, n) = conn.recv(|msg| {
            let (kind, chunk) = match msg {
                Message::ActivationDelta(c) => (false, c),
                Message::OutputShare(c) => (true, c),
                _ => return Err(TransportError::Unexpected("expected ActivationDelta or OutputShare")),
            };
            let n = chunk.values.len().min(MAX_CHUNK_VALUES);
            for (v, x) in values.iter_mut().zip(chunk.values.iter()) {
                *v = x;
            }
            Ok((kind, chunk.layer as usize, chunk.offset as usize, n))
        })?;
        if kind {
            if layer + 1 != arch.maps.len() {
                return Err(OnlineError::Transport(TransportError::Unexpected(
                    "output share for a wrong layer",
                )));
            }
            if client.on_output(offset, &values[..n], &mut logits)? {
                return Ok(logits);
            }
        } else {
            client.on_square_masks(layer, offset, &values[..n], &mut buf)?;
            let values = FieldElems::from_values(&buf[..n]);
            let chunk = FieldChunk { layer: (layer + 1) as u16, offset: offset as u32, values };
            conn.queue(&Message::MaskedActivation(chunk))?;
        }
    }
}
