//! Models: the merged form every other part of the server works on.
//!
//! `merged` holds the merged model (public [`core_nostd::arch::Architecture`] plus the private
//! fixed-point weights) and the direct, obviously-correct linear maps over F_p that tests use as
//! the oracle for every faster implementation (HE packing, online GEMM).

pub mod merged;

pub use merged::{AffineWeights, MergedModel, ModelError};
