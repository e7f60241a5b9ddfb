//! PLACEHOLDER (daemon branch only; replaced by the foundation branch at merge).
use crate::field::{Fp, P};
pub fn truncate_reference(x: Fp, bits: u32) -> Fp {
    Fp::from_i64(x.to_i64_centered() >> bits)
}
pub fn truncate_client_share(x0: Fp, bits: u32) -> Fp {
    Fp::from_u64_reduced(x0.value() >> bits)
}
pub fn truncate_server_share(x1: Fp, bits: u32) -> Fp {
    -Fp::from_u64_reduced((P - x1.value()) >> bits)
}
