//! `core-nostd`: the part of the private-inference protocol that both parties share and that
//! runs on a microcontroller. `#![no_std]`, no allocator: it builds for `thumbv6m-none-eabi`
//! (RP2040, Cortex-M0+) and `riscv32imc-unknown-none-elf` (ESP32-C3), and the std crates
//! (`edge-client`, `cloud-server`) use the same code, so client and server cannot disagree.
//!
//! Modules (DESIGN §3-5): [`field`] (F_p), [`fixed_point`] (reals <-> F_p), [`truncation`]
//! (local share truncation and its failure bound), [`share`] (two-party additive shares),
//! [`mask`] (ChaCha mask streams keyed by a ticket seed), [`arch`] (public architecture of a
//! merged model), [`packing`] (HE coefficient/slot index maths), [`wire`] (the one wire format).
//!
//! # Arithmetic parameters: p, n, q and f
//!
//! **Ring and ciphertext modulus.** The BFV stage uses ring degree `n = 8192` and a ciphertext
//! modulus `q` of three 62-bit primes (186 bits), inside the 218 bits the HE standard allows for
//! 128-bit security at `n = 8192`. The next step down (`n = 4096`, at most 109 bits of `q`)
//! only fits a ~40-bit plaintext modulus, which the truncation budget below rules out; the next
//! step up (`n = 16384`) doubles every ciphertext and more than doubles every HE operation.
//!
//! **The field** `p = 2^60 - 2^14 + 1` ([`field::P`]) is the BFV plaintext modulus and the share
//! field. It is `1 mod 2n` (both coefficient and SIMD encodings work, so element-wise products
//! need no rotations), it leaves room in `q` for one ciphertext-plaintext product by a uniform
//! plaintext (~`log p + 18 = 78` of the 125 usable bits) plus 40 bits of noise flooding, and its
//! pseudo-Mersenne form makes reduction division-free on a Cortex-M0+. It is as large as the
//! noise budget allows, which matters because `p` is what pays for precision (next paragraph).
//!
//! **Fraction bits f.** Activations carry `f` fraction bits; a map's weights carry
//! `t = truncate_bits`, so a value at a truncation point has scale `2^(2f)` (square) or
//! `2^(f+t)` (map output). A local truncation of a value `X` (scaled integer) fails with
//! probability `|X| / p` ([`truncation`]); over an inference with `N` truncated elements the
//! union bound is `sum |X_i| / p`. The target is `2^-30` per inference
//! ([`truncation::INFERENCE_FAILURE_TARGET`]), so the *mean* `|X|` at the truncation points must
//! stay below `p * 2^-30 / N = 2^30 / N`:
//!
//! | model | truncations `N` ([`arch::Architecture::truncations`]) | mean `|X|` budget | real mean at f=t=6 / 7 / 8 |
//! |---|---|---|---|
//! | `mlp-sq` | 522 | 2 056 977 (2^20.97) | 502 / 126 / 31 |
//! | `cryptonets-sq` | 1 900 | 565 127 (2^19.11) | 138 / 34 / 8.6 |
//! | `minionn-sq` | 20 690 | 51 897 (2^15.66) | 12.7 / 3.2 / 0.79 |
//! | `cifar-sq` (timing only) | ~346 000 | ~3 100 (2^11.6) | 0.76 / 0.19 / 0.05 |
//!
//! (The last column divides the budget by the scale `2^(2f)`: the mean magnitude, in real units,
//! that a square output `y^2` or a map output `W x + b` may have.) Each extra fraction bit halves
//! the rounding error and costs a factor 4 in failure probability at the squares. The
//! recommended default is therefore `f = t = 6` ([`fixed_point::RECOMMENDED_FRAC_BITS`],
//! resolution 1/64): it meets `2^-30` for every trained bundled model as long as the mean
//! magnitude at its truncation points stays below ~12 (not yet measured on the trained models:
//! the model tooling must check it), and `mlp-sq`/`cryptonets-sq` can afford `f = 8`. The
//! per-model value is [`arch::Architecture::frac_bits`], chosen by the model tooling from
//! calibration data with [`truncation::inference_failure_bound`], which must print the bound.
//! `cifar-sq` uses seeded random weights for timing only; its accuracy is not a goal.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

#[cfg(test)]
extern crate std;

pub mod arch;
pub mod client;
pub mod field;
pub mod fixed_point;
pub mod labels;
pub mod mask;
pub mod online;
pub mod packing;
pub mod provision;
pub mod session;
pub mod share;
pub mod ticket;
pub mod truncation;
pub mod wire;

pub use field::Fp;
