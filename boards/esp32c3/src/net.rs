//! Wi-Fi station and IPv4 stack.
//!
//! esp-radio drives the radio blobs (they need the esp-rtos scheduler and a heap); embassy-net
//! runs DHCP and TCP on top of the station interface. Two background tasks keep the link up:
//! one reconnects the station whenever the access point drops it, one polls the IP stack. The
//! session code only sees an [`embassy_net::Stack`] and the sockets it opens on it.

use embassy_executor::Spawner;
use embassy_net::{Runner, Stack, StackResources};
use embassy_time::{Duration, Timer};
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config, ControllerConfig, Interface, Password, Ssid, WifiController,
    WifiError,
};
use static_cell::StaticCell;

use crate::config;

/// Sockets the stack can hold at once: DHCP and the one TCP connection to the server.
const SOCKETS: usize = 3;
/// Pause between two attempts to join the network.
const RETRY: Duration = Duration::from_secs(5);

/// Why the network could not be brought up.
#[derive(Debug)]
pub enum NetError {
    /// `WIFI_SSID` or `WIFI_PASSWORD` is too long for 802.11.
    BadCredentials,
    /// The radio driver refused to start.
    Radio(WifiError),
    /// A background task could not be spawned (its pool is exhausted).
    Spawn,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::BadCredentials => write!(f, "WIFI_SSID/WIFI_PASSWORD too long"),
            NetError::Radio(e) => write!(f, "Wi-Fi driver: {e:?}"),
            NetError::Spawn => write!(f, "cannot spawn network task"),
        }
    }
}

/// The station configuration from the build-time settings.
fn station_config() -> Result<StationConfig, NetError> {
    let ssid = Ssid::try_from(config::WIFI_SSID).map_err(|_| NetError::BadCredentials)?;
    let auth = if config::WIFI_PASSWORD.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        let pw = Password::try_from(config::WIFI_PASSWORD).map_err(|_| NetError::BadCredentials)?;
        AuthenticationMethodConfig::Wpa2Personal(pw)
    };
    Ok(StationConfig::default().with_ssid(ssid).with_authentication(auth))
}

/// Start the radio in station mode, spawn the link and stack tasks, and return the stack.
///
/// Returns as soon as the tasks run; [`Stack::wait_config_up`] tells when DHCP is done.
pub fn start(
    spawner: &Spawner,
    wifi: esp_hal::peripherals::WIFI<'static>,
) -> Result<Stack<'static>, NetError> {
    let sta_config = station_config()?;
    let controller_config = ControllerConfig::default().with_initial_config(Config::Station(sta_config));
    let controller = WifiController::new(wifi, controller_config).map_err(NetError::Radio)?;
    let device = Interface::station();
    // The hardware RNG is a true RNG once the radio runs. The seed only randomises TCP ports,
    // sequence numbers and DHCP ids; the protocol's secrets come from the tickets.
    let seed = {
        let rng = esp_hal::rng::Rng::new();
        (u64::from(rng.random()) << 32) | u64::from(rng.random())
    };

    static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        device,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(link_task(controller).map_err(|_| NetError::Spawn)?);
    spawner.spawn(stack_task(runner).map_err(|_| NetError::Spawn)?);
    Ok(stack)
}

/// Keep the station associated: connect, wait for a disconnect, retry.
#[embassy_executor::task]
async fn link_task(mut controller: WifiController<'static>) {
    println!("wifi: joining {:?}", config::WIFI_SSID);
    loop {
        match controller.connect_async().await {
            Ok(info) => {
                println!("wifi: associated, channel {}", info.channel);
                if let Ok(info) = controller.wait_for_disconnect_async().await {
                    println!("wifi: disconnected ({:?})", info.reason);
                }
            }
            Err(e) => println!("wifi: join failed: {e:?}"),
        }
        Timer::after(RETRY).await;
    }
}

/// Poll the IP stack (DHCP, ARP, TCP timers) forever.
#[embassy_executor::task]
async fn stack_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}
