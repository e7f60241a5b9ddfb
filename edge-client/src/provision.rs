//! The provisioner (DESIGN §2): a host in the user's trust domain hands tickets to a board that
//! cannot run HE itself, over the board's serial link (USB CDC on a Pico W, USB-Serial-JTAG on an
//! ESP32-C3, a UART bridged to TCP on the emulated board).
//!
//! The board's half is `core_nostd::provision` (it writes each ticket to flash as it arrives and
//! acknowledges it once it is live); this half offers the tickets, streams them in 1 KiB chunks and
//! waits for each acknowledgement, so a ticket leaves the host for good only once the board has it.
//! A ticket the board did not take is handed back to the caller (who returns it to the wallet).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use core_nostd::arch::Architecture;
use core_nostd::ticket::ticket_len;
use core_nostd::wire::{Message, MAX_CHUNK_BYTES};

use crate::tickets::Ticket;
use crate::transport::{Connection, TransportError};

/// Ticket bytes per `TicketBytes` frame (leaves room for the frame's other fields).
const BYTES_PER_FRAME: usize = MAX_CHUNK_BYTES;

/// Why provisioning failed.
#[derive(Debug)]
pub enum ProvisionError {
    Transport(TransportError),
    /// A ticket does not belong to the architecture being provisioned.
    WrongTicket,
    /// The board acknowledged a ticket it was not sent.
    BadAck {
        expected: u32,
        found: u32,
    },
    /// The link could not be opened.
    Open(String),
}

impl std::fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProvisionError::Transport(e) => write!(f, "{e}"),
            ProvisionError::WrongTicket => write!(f, "a ticket of another model"),
            ProvisionError::BadAck { expected, found } => {
                write!(f, "board acknowledged ticket {found}, expected {expected}")
            }
            ProvisionError::Open(e) => write!(f, "cannot open the board link: {e}"),
        }
    }
}

impl std::error::Error for ProvisionError {}

impl From<TransportError> for ProvisionError {
    fn from(e: TransportError) -> Self {
        ProvisionError::Transport(e)
    }
}

/// What a transfer did: the board took `accepted` of the offered tickets; `returned` are those
/// it does not have (not accepted, or not acknowledged before an error) in their original order.
#[derive(Debug)]
pub struct Provisioned {
    pub accepted: usize,
    pub stored: usize,
    pub returned: Vec<Ticket>,
    pub error: Option<ProvisionError>,
}

/// Offer `tickets` (all for `arch`) to a board and stream the ones it accepts.
/// `on_stored(k)` runs after the board acknowledged `k` tickets.
pub fn provision<S: Read + Write>(
    link: &mut Connection<S>,
    arch: &Architecture,
    tickets: Vec<Ticket>,
    mut on_stored: impl FnMut(usize),
) -> Provisioned {
    let len = ticket_len(arch);
    if tickets.iter().any(|t| t.bytes.len() != len || t.header.check_model(arch).is_err()) {
        return Provisioned {
            accepted: 0,
            stored: 0,
            returned: tickets,
            error: Some(ProvisionError::WrongTicket),
        };
    }
    let mut pending = tickets.into_iter();
    let mut done = Provisioned { accepted: 0, stored: 0, returned: Vec::new(), error: None };
    let result = (|| -> Result<(), ProvisionError> {
        link.queue(&Message::ProvisionOffer {
            model_id: &arch.model_id,
            arch_hash: arch.hash(),
            ticket_len: len as u32,
            tickets: pending.len() as u32,
        })?;
        let accepted = link.recv(|m| match m {
            Message::ProvisionAccept { tickets } => Ok(*tickets as usize),
            _ => Err(TransportError::Unexpected("expected ProvisionAccept")),
        })?;
        done.accepted = accepted.min(pending.len());
        for k in 0..done.accepted as u32 {
            let Some(ticket) = pending.next() else { break };
            for (i, bytes) in ticket.bytes.chunks(BYTES_PER_FRAME).enumerate() {
                let offset = (i * BYTES_PER_FRAME) as u32;
                link.queue(&Message::TicketBytes { ticket: k, offset, bytes })?;
            }
            let ack = link.recv(|m| match m {
                Message::TicketStored { ticket } => Ok(*ticket),
                _ => Err(TransportError::Unexpected("expected TicketStored")),
            });
            match ack {
                Ok(found) if found == k => {
                    done.stored += 1;
                    on_stored(done.stored);
                }
                Ok(found) => {
                    done.returned.push(ticket);
                    return Err(ProvisionError::BadAck { expected: k, found });
                }
                Err(e) => {
                    done.returned.push(ticket);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    })();
    done.error = result.err();
    done.returned.extend(pending);
    done
}

/// A link to a board: `tcp:HOST:PORT` (the emulated board's UART bridged by QEMU, a serial-to-TCP
/// bridge) or the path of a serial device (`/dev/ttyACM0`).
pub fn open_link(spec: &str, timeout: Duration) -> Result<Box<dyn ReadWrite>, ProvisionError> {
    if let Some(addr) = spec.strip_prefix("tcp:") {
        let s = TcpStream::connect(addr).map_err(|e| ProvisionError::Open(format!("{addr}: {e}")))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| ProvisionError::Open(e.to_string()))?;
        s.set_write_timeout(Some(timeout)).map_err(|e| ProvisionError::Open(e.to_string()))?;
        s.set_nodelay(true).map_err(|e| ProvisionError::Open(e.to_string()))?;
        return Ok(Box::new(s));
    }
    let port = serialport::new(spec, 115_200)
        .timeout(timeout)
        .open()
        .map_err(|e| ProvisionError::Open(format!("{spec}: {e}")))?;
    // A board may have printed its boot log on the same port: drop it before the offer.
    std::thread::sleep(Duration::from_millis(200));
    port.clear(serialport::ClearBuffer::Input).map_err(|e| ProvisionError::Open(format!("{spec}: {e}")))?;
    Ok(Box::new(port))
}

/// A byte link in both directions.
pub trait ReadWrite: Read + Write + Send {}

impl<T: Read + Write + Send> ReadWrite for T {}
