//! The client's online state machine: one inference from one ticket (DESIGN §4, online stage).
//!
//! Sans-I/O in the style of rustls: the machine never touches a socket. The driver (a host
//! transport, an embassy-net task on a board, a test) feeds it the server's chunks and sends what
//! it writes into the caller's buffers. Everything is sized by the caller: no allocation, and the
//! working set is one chunk of values plus the ticket reader, so a `minionn-sq` inference runs in
//! a few kilobytes of RAM while its 165 KB ticket streams from flash.
//!
//! ```text
//! SendingInput --(all of x - r_0 sent)--> AwaitingSquareMasks{0}
//! AwaitingSquareMasks{k} --(all d_k received, zc_k - r_(k+1) written)--> AwaitingSquareMasks{k+1}
//!                                                                    or AwaitingOutput
//! AwaitingOutput --(all ys_L received)--> Done (logits = yc_L + ys_L)
//! any violation --> Failed (terminal; the ticket is spent either way)
//! ```
//!
//! Chunks must arrive in order; each one is processed as it arrives (reading the matching
//! `(yc, e)` pairs from the ticket), so the answer to a chunk of `d` is a chunk of the same length
//! and offset that can be sent at once.

use core::borrow::Borrow;

use crate::arch::Architecture;
use crate::field::Fp;
use crate::mask::MaskStream;
use crate::online::client_square_share;
use crate::ticket::{TicketBody, TicketFormatError, TicketHeader};

/// Where the machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Sending `x - r_0`; `offset` elements sent so far.
    SendingInput { offset: usize },
    /// Waiting for chunk `offset..` of `d` for square layer `layer`.
    AwaitingSquareMasks { layer: usize, offset: usize },
    /// Waiting for chunk `offset..` of the server's share of the logits.
    AwaitingOutput { offset: usize },
    /// The logits are complete.
    Done,
    /// A protocol or ticket error ended the inference.
    Failed,
}

/// Why the client aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The ticket is unusable or could not be read.
    Ticket(TicketFormatError),
    /// A message that does not fit the current state.
    UnexpectedMessage,
    /// A chunk for another square layer than the current one.
    WrongLayer { expected: usize, found: usize },
    /// A chunk not starting where the previous one ended.
    OutOfOrder { expected: usize, found: usize },
    /// A chunk running past the end of its vector.
    TooLong,
    /// The output buffer given by the caller is smaller than the chunk.
    BufferTooSmall,
}

impl From<TicketFormatError> for ClientError {
    fn from(e: TicketFormatError) -> Self {
        ClientError::Ticket(e)
    }
}

impl core::fmt::Display for ClientError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ClientError::Ticket(e) => write!(f, "ticket: {e}"),
            ClientError::UnexpectedMessage => write!(f, "message does not fit the protocol state"),
            ClientError::WrongLayer { expected, found } => {
                write!(f, "chunk for layer {found}, expected {expected}")
            }
            ClientError::OutOfOrder { expected, found } => {
                write!(f, "chunk at offset {found}, expected {expected}")
            }
            ClientError::TooLong => write!(f, "chunk runs past the end of its vector"),
            ClientError::BufferTooSmall => write!(f, "output buffer smaller than the chunk"),
        }
    }
}

/// One online inference on the client.
#[derive(Debug)]
///
/// `A` is the architecture, borrowed (`&Architecture`) or owned (a session that learnt it in the
/// handshake keeps it inside the machine for the inference and takes it back with
/// [`OnlineClient::into_architecture`]).
pub struct OnlineClient<A, B> {
    arch: A,
    header: TicketHeader,
    body: B,
    state: ClientState,
}

impl<A: Borrow<Architecture>, B: TicketBody> OnlineClient<A, B> {
    /// Start an inference with a ticket (header + streamed body) made for `arch`.
    pub fn new(arch: A, header: TicketHeader, body: B) -> Result<Self, ClientError> {
        header.check_model(arch.borrow())?;
        Ok(OnlineClient { arch, header, body, state: ClientState::SendingInput { offset: 0 } })
    }

    pub fn architecture(&self) -> &Architecture {
        self.arch.borrow()
    }

    /// End the machine, returning the architecture it was built with.
    pub fn into_architecture(self) -> A {
        self.arch
    }

    /// The id to send in `OnlineBegin` so the server redeems its half of the ticket.
    pub fn ticket_id(&self) -> [u8; 16] {
        self.header.ticket_id
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    fn fail<T>(&mut self, e: ClientError) -> Result<T, ClientError> {
        self.state = ClientState::Failed;
        Err(e)
    }

    /// The mask stream `r_layer`, positioned at element `offset`.
    fn masks(&self, layer: usize, offset: usize) -> MaskStream {
        let mut stream = MaskStream::for_map_input(&self.header.seed, layer as u32);
        stream.seek(offset as u64);
        stream
    }

    /// Mask the next chunk of the input: writes `x - r_0` for `x` (elements `offset..offset+len`
    /// of the input, where `offset` is [`ClientState::SendingInput`]'s) into `out[..x.len()]`.
    /// Returns the offset of the chunk (to put in the frame).
    pub fn mask_input(&mut self, x: &[Fp], out: &mut [Fp]) -> Result<usize, ClientError> {
        let ClientState::SendingInput { offset } = self.state else {
            return self.fail(ClientError::UnexpectedMessage);
        };
        let len = self.arch.borrow().input_len();
        if offset + x.len() > len {
            return self.fail(ClientError::TooLong);
        }
        let Some(out) = out.get_mut(..x.len()) else {
            return self.fail(ClientError::BufferTooSmall);
        };
        let mut r = self.masks(0, offset);
        for (o, &xi) in out.iter_mut().zip(x) {
            *o = xi - r.next_fp();
        }
        let end = offset + x.len();
        self.state = if end < len {
            ClientState::SendingInput { offset: end }
        } else if self.arch.borrow().maps.len() > 1 {
            ClientState::AwaitingSquareMasks { layer: 0, offset: 0 }
        } else {
            ClientState::AwaitingOutput { offset: 0 }
        };
        Ok(offset)
    }

    /// Process a chunk of `d = ys - u` for square layer `layer` at `offset`: writes
    /// `zc - r_(layer+1)` for the same elements into `out[..d.len()]`, to be sent back as a chunk
    /// of map `layer + 1`'s input at the same offset.
    pub fn on_square_masks(
        &mut self,
        layer: usize,
        offset: usize,
        d: &[Fp],
        out: &mut [Fp],
    ) -> Result<(), ClientError> {
        let ClientState::AwaitingSquareMasks { layer: expected_layer, offset: expected } = self.state else {
            return self.fail(ClientError::UnexpectedMessage);
        };
        if layer != expected_layer {
            return self.fail(ClientError::WrongLayer { expected: expected_layer, found: layer });
        }
        if offset != expected {
            return self.fail(ClientError::OutOfOrder { expected, found: offset });
        }
        let len = self.arch.borrow().maps[layer].kind.output_len();
        if offset + d.len() > len {
            return self.fail(ClientError::TooLong);
        }
        let Some(out) = out.get_mut(..d.len()) else {
            return self.fail(ClientError::BufferTooSmall);
        };
        let f = u32::from(self.arch.borrow().frac_bits);
        let mut r = self.masks(layer + 1, offset);
        let mut pair = [Fp::ZERO; 2];
        for (o, &dj) in out.iter_mut().zip(d) {
            if let Err(e) = self.body.read(&mut pair) {
                return self.fail(e.into());
            }
            let [yc, e] = pair;
            *o = client_square_share(yc, dj, e, f) - r.next_fp();
        }
        let end = offset + d.len();
        self.state = if end < len {
            ClientState::AwaitingSquareMasks { layer, offset: end }
        } else if layer + 2 < self.arch.borrow().maps.len() {
            ClientState::AwaitingSquareMasks { layer: layer + 1, offset: 0 }
        } else {
            ClientState::AwaitingOutput { offset: 0 }
        };
        Ok(())
    }

    /// Process a chunk of the server's share of the logits: writes the reconstructed logits
    /// `yc_L + ys_L` into `logits[offset..offset + ys.len()]`. Returns `true` once all logits
    /// are there.
    pub fn on_output(&mut self, offset: usize, ys: &[Fp], logits: &mut [Fp]) -> Result<bool, ClientError> {
        let ClientState::AwaitingOutput { offset: expected } = self.state else {
            return self.fail(ClientError::UnexpectedMessage);
        };
        if offset != expected {
            return self.fail(ClientError::OutOfOrder { expected, found: offset });
        }
        let len = self.arch.borrow().output_len();
        if offset + ys.len() > len {
            return self.fail(ClientError::TooLong);
        }
        let Some(out) = logits.get_mut(offset..offset + ys.len()) else {
            return self.fail(ClientError::BufferTooSmall);
        };
        let mut yc = [Fp::ZERO; 1];
        for (o, &s) in out.iter_mut().zip(ys) {
            if let Err(e) = self.body.read(&mut yc) {
                return self.fail(e.into());
            }
            *o = yc[0] + s;
        }
        let end = offset + ys.len();
        self.state = if end < len { ClientState::AwaitingOutput { offset: end } } else { ClientState::Done };
        Ok(end == len)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arch::{AffineSpec, LinearKind, Shape};
    use crate::ticket::SliceBody;

    /// Dense 3 -> 2, square, dense 2 -> 1 (also the session tests' model).
    pub(crate) fn arch() -> Architecture {
        let mut maps = heapless::Vec::new();
        maps.push(AffineSpec { kind: LinearKind::Dense { inputs: 3, outputs: 2 }, truncate_bits: 4 })
            .unwrap();
        maps.push(AffineSpec { kind: LinearKind::Dense { inputs: 2, outputs: 1 }, truncate_bits: 4 })
            .unwrap();
        Architecture { model_id: "t".try_into().unwrap(), input: Shape::flat(3), maps, frac_bits: 6 }
    }

    fn header(a: &Architecture) -> TicketHeader {
        TicketHeader { arch_hash: a.hash(), ticket_id: [9; 16], seed: [1; 32] }
    }

    #[test]
    fn walks_the_states_and_rejects_violations() {
        let a = arch();
        // Body: 2 activations x (yc, e) + 1 logit share, all small canonical values.
        let mut body = [0u8; 8 * 5];
        for (i, c) in body.chunks_exact_mut(8).enumerate() {
            c[0] = i as u8;
        }
        let mut ticket = [0u8; 88 + 40];
        ticket[88..].copy_from_slice(&body);
        let mut c = OnlineClient::new(&a, header(&a), SliceBody::of_ticket(&ticket).unwrap()).unwrap();
        let mut out = [Fp::ZERO; 4];
        assert_eq!(c.on_output(0, &[Fp::ONE], &mut out), Err(ClientError::UnexpectedMessage));
        assert_eq!(c.state(), ClientState::Failed);

        let mut c = OnlineClient::new(&a, header(&a), SliceBody::of_ticket(&ticket).unwrap()).unwrap();
        assert_eq!(c.mask_input(&[Fp::ONE; 2], &mut out), Ok(0));
        assert_eq!(c.mask_input(&[Fp::ONE; 2], &mut out), Err(ClientError::TooLong));

        let mut c = OnlineClient::new(&a, header(&a), SliceBody::of_ticket(&ticket).unwrap()).unwrap();
        c.mask_input(&[Fp::ONE; 3], &mut out).unwrap();
        assert_eq!(c.state(), ClientState::AwaitingSquareMasks { layer: 0, offset: 0 });
        assert_eq!(
            c.on_square_masks(0, 1, &[Fp::ONE], &mut out),
            Err(ClientError::OutOfOrder { expected: 0, found: 1 })
        );

        let mut c = OnlineClient::new(&a, header(&a), SliceBody::of_ticket(&ticket).unwrap()).unwrap();
        c.mask_input(&[Fp::ONE; 3], &mut out).unwrap();
        assert_eq!(
            c.on_square_masks(1, 0, &[Fp::ONE], &mut out),
            Err(ClientError::WrongLayer { expected: 0, found: 1 })
        );

        let mut c = OnlineClient::new(&a, header(&a), SliceBody::of_ticket(&ticket).unwrap()).unwrap();
        c.mask_input(&[Fp::ONE; 3], &mut out).unwrap();
        c.on_square_masks(0, 0, &[Fp::ONE; 2], &mut out).unwrap();
        let mut logits = [Fp::ZERO; 1];
        assert_eq!(c.on_output(0, &[Fp::ONE], &mut logits), Ok(true));
        assert_eq!(logits[0], Fp::from_i64(4) + Fp::ONE, "yc_L from the ticket plus the server share");
        assert_eq!(c.state(), ClientState::Done);
        assert_eq!(c.mask_input(&[Fp::ONE], &mut out), Err(ClientError::UnexpectedMessage));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Any ticket body and any sequence of server chunks: every violation is a
        /// `ClientError`, never a panic (the long run is the cargo-fuzz target).
        #[test]
        fn arbitrary_server_chunks_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            steps in proptest::collection::vec((0usize..3, 0usize..4, 0usize..4, 0u64..u64::MAX), 0..12),
        ) {
            let a = arch();
            let mut ticket = [0u8; 88 + 64];
            ticket[88..88 + body.len()].copy_from_slice(&body);
            let ticket = &ticket[..88 + body.len()];
            let Ok(mut c) = OnlineClient::new(&a, header(&a), SliceBody::of_ticket(ticket).unwrap()) else {
                return Ok(());
            };
            let mut out = [Fp::ZERO; 4];
            let mut logits = [Fp::ZERO; 1];
            let _ = c.mask_input(&[Fp::ONE; 3], &mut out);
            for (kind, layer, offset, v) in steps {
                let values = [Fp::from_u64_reduced(v); 3];
                let len = (offset % 3) + 1;
                let _ = match kind {
                    0 => c.on_square_masks(layer, offset, &values[..len], &mut out),
                    1 => c.on_output(offset, &values[..len], &mut logits).map(|_| ()),
                    _ => c.mask_input(&values[..len], &mut out).map(|_| ()),
                };
            }
        }
    }

    #[test]
    fn short_or_foreign_tickets_are_refused() {
        let a = arch();
        let mut other = header(&a);
        other.arch_hash[0] ^= 1;
        let ticket = [0u8; 88 + 16];
        assert_eq!(
            OnlineClient::new(&a, other, SliceBody::of_ticket(&ticket).unwrap()).err(),
            Some(ClientError::Ticket(TicketFormatError::WrongModel))
        );
        let mut c = OnlineClient::new(&a, header(&a), SliceBody::of_ticket(&ticket).unwrap()).unwrap();
        let mut out = [Fp::ZERO; 3];
        assert_eq!(c.mask_input(&[Fp::ONE; 3], &mut out[..2]), Err(ClientError::BufferTooSmall));
        let mut c = OnlineClient::new(&a, header(&a), SliceBody::of_ticket(&ticket).unwrap()).unwrap();
        c.mask_input(&[Fp::ONE; 3], &mut out).unwrap();
        assert_eq!(
            c.on_square_masks(0, 0, &[Fp::ONE; 2], &mut out),
            Err(ClientError::Ticket(TicketFormatError::Truncated)),
            "the body holds one (yc, e) pair, two are needed"
        );
    }
}
