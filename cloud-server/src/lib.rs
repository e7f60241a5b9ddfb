//! `cloud-server`: the server of the private-inference protocol (std).
//!
//! [`model`] imports, merges and quantises ONNX models and holds the plaintext references;
//! [`inference`] is the server's online state machine; [`session`] the sans-I/O per-connection
//! protocol; [`daemon`] the tokio TCP server around it; [`tickets`] the single-use ticket store;
//! [`config`] the daemon configuration; [`cli`] the command line.
pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(test)]
mod dealer;
pub mod he;
pub mod inference;
pub mod linear;
pub mod model;
pub mod session;
pub mod tickets;
