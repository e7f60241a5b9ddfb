//! `edge-client`: the client of the private-inference protocol on a host (std).
pub mod online;
pub mod preprocess;
pub mod provision;
pub mod tickets;
pub mod transport;
