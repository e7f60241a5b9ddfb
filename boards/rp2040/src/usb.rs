//! USB: the provisioning link and the log console.
//!
//! The Pico W's only wired link to a host is its USB port, so it carries two things, as two
//! CDC-ACM ("USB serial") interfaces of one composite device:
//!
//! 1. **provisioning** (first interface, e.g. `/dev/ttyACM0`): a binary byte stream on which
//!    `edge-client provision` sends tickets using the core-nostd provisioning frames. Nothing
//!    else is ever written to it, so a log line can never corrupt a frame.
//! 2. **log** (second interface, e.g. `/dev/ttyACM1`): human-readable `log` lines
//!    (`embassy-usb-logger`), to be read with any terminal (`picocom`, `screen`, `cat`).
//!
//! A separate interface for logs costs two endpoints and ~1 KB of RAM and keeps both the host
//! tool and the firmware free of multiplexing code.
//!
//! [`UsbLink`] adapts the provisioning interface to `embedded_io_async::{Read, Write}` (what the
//! core-nostd drivers take) and adds two things the protocol code must not care about: an idle
//! timeout, so that a host that vanishes mid-transfer cannot hold the ticket store forever, and
//! [`UsbLink::wait_for_host`], which waits for the first bytes *without* consuming them, so the
//! firmware only locks the ticket store once a host is actually talking.

use embassy_rp::peripherals::USB;
use embassy_rp::usb::Driver;
use embassy_time::{with_timeout, Duration};
use embassy_usb::class::cdc_acm::{CdcAcmClass, Receiver, Sender, State};
use embassy_usb::driver::EndpointError;
use embassy_usb::{Builder, Config, UsbDevice};
use static_cell::StaticCell;

/// The HAL's USB driver, as used by every USB object here.
pub type UsbDriver = Driver<'static, USB>;

/// Full-speed bulk endpoints carry at most 64 bytes per packet.
const MAX_PACKET: u16 = 64;

/// How long the provisioning host may stay silent (or not read) in the middle of a transfer.
/// Generous, because the host may run the HE preprocessing of the next ticket between two
/// chunks; short enough that a vanished host does not hold the ticket store for long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The built USB device and its two interfaces.
pub struct Usb {
    /// Must be run (forever) for anything on USB to work.
    pub device: UsbDevice<'static, UsbDriver>,
    /// Binary provisioning stream.
    pub provision: UsbLink,
    /// Text log console.
    pub log: CdcAcmClass<'static, UsbDriver>,
}

/// Builds the composite device. Call once (the descriptor buffers are `static`).
pub fn build(driver: UsbDriver) -> Usb {
    // 0xc0de:0xcafe is the test VID:PID used throughout the embassy examples; a product shipped to
    // others needs an ID of its own.
    let mut config = Config::new(0xc0de, 0xcafe);
    config.manufacturer = Some("private-inference");
    config.product = Some("Pico W inference client");
    config.serial_number = Some("pico-w-client");
    config.max_power = 100;
    config.max_packet_size_0 = 64;
    // Interface association descriptors: needed for two CDC functions in one device (Windows).
    config.device_class = 0xEF;
    config.device_sub_class = 0x02;
    config.device_protocol = 0x01;
    config.composite_with_iads = true;

    static CONFIG_DESC: StaticCell<[u8; 256]> = StaticCell::new();
    static BOS_DESC: StaticCell<[u8; 256]> = StaticCell::new();
    static MSOS_DESC: StaticCell<[u8; 0]> = StaticCell::new();
    static CONTROL_BUF: StaticCell<[u8; 64]> = StaticCell::new();
    static PROVISION_STATE: StaticCell<State<'static>> = StaticCell::new();
    static LOG_STATE: StaticCell<State<'static>> = StaticCell::new();

    let mut builder = Builder::new(
        driver,
        config,
        CONFIG_DESC.init([0; 256]),
        BOS_DESC.init([0; 256]),
        MSOS_DESC.init([]),
        CONTROL_BUF.init([0; 64]),
    );
    // Interface order fixes the host's enumeration order: provisioning first.
    let provision = CdcAcmClass::new(&mut builder, PROVISION_STATE.init(State::new()), MAX_PACKET);
    let log = CdcAcmClass::new(&mut builder, LOG_STATE.init(State::new()), MAX_PACKET);
    let device = builder.build();
    let (tx, rx) = provision.split();
    Usb { device, provision: UsbLink { tx, rx, buf: [0; MAX_PACKET as usize], start: 0, end: 0 }, log }
}

/// Why the provisioning link failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsbLinkError {
    /// The host deconfigured the device (cable pulled, port reset).
    Disconnected,
    /// The host stopped talking for longer than the idle timeout.
    Idle,
}

impl core::fmt::Display for UsbLinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UsbLinkError::Disconnected => write!(f, "USB host disconnected"),
            UsbLinkError::Idle => write!(f, "USB host idle for too long"),
        }
    }
}

impl core::error::Error for UsbLinkError {}

impl embedded_io_async::Error for UsbLinkError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        match self {
            UsbLinkError::Disconnected => embedded_io_async::ErrorKind::NotConnected,
            UsbLinkError::Idle => embedded_io_async::ErrorKind::TimedOut,
        }
    }
}

/// The provisioning interface as a byte stream (one packet of read-ahead).
pub struct UsbLink {
    tx: Sender<'static, UsbDriver>,
    rx: Receiver<'static, UsbDriver>,
    buf: [u8; MAX_PACKET as usize],
    start: usize,
    end: usize,
}

impl UsbLink {
    /// Waits until the host has sent at least one byte, without consuming it. Never times out.
    pub async fn wait_for_host(&mut self) {
        while self.start == self.end {
            self.rx.wait_connection().await;
            if let Ok(n) = self.rx.read_packet(&mut self.buf).await {
                self.start = 0;
                self.end = n;
            }
        }
    }

    /// Discards input until the host has sent nothing for `quiet` (after a failed transfer,
    /// so that its tail is not taken for the start of the next one).
    pub async fn drain_until_quiet(&mut self, quiet: Duration) {
        self.start = 0;
        self.end = 0;
        let mut scratch = [0u8; MAX_PACKET as usize];
        while let Ok(Ok(_)) = with_timeout(quiet, self.rx.read_packet(&mut scratch)).await {}
    }
}

fn map_endpoint_error(e: EndpointError) -> UsbLinkError {
    match e {
        // Our buffers are one full packet, so an overflow cannot happen; treat it as a broken
        // link rather than panicking.
        EndpointError::BufferOverflow | EndpointError::Disabled => UsbLinkError::Disconnected,
    }
}

impl embedded_io_async::ErrorType for UsbLink {
    type Error = UsbLinkError;
}

impl embedded_io_async::Read for UsbLink {
    async fn read(&mut self, out: &mut [u8]) -> Result<usize, UsbLinkError> {
        if out.is_empty() {
            return Ok(0);
        }
        // A zero-length packet is not end-of-stream on USB; `Ok(0)` is, for `Read`: skip it.
        while self.start == self.end {
            let n = with_timeout(IDLE_TIMEOUT, self.rx.read_packet(&mut self.buf))
                .await
                .map_err(|_| UsbLinkError::Idle)?
                .map_err(map_endpoint_error)?;
            self.start = 0;
            self.end = n;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl embedded_io_async::Write for UsbLink {
    async fn write(&mut self, data: &[u8]) -> Result<usize, UsbLinkError> {
        let n = data.len().min(MAX_PACKET as usize);
        with_timeout(IDLE_TIMEOUT, self.tx.write_packet(&data[..n]))
            .await
            .map_err(|_| UsbLinkError::Idle)?
            .map_err(map_endpoint_error)?;
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), UsbLinkError> {
        Ok(())
    }
}
