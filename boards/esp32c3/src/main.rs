//! ESP32-C3 client of the private-inference protocol (DESIGN §2, §4, §5).
//!
//! What happens at boot, and why in this order:
//!
//! 1. **Provisioning window** (USB-Serial-JTAG). The board never runs HE; a host in the user's
//!    trust domain (`edge-client provision`) pushes tickets that land in flash slots. This runs
//!    before Wi-Fi so that nothing else (radio logs, the network) competes for the port or the
//!    flash while tickets are written, and so that tickets pushed now are spent in this boot.
//! 2. **Network**: Wi-Fi station + DHCP (esp-radio, embassy-net).
//! 3. **Inference**: one TCP connection to `SERVER_ADDR`, one handshake, then one private
//!    inference of the sample image per live ticket, each ticket burnt before use.
//!
//! The protocol itself (frames, masks, shares, provisioning frames) is entirely core-nostd's;
//! this crate is plumbing: HAL, radio, flash layout, USB link, logging.
#![no_std]
#![no_main]

mod config;
mod flash_store;
mod inference;
mod net;
mod usb_link;

use core_nostd::provision::asynch::receive_tickets;
use embassy_executor::Spawner;
use embassy_time::{Duration, Timer};
use esp_hal::clock::CpuClock;
use esp_hal::timer::timg::TimerGroup;
use esp_hal::usb::usb_serial_jtag::UsbSerialJtag;
use esp_println::println;
use esp_storage::FlashStorage;

use crate::flash_store::FlashTickets;
use crate::usb_link::UsbLink;

// The app descriptor the ESP-IDF second-stage bootloader (and espflash) require.
esp_bootloader_esp_idf::esp_app_desc!();

/// The input every inference classifies: image 0 of the Fashion-MNIST test set shipped in
/// `edge-client/data` (28x28 8-bit pixels, label 9 "ankle boot").
static SAMPLE_IMAGE: &[u8; 784] = include_bytes!("sample.bin");
/// Its true label, logged next to the prediction.
const SAMPLE_LABEL: usize = 9;

/// How long the board waits at boot for a provisioning host to start sending.
const PROVISION_WINDOW: Duration = Duration::from_secs(10);
/// Silence after which a started provisioning transfer is abandoned.
const PROVISION_IDLE: Duration = Duration::from_secs(30);
/// Attempts to reach the server before giving up until the next boot.
const RUN_ATTEMPTS: u32 = 5;
/// Pause between two attempts.
const RUN_RETRY: Duration = Duration::from_secs(10);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("panic: {info}");
    loop {
        core::hint::spin_loop();
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // esp-radio allocates its buffers and task stacks; core-nostd itself never allocates.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 48 * 1024);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    println!(
        "pi-esp32c3 {}: model {:?}, server {}",
        env!("CARGO_PKG_VERSION"),
        config::MODEL_ID,
        config::SERVER_ADDR
    );

    let tickets = match FlashTickets::new(FlashStorage::new(peripherals.FLASH)) {
        Ok(t) => t,
        Err(e) => halt(format_args!("ticket store: {e}")).await,
    };
    println!(
        "tickets: {} slots at {:#x} ({}), {} live",
        tickets.slot_count(),
        tickets.base(),
        if tickets.is_partition() { "partition `tickets`" } else { "fixed range, no `tickets` partition" },
        inference::live_count(&tickets)
    );

    provision(UsbSerialJtag::new(peripherals.USB_DEVICE).into_async(), &tickets).await;
    if inference::live_count(&tickets) == 0 {
        halt(format_args!("no live tickets: provision some and reset")).await;
    }

    let stack = match net::start(&spawner, peripherals.WIFI) {
        Ok(s) => s,
        Err(e) => halt(format_args!("network: {e}")).await,
    };
    println!("net: waiting for DHCP");
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        println!("net: address {}", cfg.address);
    }

    for attempt in 1..=RUN_ATTEMPTS {
        match inference::run(stack, &tickets, SAMPLE_IMAGE).await {
            Ok(report) => {
                println!(
                    "done: {} inferences (true label of the sample: {SAMPLE_LABEL}), {} tickets skipped",
                    report.inferences, report.skipped
                );
                break;
            }
            Err(e) => println!("run {attempt}/{RUN_ATTEMPTS} failed: {e}"),
        }
        Timer::after(RUN_RETRY).await;
    }
    halt(format_args!("{} live tickets left; provision more and reset", inference::live_count(&tickets)))
        .await
}

/// The provisioning window: if a host speaks within [`PROVISION_WINDOW`], receive its tickets.
async fn provision(usb: UsbSerialJtag<'static, esp_hal::Async>, tickets: &FlashTickets) {
    println!("provision: waiting {} s for `edge-client provision` on USB", PROVISION_WINDOW.as_secs());
    let mut link = UsbLink::new(usb, PROVISION_IDLE);
    if !link.wait_for_host(PROVISION_WINDOW).await {
        println!("provision: no host");
        return;
    }
    // The port carries provisioning frames now: no logging until the transfer is over.
    let mut rx = [0u8; 512];
    // Only tickets for the model this firmware asks the server for are useful here.
    let result = receive_tickets(&mut link, &mut tickets.handle(), Some(config::MODEL_ID), &mut rx).await;
    match result {
        Ok(done) => println!("provision: {} tickets for {} stored", done.stored, done.model_id),
        Err(e) => println!("provision: failed: {e:?}"),
    }
}

/// Log why the board stops, then idle (the executor keeps the Wi-Fi tasks alive).
async fn halt(why: core::fmt::Arguments<'_>) -> ! {
    println!("halt: {why}");
    loop {
        Timer::after(Duration::from_secs(3600)).await;
    }
}
