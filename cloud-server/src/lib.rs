//! `cloud-server`: the server of the private-inference protocol (std).
