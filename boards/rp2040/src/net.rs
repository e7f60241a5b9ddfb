//! Wi-Fi and IP: the CYW43439 radio over PIO SPI, and embassy-net with DHCP on top.
//!
//! The Pico W's radio hangs off GPIO 23 (power), 24 (data), 25 (chip select) and 29 (clock)
//! with a half-duplex SPI that the RP2040's SPI blocks cannot speak; `cyw43-pio` runs it on a
//! PIO state machine with DMA. The radio needs its firmware (~225 KB) and CLM blob uploaded at
//! every boot: they come from the `cyw43-firmware` crate and live in this program's flash.
//!
//! The radio also needs an NVRAM file describing the board (crystal, antenna, RF calibration).
//! `cyw43-firmware` 0.1 does not ship it, so the Pico W's (Raspberry Pi's `wifi_nvram_43439.h`
//! from the cyw43-driver, as embassy's `nvram_rp2040.txt` carries it) is spelt out below in the
//! driver's binary format: `key=value` strings, each NUL-terminated, then two NULs.

use cyw43::{Aligned, JoinOptions, A4};
use cyw43_pio::{PioSpi, DEFAULT_CLOCK_DIVIDER};
use embassy_executor::Spawner;
use embassy_net::{Config, Stack, StackResources};
use embassy_rp::clocks::RoscRng;
use embassy_rp::dma;
use embassy_rp::gpio::{Level, Output};
use embassy_rp::peripherals::{DMA_CH0, PIN_23, PIN_24, PIN_25, PIN_29, PIO0};
use embassy_rp::pio::Pio;
use embassy_rp::Peri;
use embassy_time::{Duration, Timer};
use log::{info, warn};
use static_cell::StaticCell;

use crate::{config, Irqs};

type Bus = cyw43::SpiBus<Output<'static>, PioSpi<'static, PIO0, 0>>;

/// Radio firmware, 4-byte aligned as the driver requires.
static FIRMWARE: Aligned<A4, [u8; cyw43_firmware::CYW43_43439A0.len()]> =
    Aligned(*cyw43_firmware::CYW43_43439A0);
/// Country locale matrix for the radio.
static CLM: &[u8] = cyw43_firmware::CYW43_43439A0_CLM;
/// Board description for the radio (see the module docs).
static NVRAM: Aligned<A4, [u8; NVRAM_TEXT.len()]> = Aligned(str_to_array(NVRAM_TEXT));
const NVRAM_TEXT: &str = concat!(
    "NVRAMRev=$Rev$\0",
    "manfid=0x2d0\0",
    "prodid=0x0727\0",
    "vendid=0x14e4\0",
    "devid=0x43e2\0",
    "boardtype=0x0887\0",
    "boardrev=0x1100\0",
    "boardnum=22\0",
    "macaddr=00:A0:50:b5:59:5e\0",
    "sromrev=11\0",
    "boardflags=0x00404001\0",
    "boardflags3=0x04000000\0",
    "xtalfreq=37400\0",
    "nocrc=1\0",
    "ag0=255\0",
    "aa2g=1\0",
    "ccode=ALL\0",
    "pa0itssit=0x20\0",
    "extpagain2g=0\0",
    "pa2ga0=-168,6649,-778\0",
    "AvVmid_c0=0x0,0xc8\0",
    "cckpwroffset0=5\0",
    "maxp2ga0=84\0",
    "txpwrbckof=6\0",
    "cckbw202gpo=0\0",
    "legofdmbw202gpo=0x66111111\0",
    "mcsbw202gpo=0x77711111\0",
    "propbw202gpo=0xdd\0",
    "ofdmdigfilttype=18\0",
    "ofdmdigfilttypebe=18\0",
    "papdmode=1\0",
    "papdvalidtest=1\0",
    "pacalidx2g=45\0",
    "papdepsoffset=-30\0",
    "papdendidx=58\0",
    "ltecxmux=0\0",
    "ltecxpadnum=0x0102\0",
    "ltecxfnsel=0x44\0",
    "ltecxgcigpio=0x01\0",
    "il0macaddr=00:90:4c:c5:12:38\0",
    "wl0id=0x431b\0",
    "deadman_to=0xffffffff\0",
    "muxenab=0x100\0",
    "spurconfig=0x3\0",
    "glitch_based_crsmin=1\0",
    "btc_mode=1\0",
    "\0\0",
);

/// `s` as an array (the driver wants the NVRAM 4-byte aligned, so it must live in an array).
const fn str_to_array<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() == N);
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// The pins and blocks wired to the radio on a Pico W.
pub struct RadioPins {
    pub pwr: Peri<'static, PIN_23>,
    pub dio: Peri<'static, PIN_24>,
    pub cs: Peri<'static, PIN_25>,
    pub clk: Peri<'static, PIN_29>,
    pub pio: Peri<'static, PIO0>,
    pub dma: Peri<'static, DMA_CH0>,
}

#[embassy_executor::task]
async fn radio_task(runner: cyw43::Runner<'static, Bus>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, cyw43::NetDriver<'static>>) -> ! {
    runner.run().await
}

/// Why the network could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The executor has no room for the radio or network task.
    Spawn,
}

/// Powers the radio up, loads its firmware and starts the IP stack (DHCP). Does not join.
pub async fn start(
    spawner: Spawner,
    pins: RadioPins,
) -> Result<(cyw43::Control<'static>, Stack<'static>), NetError> {
    let pwr = Output::new(pins.pwr, Level::Low);
    let cs = Output::new(pins.cs, Level::High);
    let mut pio = Pio::new(pins.pio, Irqs);
    let spi = PioSpi::new(
        &mut pio.common,
        pio.sm0,
        DEFAULT_CLOCK_DIVIDER,
        pio.irq0,
        cs,
        pins.dio,
        pins.clk,
        dma::Channel::new(pins.dma, Irqs),
    );

    static STATE: StaticCell<cyw43::State> = StaticCell::new();
    let (device, mut control, runner) =
        cyw43::new(STATE.init(cyw43::State::new()), pwr, spi, &FIRMWARE, &NVRAM).await;
    spawner.spawn(radio_task(runner).map_err(|_| NetError::Spawn)?);
    control.init(CLM).await;
    control.set_power_management(cyw43::PowerManagementMode::PowerSave).await;

    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let seed = RoscRng.next_u64();
    let (stack, runner) = embassy_net::new(
        device,
        Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(net_task(runner).map_err(|_| NetError::Spawn)?);
    Ok((control, stack))
}

/// Joins [`config::WIFI_SSID`] (retrying forever) and waits for a DHCP lease.
pub async fn join(control: &mut cyw43::Control<'static>, stack: Stack<'static>) {
    if stack.is_config_up() {
        return;
    }
    loop {
        let options = if config::WIFI_PASSWORD.is_empty() {
            JoinOptions::new_open()
        } else {
            JoinOptions::new(config::WIFI_PASSWORD.as_bytes())
        };
        match control.join(config::WIFI_SSID, options).await {
            Ok(()) => break,
            Err(e) => {
                warn!("wifi: joining '{}' failed: {:?}; retrying in 5 s", config::WIFI_SSID, e);
                Timer::after(Duration::from_secs(5)).await;
            }
        }
    }
    info!("wifi: joined '{}', waiting for DHCP", config::WIFI_SSID);
    stack.wait_link_up().await;
    stack.wait_config_up().await;
    if let Some(c) = stack.config_v4() {
        info!("wifi: address {}", c.address);
    }
}
