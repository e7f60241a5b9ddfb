//! `cloud-server`: the server of the private-inference protocol (std).
pub mod model;
