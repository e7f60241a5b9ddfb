//! Build-time configuration.
//!
//! A microcontroller has no config file and no shell, and the provisioning link (USB-Serial-JTAG)
//! is reserved for tickets, so the few site-specific settings are baked into the image when it
//! is built: `WIFI_SSID=... WIFI_PASSWORD=... SERVER_ADDR=ip:port MODEL_ID=... cargo build`.
//! Every setting has a default so that CI (and anyone checking that the firmware compiles)
//! builds without any environment. rustc records `option_env!` reads, so cargo rebuilds when a
//! setting changes.

use core::net::SocketAddrV4;

/// SSID of the Wi-Fi network to join (`WIFI_SSID`).
pub const WIFI_SSID: &str = match option_env!("WIFI_SSID") {
    Some(s) => s,
    None => "private-inference",
};

/// WPA2 passphrase (`WIFI_PASSWORD`); empty means an open network.
pub const WIFI_PASSWORD: &str = match option_env!("WIFI_PASSWORD") {
    Some(s) => s,
    None => "",
};

/// Address of the inference server, `ip:port` (`SERVER_ADDR`). IPv4 only: no DNS on the device.
pub const SERVER_ADDR: &str = match option_env!("SERVER_ADDR") {
    Some(s) => s,
    None => "192.168.1.10:7878",
};

/// Model the tickets are made for and inference is asked of (`MODEL_ID`).
pub const MODEL_ID: &str = match option_env!("MODEL_ID") {
    Some(s) => s,
    None => "mlp-sq",
};

/// Why the build-time configuration cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// `SERVER_ADDR` is not `a.b.c.d:port`.
    BadServerAddr,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::BadServerAddr => write!(f, "SERVER_ADDR {SERVER_ADDR:?} is not ipv4:port"),
        }
    }
}

/// The server address, parsed.
pub fn server_addr() -> Result<SocketAddrV4, ConfigError> {
    SERVER_ADDR.parse().map_err(|_| ConfigError::BadServerAddr)
}
