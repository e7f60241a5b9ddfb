//! Instruction counting with SysTick under `qemu -icount shift=0`.
//!
//! With `-icount shift=0` QEMU advances virtual time by exactly 1 ns per guest instruction, and
//! SysTick (clocked from the 25 MHz system clock of the MPS2 images) counts virtual time: one tick
//! is 40 instructions, deterministically, whatever the host is doing. A 24-bit counter wraps every
//! 0.67 s of virtual time, so the SysTick exception extends it to 64 bits.
//!
//! [`Metered`] wraps a link and books the time spent inside its `read`/`write` calls (waiting for
//! the server, moving bytes through the UART) separately, so what is left is the client's own work:
//! masking, the square shares, reading the ticket, framing and parsing.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

/// System clock of the MPS2 FPGA images in QEMU.
pub const SYSCLK_HZ: u64 = 25_000_000;
/// Guest instructions per SysTick tick with `-icount shift=0` (1 ns per instruction).
pub const INSTRUCTIONS_PER_TICK: u64 = 1_000_000_000 / SYSCLK_HZ;
const RELOAD: u32 = 0x00FF_FFFF;

static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    // The only writer; ARMv6-M has no atomic read-modify-write, and needs none here.
    WRAPS.store(WRAPS.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Start the free-running counter.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Ticks since [`start`].
pub fn now() -> u64 {
    loop {
        let before = WRAPS.load(Ordering::Relaxed);
        let current = SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == before {
            return u64::from(before) * (u64::from(RELOAD) + 1) + u64::from(RELOAD - current);
        }
    }
}

/// A link whose calls are timed, to subtract I/O from a measurement.
#[derive(Debug)]
pub struct Metered<L> {
    pub link: L,
    io_ticks: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl<L> Metered<L> {
    pub fn new(link: L) -> Self {
        Metered { link, io_ticks: 0, bytes_sent: 0, bytes_received: 0 }
    }

    /// Ticks spent inside the link so far.
    pub fn io_ticks(&self) -> u64 {
        self.io_ticks
    }

    fn timed<R>(&mut self, f: impl FnOnce(&mut L) -> R) -> R {
        let t0 = now();
        let r = f(&mut self.link);
        self.io_ticks += now() - t0;
        r
    }
}

impl<L: embedded_io::ErrorType> embedded_io::ErrorType for Metered<L> {
    type Error = L::Error;
}

impl<L: embedded_io::Read> embedded_io::Read for Metered<L> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, L::Error> {
        let n = self.timed(|l| l.read(buf))?;
        self.bytes_received += n as u64;
        Ok(n)
    }
}

impl<L: embedded_io::Write> embedded_io::Write for Metered<L> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, L::Error> {
        let n = self.timed(|l| l.write(buf))?;
        self.bytes_sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), L::Error> {
        self.timed(|l| l.flush())
    }
}
