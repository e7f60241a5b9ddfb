//! The emulated board's hardware support, shared by its two programs: the client firmware
//! (`src/main.rs`) and the cost breakdown (`src/bin/costs.rs`).
#![no_std]

pub mod clock;
pub mod memory;
pub mod uart;

use cortex_m_semihosting::{debug, hprintln};

/// Report the panic on the host's stdout and end the emulation with a failure status, so a test
/// sees the reason instead of a hang.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
