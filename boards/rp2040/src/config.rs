//! Build-time configuration.
//!
//! A Pico W has no file system and no console before USB enumerates, so the few settings the
//! firmware needs are baked in when it is built, from environment variables read with
//! `option_env!`. Every one has a default so that CI (and `cargo build` on a fresh clone) builds
//! without any: the defaults produce a firmware that boots, accepts tickets over USB and retries
//! the Wi-Fi join forever.
//!
//! | variable        | meaning                                          | default            |
//! |-----------------|--------------------------------------------------|--------------------|
//! | `WIFI_SSID`     | network to join (WPA2/WPA3 personal, or open)    | `pico-inference`   |
//! | `WIFI_PASSWORD` | its passphrase; empty joins an open network      | empty              |
//! | `SERVER_ADDR`   | inference server, IPv4 `a.b.c.d:port`            | `192.168.1.10:7878`|
//! | `MODEL_ID`      | model whose tickets this device accepts and uses | `mlp-sq`           |
//!
//! `SERVER_ADDR` is parsed at compile time: a malformed value is a build error, not a device that
//! silently never connects.

/// SSID of the Wi-Fi network to join.
pub const WIFI_SSID: &str = match option_env!("WIFI_SSID") {
    Some(s) => s,
    None => "pico-inference",
};

/// WPA passphrase; empty means an open network.
pub const WIFI_PASSWORD: &str = match option_env!("WIFI_PASSWORD") {
    Some(s) => s,
    None => "",
};

/// The server as written at build time (for log lines).
pub const SERVER_ADDR: &str = match option_env!("SERVER_ADDR") {
    Some(s) => s,
    None => "192.168.1.10:7878",
};

/// Model identifier sent in the hellos and checked against provisioned tickets.
pub const MODEL_ID: &str = match option_env!("MODEL_ID") {
    Some(s) => s,
    None => "mlp-sq",
};

/// [`SERVER_ADDR`] parsed: IPv4 octets and TCP port.
pub const SERVER: ([u8; 4], u16) = parse_ipv4_endpoint(SERVER_ADDR);

/// Parses `a.b.c.d:port` in a const context; panics (a compile error when used in a const)
/// on anything else.
const fn parse_ipv4_endpoint(s: &str) -> ([u8; 4], u16) {
    let b = s.as_bytes();
    let mut ip = [0u8; 4];
    let mut part = 0;
    let mut value: u32 = 0;
    let mut digits = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            value = value * 10 + (c - b'0') as u32;
            digits += 1;
            assert!(digits <= 5 && value <= 65535, "SERVER_ADDR: number too large");
        } else if (c == b'.' && part < 3) || (c == b':' && part == 3) {
            assert!(digits > 0 && value <= 255, "SERVER_ADDR: bad IPv4 octet");
            ip[part] = value as u8;
            part += 1;
            value = 0;
            digits = 0;
        } else {
            panic!("SERVER_ADDR must be an IPv4 endpoint a.b.c.d:port");
        }
        i += 1;
    }
    assert!(part == 4 && digits > 0 && value > 0, "SERVER_ADDR must be an IPv4 endpoint a.b.c.d:port");
    (ip, value as u16)
}
