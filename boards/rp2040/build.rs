//! Puts `memory.x` where the linker finds it.
//!
//! `cortex-m-rt`'s `link.x` includes `memory.x` from the linker search path; copying it into
//! `OUT_DIR` (instead of relying on the crate root being the working directory) keeps the build
//! correct when cargo is run from another directory, and `rerun-if-changed` relinks when the
//! flash map changes.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("cannot write memory.x to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    // Build-time configuration (see README.md): rebuild when any of it changes.
    for var in ["WIFI_SSID", "WIFI_PASSWORD", "SERVER_ADDR", "MODEL_ID"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
}
