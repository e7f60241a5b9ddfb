//! The inference loop: spend every live ticket on one private inference of the sample image.
//!
//! One round: pick the first live ticket, pin the session to the architecture hash in its header
//! (core-nostd refuses a server whose model does not match), connect to the server, handshake,
//! then for every live ticket made for that architecture: burn it in flash, run the online
//! stage with it, log the label and the logits. Tickets made for another model wait for a later
//! round; a malformed ticket is discarded (burned) so that it cannot block the store.
//!
//! Failures are never fatal: a lost connection or a refused session ends the round, the loop
//! waits a little (or until new tickets arrive over USB) and starts over. A ticket is burned
//! before its inference starts, so a failure in the middle spends it; that is the price of
//! single use (DESIGN §2: reuse must be refused, so a ticket that might have been seen by the
//! server is never offered twice).

use core::fmt;

use core_nostd::provision::{live_ticket, SlotBody, TicketStore};
use core_nostd::session::{asynch, ClientSession, DriveError, PixelInput};
use core_nostd::ticket::{ticket_len, TicketHeader};
use core_nostd::Fp;
use embassy_futures::select::select;
use embassy_net::tcp::{ConnectError, TcpSocket};
use embassy_net::{IpAddress, IpEndpoint, Stack};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer};
use log::{info, warn};

use crate::store::{Store, StoreError, StoreHandle, SLOTS};
use crate::{config, net};

/// Fashion-MNIST test image 0 (an ankle boot, label 9): 28 x 28 pixels, 8 bits each.
static SAMPLE: &[u8; 784] = include_bytes!("sample.bin");

/// Raised by the provisioning task when new tickets were stored.
pub static TICKETS_ADDED: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// How long to wait before retrying a failed round.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Socket inactivity timeout: the server answers each layer in well under a second.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of TCP buffering each way; a frame is at most ~1.1 KB.
const TCP_BUF: usize = 4096;
/// The session's receive buffer (one TCP read).
const RX_BUF: usize = 1536;

type Session<'h> = ClientSession<SlotBody<&'h mut StoreHandle>, PixelInput<'static>>;

/// Why a round ended early.
#[derive(Debug)]
enum RoundError {
    /// TCP connect failed.
    Connect(ConnectError),
    /// The session could not be set up (model id too long).
    Setup(core_nostd::session::SessionError),
    /// Handshake or inference failed (link, protocol, server refusal).
    Session(DriveError<embassy_net::tcp::Error>),
    /// The ticket store failed.
    Store(StoreError),
}

impl fmt::Display for RoundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoundError::Connect(e) => write!(f, "connect to {}: {:?}", config::SERVER_ADDR, e),
            RoundError::Setup(e) => write!(f, "session setup: {e}"),
            RoundError::Session(e) => write!(f, "{e}"),
            RoundError::Store(e) => write!(f, "ticket store: {e:?}"),
        }
    }
}

/// Runs forever.
pub async fn run(store: &'static Store, mut control: cyw43::Control<'static>, stack: Stack<'static>) -> ! {
    let mut tcp_rx = [0u8; TCP_BUF];
    let mut tcp_tx = [0u8; TCP_BUF];
    let mut rx = [0u8; RX_BUF];
    loop {
        if store.live_count() == 0 {
            info!("inference: no live tickets; provision some over USB");
            TICKETS_ADDED.wait().await;
            continue;
        }
        net::join(&mut control, stack).await;
        match round(store, stack, &mut tcp_rx, &mut tcp_tx, &mut rx).await {
            Ok(0) => {}
            Ok(n) => info!("inference: round done, {n} ticket(s) spent, {} left", store.live_count()),
            Err(e) => warn!("inference: round failed: {e}"),
        }
        // Retry later, or at once when new tickets arrive.
        select(Timer::after(RETRY_AFTER), TICKETS_ADDED.wait()).await;
    }
}

/// The first live ticket at or after slot `from`.
fn next_live(store: &'static Store, from: u32) -> Option<(u32, TicketHeader)> {
    (from..SLOTS).find_map(|slot| live_ticket(&mut store.handle(), slot).map(|h| (slot, h)))
}

/// One connection: handshake, then every live ticket of the pinned architecture.
async fn round(
    store: &'static Store,
    stack: Stack<'static>,
    tcp_rx: &mut [u8],
    tcp_tx: &mut [u8],
    rx: &mut [u8],
) -> Result<usize, RoundError> {
    // Pin the session to the architecture of the first live ticket.
    let Some((_, first)) = next_live(store, 0) else { return Ok(0) };
    let arch_hash = first.arch_hash;

    let (ip, port) = config::SERVER;
    let endpoint = IpEndpoint::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), port);
    let mut socket = TcpSocket::new(stack, tcp_rx, tcp_tx);
    socket.set_timeout(Some(SOCKET_TIMEOUT));
    info!("inference: connecting to {}", config::SERVER_ADDR);
    socket.connect(endpoint).await.map_err(RoundError::Connect)?;

    // `SlotBody` borrows its store handle mutably for as long as the session's type says, i.e.
    // for the whole round; one handle per slot gives each ticket a borrow of its own (a slot is
    // used at most once per round: it is burned before use).
    let mut handles = [store.handle(); SLOTS as usize];
    let mut handles = handles.each_mut().map(Some);

    let mut session: Session<'_> = Session::new(config::MODEL_ID, arch_hash).map_err(RoundError::Setup)?;
    let arch = asynch::handshake(&mut session, &mut socket, rx).await.map_err(RoundError::Session)?;
    info!(
        "inference: server ready, model '{}', {} inputs, {} outputs, {} fraction bits",
        arch.model_id,
        arch.input_len(),
        arch.output_len(),
        arch.frac_bits
    );
    let frac_bits = u32::from(arch.frac_bits);
    let len = u32::try_from(ticket_len(arch)).unwrap_or(u32::MAX);

    let mut spent = 0;
    let mut from = 0;
    loop {
        // Exclusive use of the store from the burn to the end of the inference (see `store`).
        let exclusive = store.session().await;
        let Some((slot, header)) = next_live(store, from) else { break };
        from = slot + 1;
        if header.arch_hash != arch_hash {
            // Made for another model: left for a round pinned to that one.
            continue;
        }
        let Some(handle) = handles.get_mut(slot as usize).and_then(Option::take) else { continue };
        // Single use: burned in flash before a single byte of the inference is sent.
        handle.burn(slot).map_err(RoundError::Store)?;
        spent += 1;
        let body = SlotBody::new(handle, slot, len);
        let result =
            asynch::infer(&mut session, &mut socket, header, body, PixelInput::new(SAMPLE), rx).await;
        drop(exclusive);
        let logits = result.map_err(RoundError::Session)?;
        report(slot, &header, logits, frac_bits);
    }
    socket.close();
    // Let the FIN go out before the socket (and its buffers) is dropped.
    let _ = socket.flush().await;
    Ok(spent)
}

/// Fashion-MNIST class names, for models with 10 outputs (all bundled ones).
const CLASSES: [&str; 10] = core_nostd::labels::FASHION_MNIST;

/// Logs the label (arg-max) and the logits of one inference.
fn report(slot: u32, header: &TicketHeader, logits: &[Fp], frac_bits: u32) {
    let values = logits.iter().map(|&x| core_nostd::fixed_point::decode_scaled(x));
    let Some((label, _)) = values.clone().enumerate().max_by_key(|&(_, v)| v) else {
        warn!("inference: the model has no outputs");
        return;
    };
    let name = if logits.len() == CLASSES.len() { CLASSES[label] } else { "" };
    info!("inference: ticket {} (slot {slot}): label {label} {name}", Hex(&header.ticket_id));
    let mut line: heapless::String<512> = heapless::String::new();
    for v in values {
        // A full line only truncates the log output, never the result.
        let _ = fmt::Write::write_fmt(&mut line, format_args!(" {}", FixedDisplay(v, frac_bits)));
    }
    info!("inference: logits [{} ]", line);
}

/// Bytes as lowercase hex.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A fixed-point value as a decimal with three places, without pulling float formatting into
/// the firmware.
struct FixedDisplay(i64, u32);

impl fmt::Display for FixedDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FixedDisplay(v, frac_bits) = *self;
        // `Architecture::validate` bounds frac_bits far lower; the clamp keeps the shifts defined.
        let frac_bits = frac_bits.min(62);
        let sign = if v < 0 { "-" } else { "" };
        let m = v.unsigned_abs();
        let int = m >> frac_bits;
        let frac = m & ((1u64 << frac_bits) - 1);
        // Round to three decimal places.
        let milli = ((u128::from(frac) * 1000 + (1u128 << frac_bits) / 2) >> frac_bits) as u64;
        let (int, milli) = if milli == 1000 { (int + 1, 0) } else { (int, milli) };
        write!(f, "{sign}{int}.{milli:03}")
    }
}
