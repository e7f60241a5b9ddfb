//! Tickets on a board: the flash store they live in, the receiving half of provisioning, and the
//! streamed ticket body an inference reads (DESIGN §2 provisioner, §4 "on a microcontroller it
//! lives in flash and is read as a stream").
//!
//! A board never does HE: `edge-client provision` (a host in the user's trust domain) makes
//! tickets with the server and pushes them over the board's serial link. The board writes each
//! one into a slot of its [`TicketStore`] and uses it once. A `minionn-sq` ticket is ~170 KB, so
//! nothing here holds a ticket in RAM: bytes go to flash page by page as they arrive, and an
//! inference streams its body back out of flash ([`SlotBody`]).
//!
//! Flash rules the store relies on (true of NOR flash on the RP2040 and the ESP32-C3): erase sets
//! bytes to `0xFF`, programming can only clear bits, programming is by [`PAGE`]-byte pages. The
//! receiver therefore writes every page of a slot exactly once, in order, except page 0 (which
//! holds the header) written last: a ticket becomes *live* (valid magic) only once all of it is in
//! flash, so a power cut mid-transfer leaves a dead slot, never a half ticket. Burning a ticket
//! clears its magic (bits 1 -> 0, no erase), which makes it dead for good; a dead slot is erased
//! and reused by the next provisioning.
//!
//! ```text
//! AwaitingOffer --(ProvisionOffer ok; ProvisionAccept{n} queued)--> Receiving{k = 0}
//! Receiving{k} --(last byte of ticket k; header checked; page 0 written; TicketStored{k} queued)-->
//!              Receiving{k + 1}  or  Done (k + 1 == n)
//! any error --> Failed (an Error frame is queued for the host)
//! ```

use core::cell::RefCell;

use crate::arch::MAX_MODEL_ID;
use crate::field::Fp;
use crate::ticket::{decode_value, TicketBody, TicketFormatError, TicketHeader, HEADER_LEN};
use crate::wire::{encode_frame, ErrorCode, FrameDecoder, Message, WireError};

/// The flash programming unit the receiver writes in.
pub const PAGE: usize = 256;

/// Ticket slots in a board's flash (or, on the emulated board, memory that plays flash).
pub trait TicketStore {
    type Error: core::fmt::Debug;

    /// Number of slots.
    fn slots(&self) -> u32;
    /// Bytes per slot (a multiple of [`PAGE`]); the longest ticket the store takes.
    fn slot_len(&self) -> u32;
    /// Erase a slot (every byte `0xFF`).
    fn erase(&mut self, slot: u32) -> Result<(), Self::Error>;
    /// Program one page at `offset` (a multiple of [`PAGE`]) of an erased slot.
    fn program(&mut self, slot: u32, offset: u32, page: &[u8; PAGE]) -> Result<(), Self::Error>;
    /// Read `buf.len()` bytes at `offset` of a slot.
    fn read(&mut self, slot: u32, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Make the ticket in `slot` unusable by clearing its magic (only clears bits).
    fn burn(&mut self, slot: u32) -> Result<(), Self::Error>;
}

impl<S: TicketStore + ?Sized> TicketStore for &mut S {
    type Error = S::Error;

    fn slots(&self) -> u32 {
        (**self).slots()
    }
    fn slot_len(&self) -> u32 {
        (**self).slot_len()
    }
    fn erase(&mut self, slot: u32) -> Result<(), Self::Error> {
        (**self).erase(slot)
    }
    fn program(&mut self, slot: u32, offset: u32, page: &[u8; PAGE]) -> Result<(), Self::Error> {
        (**self).program(slot, offset, page)
    }
    fn read(&mut self, slot: u32, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read(slot, offset, buf)
    }
    fn burn(&mut self, slot: u32) -> Result<(), Self::Error> {
        (**self).burn(slot)
    }
}

/// A copyable handle on a store shared through a `RefCell`: a session holds one inside the
/// [`SlotBody`] of the running inference while the board burns the next ticket with another.
#[derive(Debug)]
pub struct SharedStore<'a, S>(pub &'a RefCell<S>);

impl<S> Clone for SharedStore<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for SharedStore<'_, S> {}

/// A [`SharedStore`] access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedError<E> {
    /// Another handle is using the store right now (re-entrant use).
    Busy,
    Store(E),
}

impl<S: TicketStore> SharedStore<'_, S> {
    fn with<R>(&self, f: impl FnOnce(&mut S) -> Result<R, S::Error>) -> Result<R, SharedError<S::Error>> {
        let mut s = self.0.try_borrow_mut().map_err(|_| SharedError::Busy)?;
        f(&mut s).map_err(SharedError::Store)
    }
}

impl<S: TicketStore> TicketStore for SharedStore<'_, S> {
    type Error = SharedError<S::Error>;

    fn slots(&self) -> u32 {
        self.0.try_borrow().map(|s| s.slots()).unwrap_or(0)
    }
    fn slot_len(&self) -> u32 {
        self.0.try_borrow().map(|s| s.slot_len()).unwrap_or(0)
    }
    fn erase(&mut self, slot: u32) -> Result<(), Self::Error> {
        self.with(|s| s.erase(slot))
    }
    fn program(&mut self, slot: u32, offset: u32, page: &[u8; PAGE]) -> Result<(), Self::Error> {
        self.with(|s| s.program(slot, offset, page))
    }
    fn read(&mut self, slot: u32, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.with(|s| s.read(slot, offset, buf))
    }
    fn burn(&mut self, slot: u32) -> Result<(), Self::Error> {
        self.with(|s| s.burn(slot))
    }
}

/// The header of the live ticket in `slot`, or `None` if the slot is empty, burnt, or does not
/// read.
pub fn live_ticket<S: TicketStore>(store: &mut S, slot: u32) -> Option<TicketHeader> {
    let mut header = [0u8; HEADER_LEN];
    store.read(slot, 0, &mut header).ok()?;
    TicketHeader::from_bytes(&header).ok()
}

/// Number of live tickets in the store.
pub fn live_tickets<S: TicketStore>(store: &mut S) -> u32 {
    (0..store.slots()).filter(|&s| live_ticket(store, s).is_some()).count() as u32
}

/// A ticket body streamed out of a store slot, 8 values (64 bytes) per flash read. `S` is the
/// store or a handle on it (`&mut S`, a [`SharedStore`]).
#[derive(Debug)]
pub struct SlotBody<S> {
    store: S,
    slot: u32,
    /// Byte offset in the slot of the next read.
    next: u32,
    end: u32,
    buf: [u8; 64],
    at: usize,
    len: usize,
}

impl<S: TicketStore> SlotBody<S> {
    /// The body of the ticket in `slot`, `ticket_len` bytes long in all (header included).
    pub fn new(store: S, slot: u32, ticket_len: u32) -> Self {
        SlotBody { store, slot, next: HEADER_LEN as u32, end: ticket_len, buf: [0; 64], at: 0, len: 0 }
    }
}

impl<S: TicketStore> TicketBody for SlotBody<S> {
    fn read(&mut self, out: &mut [Fp]) -> Result<(), TicketFormatError> {
        for o in out.iter_mut() {
            if self.at == self.len {
                let n = (self.end.saturating_sub(self.next) as usize).min(self.buf.len());
                if n < 8 {
                    return Err(TicketFormatError::Truncated);
                }
                let n = n - n % 8;
                self.store
                    .read(self.slot, self.next, &mut self.buf[..n])
                    .map_err(|_| TicketFormatError::Storage)?;
                self.next += n as u32;
                self.at = 0;
                self.len = n;
            }
            let mut word = [0u8; 8];
            word.copy_from_slice(&self.buf[self.at..self.at + 8]);
            self.at += 8;
            *o = decode_value(word)?;
        }
        Ok(())
    }
}

/// Why provisioning failed on the board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProvisionError<E> {
    Wire(WireError),
    /// The host offered tickets for another model.
    WrongModel,
    /// The offered tickets are shorter than a header or longer than a slot.
    BadTicketLength {
        ticket_len: u32,
        slot_len: u32,
    },
    /// Bytes out of order, of another ticket, or past its end.
    BadChunk,
    /// A complete ticket whose header is invalid or not for the offered architecture.
    BadTicket,
    /// A message that does not fit the provisioning state.
    UnexpectedMessage,
    /// The host reported an error.
    Host(ErrorCode),
    /// The store failed.
    Store(E),
}

impl<E> From<WireError> for ProvisionError<E> {
    fn from(e: WireError) -> Self {
        ProvisionError::Wire(e)
    }
}

impl<E: core::fmt::Debug> core::fmt::Display for ProvisionError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProvisionError::Wire(e) => write!(f, "wire: {e}"),
            ProvisionError::WrongModel => write!(f, "tickets for another model"),
            ProvisionError::BadTicketLength { ticket_len, slot_len } => {
                write!(f, "tickets of {ticket_len} bytes do not fit slots of {slot_len} bytes")
            }
            ProvisionError::BadChunk => write!(f, "ticket bytes out of order or out of bounds"),
            ProvisionError::BadTicket => write!(f, "a ticket with an invalid header"),
            ProvisionError::UnexpectedMessage => write!(f, "message does not fit the provisioning state"),
            ProvisionError::Host(c) => write!(f, "the provisioner reported {c:?}"),
            ProvisionError::Store(e) => write!(f, "ticket store: {e:?}"),
        }
    }
}

impl<E> ProvisionError<E> {
    fn code(&self) -> ErrorCode {
        match self {
            ProvisionError::Wire(_) => ErrorCode::Malformed,
            ProvisionError::WrongModel => ErrorCode::UnknownModel,
            ProvisionError::BadTicketLength { .. } | ProvisionError::BadChunk | ProvisionError::BadTicket => {
                ErrorCode::BadChunk
            }
            ProvisionError::UnexpectedMessage | ProvisionError::Host(_) => ErrorCode::UnexpectedMessage,
            ProvisionError::Store(_) => ErrorCode::ResourceExhausted,
        }
    }
}

/// What a call to [`ProvisionReceiver::receive`] completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvisionEvent {
    /// Nothing complete yet.
    Pending,
    /// A message was processed.
    Progress,
    /// Ticket number `ticket` of this transfer is live in `slot`.
    Stored { ticket: u32, slot: u32 },
    /// All accepted tickets are stored (`stored` of them; 0 if the store was full).
    Done { stored: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Accept(u32),
    Stored(u32),
    Error(ErrorCode),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitingOffer,
    Receiving { arch_hash: [u8; 32], ticket_len: u32, accepted: u32, ticket: u32, slot: u32, offset: u32 },
    Done,
    Failed,
}

/// The board's half of provisioning, sans I/O (drivers: [`blocking`], [`asynch`]).
pub struct ProvisionReceiver<'m> {
    /// The model this board runs; `None` takes tickets of any model (the emulated test board).
    accept: Option<&'m str>,
    /// The model of the tickets offered.
    offered: heapless::String<MAX_MODEL_ID>,
    phase: Phase,
    decoder: FrameDecoder,
    reply: Option<Reply>,
    /// Page 0 of the current ticket (written last, see the module docs).
    first: [u8; PAGE],
    /// The page being filled.
    page: [u8; PAGE],
}

impl core::fmt::Debug for ProvisionReceiver<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ProvisionReceiver").field("phase", &self.phase).finish_non_exhaustive()
    }
}

impl<'m> ProvisionReceiver<'m> {
    /// A receiver for a board that runs `accept` (or any model with `None`).
    pub fn new(accept: Option<&'m str>) -> Self {
        ProvisionReceiver {
            accept,
            offered: heapless::String::new(),
            phase: Phase::AwaitingOffer,
            decoder: FrameDecoder::new(),
            reply: None,
            first: [0xFF; PAGE],
            page: [0xFF; PAGE],
        }
    }

    /// The model of the offered tickets (empty before the offer).
    pub fn offered_model(&self) -> &str {
        &self.offered
    }

    /// `true` once every accepted ticket is stored (or the transfer failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }

    /// How many bytes to read next at most: the rest of the frame being received.
    pub fn wanted(&self) -> usize {
        self.decoder.wanted()
    }

    /// The next frame for the host, encoded into `buf`.
    pub fn poll_transmit<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, WireError> {
        let Some(reply) = self.reply.take() else { return Ok(None) };
        let msg = match reply {
            Reply::Accept(tickets) => Message::ProvisionAccept { tickets },
            Reply::Stored(ticket) => Message::TicketStored { ticket },
            Reply::Error(code) => Message::Error { code, detail: "board refused the tickets" },
        };
        encode_frame(&msg, buf).map(Some)
    }

    /// Consume bytes up to and including at most one message and act on it (writing to
    /// `store`). Send what [`poll_transmit`](Self::poll_transmit) returns before the next call.
    pub fn receive<S: TicketStore>(
        &mut self,
        store: &mut S,
        bytes: &mut &[u8],
    ) -> Result<ProvisionEvent, ProvisionError<S::Error>> {
        if self.phase == Phase::Failed {
            return Err(ProvisionError::UnexpectedMessage);
        }
        if self.reply.is_some() {
            return Ok(ProvisionEvent::Pending);
        }
        let result = self.receive_one(store, bytes);
        if let Err(e) = &result {
            self.phase = Phase::Failed;
            self.reply = Some(Reply::Error(e.code()));
        }
        result
    }

    fn receive_one<S: TicketStore>(
        &mut self,
        store: &mut S,
        bytes: &mut &[u8],
    ) -> Result<ProvisionEvent, ProvisionError<S::Error>> {
        let Some(msg) = self.decoder.next_message(bytes)? else {
            return Ok(ProvisionEvent::Pending);
        };
        match (msg, self.phase) {
            (Message::Error { code, .. }, _) => Err(ProvisionError::Host(code)),
            (Message::ProvisionOffer { model_id, arch_hash, ticket_len, tickets }, Phase::AwaitingOffer) => {
                if self.accept.is_some_and(|m| m != model_id) {
                    return Err(ProvisionError::WrongModel);
                }
                self.offered =
                    heapless::String::try_from(model_id).map_err(|_| ProvisionError::WrongModel)?;
                let slot_len = store.slot_len();
                if ticket_len < HEADER_LEN as u32 || ticket_len > slot_len {
                    return Err(ProvisionError::BadTicketLength { ticket_len, slot_len });
                }
                let free = (0..store.slots()).filter(|&s| live_ticket(store, s).is_none()).count() as u32;
                let accepted = tickets.min(free);
                self.reply = Some(Reply::Accept(accepted));
                match next_free_slot(store, 0) {
                    Some(slot) if accepted > 0 => {
                        store.erase(slot).map_err(ProvisionError::Store)?;
                        self.start_ticket();
                        self.phase =
                            Phase::Receiving { arch_hash, ticket_len, accepted, ticket: 0, slot, offset: 0 };
                        Ok(ProvisionEvent::Progress)
                    }
                    _ => {
                        self.phase = Phase::Done;
                        Ok(ProvisionEvent::Done { stored: 0 })
                    }
                }
            }
            (
                Message::TicketBytes { ticket, offset, bytes },
                Phase::Receiving { arch_hash, ticket_len, accepted, ticket: expected, slot, offset: at },
            ) => {
                if ticket != expected
                    || offset != at
                    || bytes.len() as u64 + offset as u64 > ticket_len as u64
                {
                    return Err(ProvisionError::BadChunk);
                }
                let mut at = at;
                for &b in bytes {
                    let in_page = at as usize % PAGE;
                    if (at as usize) < PAGE {
                        self.first[in_page] = b;
                    } else {
                        self.page[in_page] = b;
                        if in_page == PAGE - 1 {
                            store
                                .program(slot, at - (PAGE as u32 - 1), &self.page)
                                .map_err(ProvisionError::Store)?;
                            self.page = [0xFF; PAGE];
                        }
                    }
                    at += 1;
                }
                if at < ticket_len {
                    self.phase =
                        Phase::Receiving { arch_hash, ticket_len, accepted, ticket, slot, offset: at };
                    return Ok(ProvisionEvent::Progress);
                }
                // The whole ticket is here: flush the partial last page, check the header, and
                // make the ticket live by writing page 0.
                if at as usize > PAGE && at as usize % PAGE != 0 {
                    let start = at - at % PAGE as u32;
                    store.program(slot, start, &self.page).map_err(ProvisionError::Store)?;
                }
                match TicketHeader::from_bytes(&self.first) {
                    Ok(h) if h.arch_hash == arch_hash => {}
                    _ => return Err(ProvisionError::BadTicket),
                }
                store.program(slot, 0, &self.first).map_err(ProvisionError::Store)?;
                self.reply = Some(Reply::Stored(ticket));
                let next = ticket + 1;
                self.phase = match next_free_slot(store, slot + 1) {
                    Some(s) if next < accepted => {
                        store.erase(s).map_err(ProvisionError::Store)?;
                        self.start_ticket();
                        Phase::Receiving { arch_hash, ticket_len, accepted, ticket: next, slot: s, offset: 0 }
                    }
                    _ => Phase::Done,
                };
                Ok(ProvisionEvent::Stored { ticket, slot })
            }
            _ => Err(ProvisionError::UnexpectedMessage),
        }
    }

    fn start_ticket(&mut self) {
        self.first = [0xFF; PAGE];
        self.page = [0xFF; PAGE];
    }
}

fn next_free_slot<S: TicketStore>(store: &mut S, from: u32) -> Option<u32> {
    (from..store.slots()).find(|&s| live_ticket(store, s).is_none())
}

/// What a provisioning transfer left in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioned {
    /// Tickets stored by this transfer.
    pub stored: u32,
    /// Their model.
    pub model_id: heapless::String<MAX_MODEL_ID>,
}

/// Why a driven provisioning stopped.
#[derive(Debug)]
pub enum LinkOr<L, S> {
    Link(L),
    Closed,
    Provision(ProvisionError<S>),
}

/// The two receive loops, written once: `$io` is `embedded_io` or `embedded_io_async`, and the
/// optional `async` / `.await` tokens make the async variant.
macro_rules! provision_drivers {
    ($io:ident, $($async:ident)?, $($await:tt)*) => {
        use $io::{Read, Write};

        pub use super::LinkOr;
        use super::{ProvisionEvent, ProvisionReceiver, Provisioned, TicketStore};
        use crate::wire::MAX_FRAME_SIZE;

        /// Receive one provisioning transfer into `store` (tickets of model `accept`, or of any
        /// model with `None`).
        pub $($async)? fn receive_tickets<L: Read + Write, S: TicketStore>(
            link: &mut L,
            store: &mut S,
            accept: Option<&str>,
            rx: &mut [u8],
        ) -> Result<Provisioned, LinkOr<L::Error, S::Error>> {
            let mut receiver = ProvisionReceiver::new(accept);
            let mut tx = [0u8; MAX_FRAME_SIZE];
            let mut stored = 0;
            let (mut filled, mut consumed) = (0, 0);
            loop {
                while let Some(frame) = receiver.poll_transmit(&mut tx).map_err(|e| LinkOr::Provision(e.into()))? {
                    link.write_all(frame) $($await)* .map_err(LinkOr::Link)?;
                    link.flush() $($await)* .map_err(LinkOr::Link)?;
                }
                if receiver.is_finished() {
                    let model_id = heapless::String::try_from(receiver.offered_model()).unwrap_or_default();
                    return Ok(Provisioned { stored, model_id });
                }
                if consumed == filled {
                    let want = receiver.wanted().min(rx.len());
                    filled = link.read(&mut rx[..want]) $($await)* .map_err(LinkOr::Link)?;
                    consumed = 0;
                    if filled == 0 {
                        return Err(LinkOr::Closed);
                    }
                }
                let mut pending = &rx[consumed..filled];
                let event = receiver.receive(store, &mut pending);
                consumed = filled - pending.len();
                match event {
                    Ok(ProvisionEvent::Stored { .. }) => stored += 1,
                    Ok(_) => {}
                    Err(e) => {
                        // Tell the host why before giving up.
                        if let Ok(Some(frame)) = receiver.poll_transmit(&mut tx) {
                            let _ = link.write_all(frame) $($await)*;
                            let _ = link.flush() $($await)*;
                        }
                        return Err(LinkOr::Provision(e));
                    }
                }
            }
        }
    };
}

/// The receiver over a blocking `embedded-io` link (a UART).
pub mod blocking {
    provision_drivers!(embedded_io,,);
}

/// The receiver over an `embedded-io-async` link (USB CDC-ACM, USB-Serial-JTAG).
#[cfg(feature = "async")]
pub mod asynch {
    provision_drivers!(embedded_io_async, async, .await);
}

/// A store over a byte slice that behaves like NOR flash (erase to `0xFF`, program clears bits
/// only): the emulated board's "flash" and the tests' store. Real boards implement
/// [`TicketStore`] over their flash driver.
#[derive(Debug)]
pub struct SliceStore<'a> {
    mem: &'a mut [u8],
    slot_len: u32,
}

/// A [`SliceStore`] access outside its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange;

impl<'a> SliceStore<'a> {
    /// Slots of `slot_len` bytes (rounded up to a whole page) over `mem`.
    pub fn new(mem: &'a mut [u8], slot_len: u32) -> Self {
        let slot_len = slot_len.div_ceil(PAGE as u32).max(1) * PAGE as u32;
        SliceStore { mem, slot_len }
    }

    fn range(&self, slot: u32, offset: u32, len: usize) -> Result<core::ops::Range<usize>, OutOfRange> {
        if slot >= self.slots() || offset as u64 + len as u64 > self.slot_len as u64 {
            return Err(OutOfRange);
        }
        let start = slot as usize * self.slot_len as usize + offset as usize;
        Ok(start..start + len)
    }
}

impl TicketStore for SliceStore<'_> {
    type Error = OutOfRange;

    fn slots(&self) -> u32 {
        (self.mem.len() / self.slot_len as usize) as u32
    }

    fn slot_len(&self) -> u32 {
        self.slot_len
    }

    fn erase(&mut self, slot: u32) -> Result<(), OutOfRange> {
        let r = self.range(slot, 0, self.slot_len as usize)?;
        self.mem[r].fill(0xFF);
        Ok(())
    }

    fn program(&mut self, slot: u32, offset: u32, page: &[u8; PAGE]) -> Result<(), OutOfRange> {
        if offset as usize % PAGE != 0 {
            return Err(OutOfRange);
        }
        let r = self.range(slot, offset, PAGE)?;
        for (m, &b) in self.mem[r].iter_mut().zip(page) {
            *m &= b;
        }
        Ok(())
    }

    fn read(&mut self, slot: u32, offset: u32, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = self.range(slot, offset, buf.len())?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(())
    }

    fn burn(&mut self, slot: u32) -> Result<(), OutOfRange> {
        let r = self.range(slot, 0, 4)?;
        self.mem[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::wire::{ErrorCode, MAX_CHUNK_BYTES, MAX_FRAME_SIZE};

    /// A ticket of `len` bytes: a valid header for `hash`, then canonical values.
    fn ticket(len: usize, hash: [u8; 32], id: u8) -> Vec<u8> {
        let header = TicketHeader { arch_hash: hash, ticket_id: [id; 16], seed: [id; 32] };
        let mut t = header.to_bytes().to_vec();
        let mut v = 1u64;
        while t.len() < len {
            t.extend_from_slice(&(v % 1000).to_le_bytes());
            v += 7;
        }
        t.truncate(len);
        t
    }

    fn frame(msg: &Message<'_>) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME_SIZE];
        encode_frame(msg, &mut buf).unwrap().to_vec()
    }

    type Outcome = Result<ProvisionEvent, ProvisionError<OutOfRange>>;

    /// Feed the frames one message at a time, collecting the board's replies.
    fn run(
        rx: &mut ProvisionReceiver<'_>,
        store: &mut SliceStore<'_>,
        frames: &[Vec<u8>],
    ) -> (Vec<Outcome>, Vec<Vec<u8>>) {
        let (mut events, mut replies) = (Vec::new(), Vec::new());
        let mut tx = [0u8; MAX_FRAME_SIZE];
        for f in frames {
            let mut bytes = &f[..];
            while !bytes.is_empty() {
                let e = rx.receive(store, &mut bytes);
                let failed = e.is_err();
                events.push(e);
                while let Some(r) = rx.poll_transmit(&mut tx).unwrap() {
                    replies.push(r.to_vec());
                }
                if failed {
                    return (events, replies);
                }
            }
        }
        (events, replies)
    }

    fn transfer(model: &str, hash: [u8; 32], tickets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let len = tickets[0].len() as u32;
        let mut frames = std::vec![frame(&Message::ProvisionOffer {
            model_id: model,
            arch_hash: hash,
            ticket_len: len,
            tickets: tickets.len() as u32,
        })];
        for (k, t) in tickets.iter().enumerate() {
            for (i, c) in t.chunks(MAX_CHUNK_BYTES - 24).enumerate() {
                let offset = (i * (MAX_CHUNK_BYTES - 24)) as u32;
                frames.push(frame(&Message::TicketBytes { ticket: k as u32, offset, bytes: c }));
            }
        }
        frames
    }

    #[test]
    fn tickets_land_in_free_slots_and_stream_back() {
        let hash = [9u8; 32];
        // Lengths around page boundaries, and a realistic one.
        for len in [HEADER_LEN + 8, PAGE, PAGE + 8, 3 * PAGE, 5000] {
            let mut mem = std::vec![0u8; 4 * 5120];
            let mut store = SliceStore::new(&mut mem, 5120);
            let tickets: Vec<Vec<u8>> = (0..3).map(|k| ticket(len, hash, k as u8 + 1)).collect();
            let mut rx = ProvisionReceiver::new(Some("m"));
            let (events, replies) = run(&mut rx, &mut store, &transfer("m", hash, &tickets));
            assert!(events.iter().all(|e| e.is_ok()), "{events:?}");
            assert!(rx.is_finished());
            assert_eq!(replies[0], frame(&Message::ProvisionAccept { tickets: 3 }));
            assert_eq!(replies.len(), 4);
            for (k, t) in tickets.iter().enumerate() {
                let h = live_ticket(&mut store, k as u32).unwrap();
                assert_eq!(h.ticket_id, [k as u8 + 1; 16]);
                let mut back = std::vec![0u8; len];
                store.read(k as u32, 0, &mut back).unwrap();
                assert_eq!(&back, t);
                // The body streams back value by value.
                let values = (len - HEADER_LEN) / 8;
                let mut body = SlotBody::new(&mut store, k as u32, len as u32);
                let mut out = std::vec![Fp::ZERO; values];
                body.read(&mut out).unwrap();
                assert_eq!(out[0], Fp::from_i64(1));
                assert_eq!(body.read(&mut [Fp::ZERO]), Err(TicketFormatError::Truncated));
            }
            assert_eq!(live_tickets(&mut store), 3);
            store.burn(1).unwrap();
            assert!(live_ticket(&mut store, 1).is_none());
            assert_eq!(live_tickets(&mut store), 2);
        }
    }

    #[test]
    fn a_full_store_takes_what_fits_and_reuses_burnt_slots() {
        let hash = [1u8; 32];
        let arch_len = 1000;
        let mut mem = std::vec![0u8; 2 * 1024];
        let mut store = SliceStore::new(&mut mem, 1024);
        let tickets: Vec<Vec<u8>> = (0..3).map(|k| ticket(arch_len, hash, k)).collect();
        let mut rx = ProvisionReceiver::new(None);
        let (events, replies) = run(&mut rx, &mut store, &transfer("any", hash, &tickets[..2]));
        assert!(events.iter().all(|e| e.is_ok()));
        assert_eq!(replies[0], frame(&Message::ProvisionAccept { tickets: 2 }));
        assert_eq!(rx.offered_model(), "any");
        // Full: a second transfer is accepted for 0 tickets.
        let mut rx = ProvisionReceiver::new(None);
        let offer = transfer("any", hash, &tickets[2..]);
        let (events, replies) = run(&mut rx, &mut store, &offer[..1]);
        assert_eq!(events.last(), Some(&Ok(ProvisionEvent::Done { stored: 0 })));
        assert_eq!(replies[0], frame(&Message::ProvisionAccept { tickets: 0 }));
        // A burnt slot is erased and reused.
        store.burn(0).unwrap();
        let mut rx = ProvisionReceiver::new(None);
        let (events, _) = run(&mut rx, &mut store, &offer);
        assert!(events.contains(&Ok(ProvisionEvent::Stored { ticket: 0, slot: 0 })));
        assert_eq!(live_ticket(&mut store, 0).unwrap().ticket_id, [2; 16]);
    }

    #[test]
    fn hostile_transfers_are_refused_and_leave_no_live_ticket() {
        let hash = [4u8; 32];
        let good = ticket(2000, hash, 7);
        let cases: Vec<(&str, Vec<Vec<u8>>, ErrorCode)> = {
            let mut v = Vec::new();
            v.push((
                "wrong model",
                transfer("other", hash, core::slice::from_ref(&good)),
                ErrorCode::UnknownModel,
            ));
            let mut skipped = transfer("m", hash, core::slice::from_ref(&good));
            skipped.remove(1);
            v.push(("skipped chunk", skipped, ErrorCode::BadChunk));
            v.push((
                "wrong arch hash",
                transfer("m", [5; 32], core::slice::from_ref(&good)),
                ErrorCode::BadChunk,
            ));
            let mut bad_magic = good.clone();
            bad_magic[0] = b'X';
            v.push(("bad magic", transfer("m", hash, &[bad_magic]), ErrorCode::BadChunk));
            let too_long = ticket(5000, hash, 1);
            v.push(("longer than a slot", transfer("m", hash, &[too_long]), ErrorCode::BadChunk));
            let mut before_offer = transfer("m", hash, core::slice::from_ref(&good));
            before_offer.remove(0);
            v.push(("bytes before the offer", before_offer, ErrorCode::UnexpectedMessage));
            let mut past_end = transfer("m", hash, core::slice::from_ref(&good));
            past_end.push(frame(&Message::TicketBytes { ticket: 0, offset: 2000, bytes: &[1] }));
            v.push(("bytes after the end", past_end, ErrorCode::UnexpectedMessage));
            v.push(("garbage", std::vec![std::vec![0xEE; 40]], ErrorCode::Malformed));
            v
        };
        for (name, frames, code) in cases {
            let mut mem = std::vec![0u8; 2 * 4096];
            let mut store = SliceStore::new(&mut mem, 4096);
            let mut rx = ProvisionReceiver::new(Some("m"));
            let (events, replies) = run(&mut rx, &mut store, &frames);
            if name == "bytes after the end" {
                // The ticket itself is complete and live; the stray bytes are refused.
                assert_eq!(live_tickets(&mut store), 1, "{name}");
                assert!(rx.is_finished(), "{name}");
                continue;
            }
            assert!(events.last().is_some_and(|e| e.is_err()), "{name}: {events:?}");
            let last = replies.last().unwrap();
            let (msg, _) = crate::wire::decode_frame(last).unwrap();
            assert!(matches!(msg, Message::Error { code: c, .. } if c == code), "{name}: {msg:?}");
            assert_eq!(live_tickets(&mut store), 0, "{name}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Hostile bytes on the provisioning link (garbage, or a valid offer followed by garbage)
        /// never panic and never leave a live ticket.
        #[test]
        fn hostile_provisioning_bytes_never_panic(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            offer_first in proptest::prelude::any::<bool>(),
            split in 1usize..97,
        ) {
            let mut mem = std::vec![0u8; 2 * 4096];
            let mut store = SliceStore::new(&mut mem, 4096);
            let mut rx = ProvisionReceiver::new(Some("m"));
            let mut stream = Vec::new();
            if offer_first {
                stream.extend(frame(&Message::ProvisionOffer {
                    model_id: "m",
                    arch_hash: [1; 32],
                    ticket_len: 2000,
                    tickets: 2,
                }));
            }
            stream.extend(garbage);
            let mut tx = [0u8; MAX_FRAME_SIZE];
            'feed: for part in stream.chunks(split) {
                let mut rest = part;
                while !rest.is_empty() {
                    while let Ok(Some(_)) = rx.poll_transmit(&mut tx) {}
                    let before = rest.len();
                    match rx.receive(&mut store, &mut rest) {
                        Err(_) => break 'feed,
                        Ok(_) if rest.len() == before => break,
                        Ok(_) => {}
                    }
                }
            }
            // Random bytes cannot complete a ticket with a valid header for [1; 32].
            proptest::prop_assert_eq!(live_tickets(&mut store), 0);
        }
    }
}
