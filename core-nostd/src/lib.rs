//! `core-nostd`: the part of the private-inference protocol that both parties share and that
//! runs on a microcontroller. `#![no_std]`, no allocator.
//!
//! Modules (DESIGN §3-5): [`field`] (F_p), [`fixed_point`] (reals <-> F_p), [`truncation`]
//! (local share truncation and its failure bound), [`share`] (two-party additive shares),
//! [`mask`] (ChaCha mask streams keyed by a ticket seed), [`arch`] (public architecture of a
//! merged model), [`packing`] (HE coefficient/slot index maths), [`wire`] (the one wire format).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

#[cfg(test)]
extern crate std;

pub mod arch;
pub mod client;
pub mod field;
pub mod fixed_point;
pub mod mask;
pub mod online;
pub mod packing;
pub mod share;
pub mod ticket;
pub mod truncation;
pub mod wire;

pub use field::Fp;
