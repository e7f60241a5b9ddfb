//! `cloud-server`: the server of the private-inference protocol (std).
pub mod config;
pub mod daemon;
pub mod inference;
pub mod model;
pub mod session;
pub mod tickets;
