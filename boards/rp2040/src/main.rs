//! Raspberry Pi Pico W firmware: the client of the private-inference protocol (DESIGN §4-5).
//!
//! The Pico W (RP2040, Cortex-M0+ at 125 MHz, 264 KB RAM, 2 MB flash, CYW43439 Wi-Fi) is the
//! "small device" of DESIGN §1: it cannot run the HE half of preprocessing, so a provisioner on
//! the user's own host (`edge-client provision`) makes tickets and sends them over USB; the Pico
//! stores them in flash and spends one per online inference against the server over Wi-Fi.
//! All protocol logic (frames, handshake, the online state machine, provisioning frames) is
//! `core-nostd`'s; this crate only moves bytes and owns the hardware:
//!
//! * [`usb`]: a composite USB device, interface 0 the provisioning link, interface 1 the log.
//! * [`store`]: the ticket slots in the upper 1.5 MB of flash, with the single-use burn mark.
//! * [`provision`]: runs core-nostd's provisioning receiver whenever the host talks.
//! * [`net`]: CYW43439 over PIO SPI, embassy-net with DHCP.
//! * [`inference`]: connects to the server and spends every live ticket on the sample image.
//!
//! Everything runs as tasks of one embassy executor on core 0; core 1 stays off (the flash
//! driver would otherwise have to park it during every erase and program).

#![no_std]
#![no_main]

mod config;
mod inference;
mod net;
mod provision;
mod store;
mod usb;

use embassy_executor::Spawner;
use embassy_rp::bind_interrupts;
use embassy_rp::flash::Flash;
use embassy_rp::peripherals::{DMA_CH0, PIO0, USB};
use embassy_time::{Duration, Timer};
use log::{error, info};
use panic_halt as _;
use static_cell::StaticCell;

bind_interrupts!(struct Irqs {
    PIO0_IRQ_0 => embassy_rp::pio::InterruptHandler<PIO0>;
    USBCTRL_IRQ => embassy_rp::usb::InterruptHandler<USB>;
    DMA_IRQ_0 => embassy_rp::dma::InterruptHandler<DMA_CH0>;
});

#[embassy_executor::task]
async fn usb_task(mut device: embassy_usb::UsbDevice<'static, usb::UsbDriver>) -> ! {
    device.run().await
}

#[embassy_executor::task]
async fn log_task(class: embassy_usb::class::cdc_acm::CdcAcmClass<'static, usb::UsbDriver>) -> ! {
    embassy_usb_logger::with_class!(2048, log::LevelFilter::Info, class).await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());

    // USB first: the log console and the provisioning link must work even when Wi-Fi does not.
    let usb = usb::build(embassy_rp::usb::Driver::new(p.USB, Irqs));
    spawner.spawn(usb_task(usb.device).expect("usb task spawns once"));
    spawner.spawn(log_task(usb.log).expect("log task spawns once"));
    // Give a host that already has the log port open a chance to see the banner.
    Timer::after(Duration::from_millis(500)).await;
    info!(
        "pico-w-client {}: model '{}', server {}, wifi '{}'",
        env!("CARGO_PKG_VERSION"),
        config::MODEL_ID,
        config::SERVER_ADDR,
        config::WIFI_SSID
    );

    static STORE: StaticCell<store::Store> = StaticCell::new();
    let store: &'static store::Store =
        STORE.init(store::Store::new(store::TicketFlash::new(Flash::new_blocking(p.FLASH))));
    info!("store: {} live ticket(s) in {} slots", store.live_count(), store::SLOTS);

    spawner.spawn(provision::task(usb.provision, store).expect("provisioning task spawns once"));

    let pins = net::RadioPins {
        pwr: p.PIN_23,
        dio: p.PIN_24,
        cs: p.PIN_25,
        clk: p.PIN_29,
        pio: p.PIO0,
        dma: p.DMA_CH0,
    };
    match net::start(spawner, pins).await {
        Ok((control, stack)) => inference::run(store, control, stack).await,
        Err(e) => {
            // Provisioning over USB keeps working; only inference is impossible.
            error!("network start failed: {:?}", e);
        }
    }
}
