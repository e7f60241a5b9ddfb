//! Spend the tickets in flash: one TCP connection, one handshake, one inference per live ticket.
//!
//! All protocol work is core-nostd's (`session::asynch`); this module decides the order of the
//! board-side steps that the protocol cannot see:
//!
//! - The session is pinned to the architecture hash in the first live ticket's header, so a
//!   server that serves another model is refused before any ticket is touched.
//! - A ticket is *burnt* in flash (magic cleared) and the burn is read back **before** the
//!   inference that uses it starts: if the board loses power or the connection drops halfway,
//!   the ticket is gone, never reused (DESIGN §2: a ticket is single-use). A ticket made for
//!   another architecture is skipped, not burnt.
//! - The ticket body streams from flash (`SlotBody`, 64 bytes per read); RAM holds one frame
//!   and one chunk of values, never a ticket.

use core::net::SocketAddrV4;

use core_nostd::provision::{live_ticket, SlotBody, TicketStore};
use core_nostd::session::{asynch, ClientSession, DriveError, PixelInput};
use core_nostd::ticket::ticket_len;
use core_nostd::Fp;
use embassy_net::tcp::{ConnectError, TcpSocket};
use embassy_net::Stack;
use embassy_time::Duration;
use esp_println::println;

use crate::config;
use crate::flash_store::{FlashTickets, StoreError, MAX_SLOTS, SLOT_LEN};

/// Socket buffers: one frame (~1.2 KB) each way fits with room to spare.
const SOCKET_BUF: usize = 2048;
/// Receive buffer the session driver reads into.
const RX_BUF: usize = 1024;
/// Inactivity after which the connection is given up.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a run stopped.
#[derive(Debug)]
pub enum RunError {
    /// `SERVER_ADDR` does not parse.
    Config(config::ConfigError),
    /// The TCP connection could not be opened.
    Connect(ConnectError),
    /// The handshake or an inference failed (the ticket in use, if any, is spent).
    Session(DriveError<embassy_net::tcp::Error>),
    /// The server's model needs tickets longer than a slot.
    TicketTooLong(usize),
    /// Flash failed.
    Store(StoreError),
    /// The burn did not stick: the ticket still reads live, so it is not used.
    BurnFailed(u32),
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "{e}"),
            RunError::Connect(e) => write!(f, "connect: {e:?}"),
            RunError::Session(e) => write!(f, "session: {e}"),
            RunError::TicketTooLong(n) => write!(f, "tickets of {n} bytes exceed a slot"),
            RunError::Store(e) => write!(f, "ticket store: {e}"),
            RunError::BurnFailed(slot) => write!(f, "slot {slot} still live after burning"),
        }
    }
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        RunError::Store(e)
    }
}

impl From<DriveError<embassy_net::tcp::Error>> for RunError {
    fn from(e: DriveError<embassy_net::tcp::Error>) -> Self {
        RunError::Session(e)
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunReport {
    /// Inferences completed.
    pub inferences: u32,
    /// Live tickets skipped because they were made for another architecture.
    pub skipped: u32,
}

/// Number of live tickets.
pub fn live_count(tickets: &FlashTickets) -> u32 {
    core_nostd::provision::live_tickets(&mut tickets.handle())
}

/// Connect to the server and run one inference of `image` per live ticket.
pub async fn run(stack: Stack<'_>, tickets: &FlashTickets, image: &[u8]) -> Result<RunReport, RunError> {
    let server: SocketAddrV4 = config::server_addr().map_err(RunError::Config)?;

    // One handle per slot, made before the session: a ticket body borrows its handle for as
    // long as the session lives (see `flash_store`).
    let mut handles = [tickets.handle(); MAX_SLOTS];
    let slots = tickets.slot_count() as usize;

    let Some(pin) = handles[..slots]
        .iter_mut()
        .enumerate()
        .find_map(|(slot, h)| live_ticket(h, slot as u32))
        .map(|header| header.arch_hash)
    else {
        return Ok(RunReport { inferences: 0, skipped: 0 });
    };

    let mut socket_rx = [0u8; SOCKET_BUF];
    let mut socket_tx = [0u8; SOCKET_BUF];
    let mut socket = TcpSocket::new(stack, &mut socket_rx, &mut socket_tx);
    socket.set_timeout(Some(SOCKET_TIMEOUT));
    println!("session: connecting to {server}");
    socket.connect(server).await.map_err(RunError::Connect)?;

    let mut rx = [0u8; RX_BUF];
    let mut session =
        ClientSession::new(config::MODEL_ID, pin).map_err(|e| RunError::Session(DriveError::Session(e)))?;
    let arch = asynch::handshake(&mut session, &mut socket, &mut rx).await?;
    let len = ticket_len(arch);
    let frac_bits = u32::from(arch.frac_bits);
    println!("session: ready, model {} ({} inputs, {}-byte tickets)", arch.model_id, arch.input_len(), len);
    let len = u32::try_from(len).ok().filter(|&l| l <= SLOT_LEN).ok_or(RunError::TicketTooLong(len))?;

    let mut report = RunReport { inferences: 0, skipped: 0 };
    for (slot, handle) in handles[..slots].iter_mut().enumerate() {
        let slot = slot as u32;
        let Some(header) = live_ticket(handle, slot) else { continue };
        if header.arch_hash != pin {
            println!("ticket {slot}: made for another architecture, kept for later");
            report.skipped += 1;
            continue;
        }
        // Single use: burn first, check the burn, only then start.
        handle.burn(slot)?;
        if live_ticket(handle, slot).is_some() {
            return Err(RunError::BurnFailed(slot));
        }
        println!("ticket {slot}: burnt, running inference");
        let body = SlotBody::new(handle, slot, len);
        let started = embassy_time::Instant::now();
        let logits =
            asynch::infer(&mut session, &mut socket, header, body, PixelInput::new(image), &mut rx).await?;
        let ms = started.elapsed().as_millis();
        log_result(slot, logits, frac_bits, ms);
        report.inferences += 1;
    }
    socket.close();
    // Let the FIN go out before the buffers are dropped.
    let _ = embassy_time::with_timeout(Duration::from_secs(2), socket.flush()).await;
    Ok(report)
}

/// Log the label (arg-max) and the logits of one inference.
fn log_result(slot: u32, logits: &[Fp], frac_bits: u32, ms: u64) {
    let scale = (1u64 << frac_bits) as f32;
    match argmax(logits) {
        Some(label) => println!("ticket {slot}: label {label} in {ms} ms"),
        None => println!("ticket {slot}: the model has no outputs ({ms} ms)"),
    }
    for (i, v) in logits.iter().enumerate() {
        let x = v.to_i64_centered();
        println!("  logit[{i}] = {:.4} ({x} / 2^{frac_bits})", x as f32 / scale);
    }
}

/// Index of the largest logit (signed, centred representatives); `None` if there are none.
fn argmax(logits: &[Fp]) -> Option<usize> {
    logits.iter().enumerate().max_by_key(|(_, v)| v.to_i64_centered()).map(|(i, _)| i)
}
