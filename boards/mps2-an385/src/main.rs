//! The emulated board: the same core-nostd client a Pico W or an ESP32-C3 runs, as firmware for
//! the Cortex-M machine QEMU emulates (`mps2-an385`), built for `thumbv6m-none-eabi` so that the
//! instructions QEMU counts are those an RP2040 would execute.
//!
//! Links (QEMU `-serial` options, in order): UART0 is the connection to cloud-server (a TCP socket
//! on the host), UART1 the provisioning link (`edge-client provision --link tcp:...`). Output goes
//! to the host's stdout through semihosting, one line per fact, for the integration test and the
//! report to parse:
//!
//! ```text
//! provisioned <n> <model>
//! inference <k> slot <s> label <l> logits <l0,l1,...> instructions <i> sent <bytes> received <bytes>
//! memory static_ram <bytes> stack_peak <bytes> flash <bytes> ticket_len <bytes>
//! done
//! ```
//!
//! Inference `k` classifies image `k` of the bundled 200-image Fashion-MNIST sample (the "sensor").
#![no_std]
#![no_main]

use core::cell::RefCell;
use core::fmt::Write as _;

use core_nostd::provision::{self, live_ticket, SharedStore, SliceStore, SlotBody, TicketStore};
use core_nostd::session::{self, ClientSession, PixelInput};
use core_nostd::ticket::ticket_len;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};

use board_mps2_an385::clock::{self, Metered};
use board_mps2_an385::memory;
use board_mps2_an385::uart::{self, Uart};

/// The bundled test images (IDX: 16-byte header, then 28 x 28 bytes per image).
static IMAGES: &[u8] = include_bytes!("../../../edge-client/data/fashion-mnist-t10k-200-images-idx3-ubyte");
const IDX_HEADER: usize = 16;

extern "C" {
    static _ticket_store_start: u8;
    static _ticket_store_end: u8;
}

/// Slot size: the longest bundled ticket (`minionn-sq`, 165 528 bytes), rounded up.
const SLOT_LEN: u32 = 168 * 1024;

#[entry]
fn main() -> ! {
    memory::paint_stack();
    let code = match run() {
        Ok(()) => {
            hprintln!("done");
            debug::EXIT_SUCCESS
        }
        Err(Failed) => debug::EXIT_FAILURE,
    };
    debug::exit(code);
    loop {
        cortex_m::asm::wfi();
    }
}

/// The run failed; the reason is already printed.
struct Failed;

/// Print why a step failed (the host test shows the board's output).
fn fail(what: &str, e: impl core::fmt::Debug) -> Failed {
    hprintln!("error: {}: {:?}", what, e);
    Failed
}

fn run() -> Result<(), Failed> {
    let peripherals = cortex_m::Peripherals::take().ok_or_else(|| fail("peripherals", "taken"))?;
    clock::start(peripherals.SYST);

    // SAFETY: the TICKETS region of memory.x is reserved for this store: nothing else in the
    // program refers to it, and this is the only slice made over it.
    let store_mem = unsafe {
        let start = &raw const _ticket_store_start as *mut u8;
        let len = &raw const _ticket_store_end as usize - start as usize;
        core::slice::from_raw_parts_mut(start, len)
    };
    let store = RefCell::new(SliceStore::new(store_mem, SLOT_LEN));
    let mut rx = [0u8; 1024];

    let mut provisioning = Uart::new(uart::UART1);
    let got =
        provision::blocking::receive_tickets(&mut provisioning, &mut SharedStore(&store), None, &mut rx)
            .map_err(|e| fail("provisioning", e))?;
    hprintln!("provisioned {} {}", got.stored, got.model_id.as_str());

    let mut handle = SharedStore(&store);
    let slots = handle.slots();
    let Some(first) = (0..slots).find_map(|s| live_ticket(&mut handle, s)) else {
        return Err(fail("tickets", "none live"));
    };
    let mut link = Metered::new(Uart::new(uart::UART0));
    let mut session: ClientSession<SlotBody<SharedStore<'_, SliceStore<'_>>>, PixelInput<'static>> =
        ClientSession::new(&got.model_id, first.arch_hash).map_err(|e| fail("session", e))?;
    let arch =
        session::blocking::handshake(&mut session, &mut link, &mut rx).map_err(|e| fail("handshake", e))?;
    let (pixels, len) = (arch.input_len(), ticket_len(arch) as u32);

    let mut k = 0;
    for slot in 0..slots {
        let Some(header) = live_ticket(&mut handle, slot) else { continue };
        if header.arch_hash != first.arch_hash {
            continue;
        }
        let image = IMAGES
            .get(IDX_HEADER + k * pixels..IDX_HEADER + (k + 1) * pixels)
            .ok_or_else(|| fail("image", k))?;
        // Single use: the ticket is dead in "flash" before its first value is used.
        handle.burn(slot).map_err(|e| fail("burn", e))?;
        let (t0, io0, sent0, recv0) = (clock::now(), link.io_ticks(), link.bytes_sent, link.bytes_received);
        let body = SlotBody::new(handle, slot, len);
        let logits =
            session::blocking::infer(&mut session, &mut link, header, body, PixelInput::new(image), &mut rx)
                .map_err(|e| fail("inference", e))?;
        let ticks = (clock::now() - t0) - (link.io_ticks() - io0);
        let mut line = heapless::String::<512>::new();
        let mut best = 0;
        for (i, v) in logits.iter().enumerate() {
            if v.to_i64_centered() > logits[best].to_i64_centered() {
                best = i;
            }
            let _ = write!(line, "{}{}", if i == 0 { "" } else { "," }, v.to_i64_centered());
        }
        hprintln!(
            "inference {} slot {} label {} logits {} instructions {} sent {} received {}",
            k,
            slot,
            best,
            line.as_str(),
            ticks * clock::INSTRUCTIONS_PER_TICK,
            link.bytes_sent - sent0,
            link.bytes_received - recv0
        );
        k += 1;
    }
    hprintln!(
        "memory static_ram {} stack_peak {} flash {} ticket_len {}",
        memory::static_ram(),
        memory::stack_peak(),
        memory::flash_used(),
        len
    );
    Ok(())
}
