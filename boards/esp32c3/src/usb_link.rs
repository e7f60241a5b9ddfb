//! The provisioning link: the chip's built-in USB-Serial-JTAG port.
//!
//! esp-hal's async `UsbSerialJtag` already speaks `embedded-io-async`, which is what
//! core-nostd's provisioning receiver drives. This wrapper adds the two things a board needs
//! that the receiver leaves to its caller:
//!
//! - a *window*: at boot the board waits a few seconds for a host to start sending; if none
//!   does, it goes on to inference instead of blocking forever. The first bytes read while
//!   waiting are replayed to the receiver.
//! - an *idle timeout*: a host that disappears mid-transfer (cable pulled, tool killed) must not
//!   hang the board; the transfer then fails, and the half-written slot stays dead (its header
//!   page is written last).
//!
//! Nothing else may write to the port while provisioning runs: esp-println shares it, so the
//! firmware logs nothing between [`UsbLink::wait_for_host`] and the end of the transfer.

use embassy_time::{with_timeout, Duration};
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use esp_hal::usb::usb_serial_jtag::UsbSerialJtag;
use esp_hal::Async;

/// Why the link failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// The host sent or accepted nothing for the idle timeout.
    Idle,
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Idle => write!(f, "USB link idle too long"),
        }
    }
}

impl core::error::Error for LinkError {}

impl embedded_io_async::Error for LinkError {
    fn kind(&self) -> ErrorKind {
        match self {
            LinkError::Idle => ErrorKind::TimedOut,
        }
    }
}

/// Bytes kept from the window read (one USB full-speed packet).
const PREFIX: usize = 64;

/// USB-Serial-JTAG with a boot window and an idle timeout.
pub struct UsbLink<'d> {
    usb: UsbSerialJtag<'d, Async>,
    idle: Duration,
    prefix: [u8; PREFIX],
    prefix_at: usize,
    prefix_len: usize,
}

impl core::fmt::Debug for UsbLink<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UsbLink").field("idle", &self.idle).finish_non_exhaustive()
    }
}

impl<'d> UsbLink<'d> {
    pub fn new(usb: UsbSerialJtag<'d, Async>, idle: Duration) -> Self {
        UsbLink { usb, idle, prefix: [0; PREFIX], prefix_at: 0, prefix_len: 0 }
    }

    /// Wait up to `window` for the host to send something; `true` if it did.
    pub async fn wait_for_host(&mut self, window: Duration) -> bool {
        if self.prefix_at < self.prefix_len {
            return true;
        }
        match with_timeout(window, Read::read(&mut self.usb, &mut self.prefix)).await {
            Ok(Ok(n)) if n > 0 => {
                self.prefix_at = 0;
                self.prefix_len = n;
                true
            }
            _ => false,
        }
    }
}

impl ErrorType for UsbLink<'_> {
    type Error = LinkError;
}

impl Read for UsbLink<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        if self.prefix_at < self.prefix_len {
            let n = (self.prefix_len - self.prefix_at).min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[self.prefix_at..self.prefix_at + n]);
            self.prefix_at += n;
            return Ok(n);
        }
        match with_timeout(self.idle, Read::read(&mut self.usb, buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(never)) => match never {},
            Err(_) => Err(LinkError::Idle),
        }
    }
}

impl Write for UsbLink<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, LinkError> {
        match with_timeout(self.idle, Write::write(&mut self.usb, buf)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(never)) => match never {},
            Err(_) => Err(LinkError::Idle),
        }
    }

    async fn flush(&mut self) -> Result<(), LinkError> {
        match with_timeout(self.idle, Write::flush(&mut self.usb)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(never)) => match never {},
            Err(_) => Err(LinkError::Idle),
        }
    }
}
