//! `cloud-server`: the server of the private-inference protocol (std).
pub mod cli;
pub mod model;
