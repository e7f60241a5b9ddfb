//! The CMSDK APB UART of the MPS2 FPGA images, as a blocking `embedded-io` byte link.
//!
//! QEMU connects each UART to a character device (here: TCP sockets), and only hands the UART a
//! byte when its one-byte receive register is empty, so the link has flow control end to end: a
//! board busy computing never loses a byte. Programmed I/O, no interrupts: this board measures
//! the client's instruction count, and polling keeps the I/O out of the computation.

use core::convert::Infallible;

/// Register block offsets (ARM CMSDK APB UART, DDI0479).
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
const CTRL_TX_EN: u32 = 1 << 0;
const CTRL_RX_EN: u32 = 1 << 1;

/// UART0 of mps2-an385: the link to the server.
pub const UART0: usize = 0x4000_4000;
/// UART1 of mps2-an385: the provisioning link.
pub const UART1: usize = 0x4000_5000;

/// One UART, by base address.
#[derive(Debug)]
pub struct Uart {
    base: usize,
}

impl Uart {
    /// Enable transmit and receive. `base` must be one of the board's UART register blocks.
    pub fn new(base: usize) -> Uart {
        let uart = Uart { base };
        // 25 MHz / 217 = 115200 baud on hardware; QEMU ignores the rate but wants >= 16.
        uart.write_reg(BAUDDIV, 217);
        uart.write_reg(CTRL, CTRL_TX_EN | CTRL_RX_EN);
        uart
    }

    fn read_reg(&self, offset: usize) -> u32 {
        // SAFETY: `base` is a UART register block of this machine (see `new`); the registers are
        // 32-bit, aligned, and reading them has no effect beyond the UART.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write_reg(&self, offset: usize, value: u32) {
        // SAFETY: as in `read_reg`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    fn try_read_byte(&self) -> Option<u8> {
        if self.read_reg(STATE) & STATE_RX_FULL != 0 {
            Some(self.read_reg(DATA) as u8)
        } else {
            None
        }
    }
}

impl embedded_io::ErrorType for Uart {
    type Error = Infallible;
}

impl embedded_io::Read for Uart {
    /// Block until `buf` is full. The core-nostd drivers ask for exactly the rest of the frame
    /// they are receiving, so this never waits for bytes that are not coming, and the pattern of
    /// calls (hence the instruction count) does not depend on host timing.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        for b in buf.iter_mut() {
            *b = loop {
                if let Some(b) = self.try_read_byte() {
                    break b;
                }
            };
        }
        Ok(buf.len())
    }
}

impl embedded_io::Write for Uart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &b in buf {
            while self.read_reg(STATE) & STATE_TX_FULL != 0 {}
            self.write_reg(DATA, u32::from(b));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        while self.read_reg(STATE) & STATE_TX_FULL != 0 {}
        Ok(())
    }
}
