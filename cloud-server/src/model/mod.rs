//! Models: ONNX import, the merging stage, quantisation and the plaintext references.
//!
//! `merged` holds the merged model (public [`core_nostd::arch::Architecture`] plus the private
//! fixed-point weights) and the direct, obviously-correct linear maps over F_p that tests use as
//! the oracle for every faster implementation (HE packing, online GEMM). `onnx` imports what
//! PyTorch exports into the op chain of `graph`; `merge` fuses it into affine maps and chooses the
//! fixed-point parameters; `reference` is the fixed-point oracle of the protocol; `cost` counts
//! operations before and after merging; `idx` reads the data sets.
//!
//! Limits, on purpose: only chains are imported. A residual `Add` of two computed branches (or any
//! value reused across an activation) is rejected with [`onnx::ImportError::Residual`], because
//! the protocol runs one affine map per layer on one shared vector. Dynamic input shapes,
//! grouped/dilated convolutions, asymmetric or pooled padding and any op outside the list of
//! DESIGN §6 are rejected with the op and node named. The real-valued models (`FloatModel`) are
//! evaluated in f64, which is at least as accurate as the f32 of the brief; tests compare them
//! with torch's outputs and with tract's evaluation of the unmerged graph to 1e-4 relative.

pub mod cost;
pub mod graph;
pub mod idx;
pub mod merge;
pub mod merged;
pub mod onnx;
pub mod reference;

pub use merge::{FloatModel, MergeError, QuantReport};
pub use merged::{AffineWeights, MergedModel, ModelError};
pub use reference::FixedPointReference;

use core_nostd::arch::Shape;
use std::path::Path;

/// Everything `load` derives from an ONNX file.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub imported: graph::Imported,
    /// Merged maps over the reals, as fused (before the power-of-two rescale).
    pub float: FloatModel,
    /// The real-valued twin of `merged` (rescaled); its output equals `float`'s.
    pub scaled: FloatModel,
    pub merged: MergedModel,
    pub report: QuantReport,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Import(#[from] onnx::ImportError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Idx(#[from] idx::IdxError),
    #[error("calibration images are {rows}x{cols} but the model input is {shape:?}")]
    CalibrationShape { rows: usize, cols: usize, shape: Shape },
    #[error("{path}: {detail} (run `cloud-server model calibrate` to write it)")]
    Calibration { path: String, detail: String },
}

/// Where the committed fixed-point parameters of a model live: `<model>.quant.json`.
pub fn quant_path(model: &Path) -> std::path::PathBuf {
    model.with_extension("quant.json")
}

/// Import and merge, then quantise with the committed parameters of [`quant_path`]: what the
/// daemon and the demo do, deterministic and independent of any data set.
pub fn load_calibrated(path: &Path, model_id: &str) -> Result<LoadedModel, LoadError> {
    let qp = quant_path(path);
    let err = |detail: String| LoadError::Calibration { path: qp.display().to_string(), detail };
    let text = std::fs::read_to_string(&qp).map_err(|e| err(e.to_string()))?;
    let report: QuantReport = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let imported = onnx::import_path(path)?;
    let float = merge::merge_float(&imported)?;
    let (merged, scaled) = merge::quantise_with(model_id, &float, &report)?;
    Ok(LoadedModel { imported, float, scaled, merged, report })
}

/// Import, merge and quantise with the given calibration inputs, for a per-inference
/// truncation failure bound of `2^failure_target_log2` (normally [`merge::FAILURE_TARGET_LOG2`]).
pub fn load(
    path: &Path,
    model_id: &str,
    calibration: &[Vec<f64>],
    failure_target_log2: f64,
) -> Result<LoadedModel, LoadError> {
    let imported = onnx::import_path(path)?;
    let float = merge::merge_float(&imported)?;
    let (merged, scaled, report) = merge::quantise(model_id, &float, calibration, failure_target_log2)?;
    Ok(LoadedModel { imported, float, scaled, merged, report })
}

/// Calibration inputs: the first `count` images of an IDX file when the model takes one-channel
/// images of that size, else `count` deterministic pseudo-random inputs uniform in [0, 1]
/// (ChaCha8, seed 0) -- the case of `cifar-sq`, whose weights are random anyway.
pub fn calibration_inputs(
    input: Shape,
    images: Option<&Path>,
    count: usize,
) -> Result<Vec<Vec<f64>>, LoadError> {
    if let Some(path) = images {
        let im = idx::read_images(path)?;
        if im.rows * im.cols != input.len() {
            return Err(LoadError::CalibrationShape { rows: im.rows, cols: im.cols, shape: input });
        }
        return (0..count.min(im.len()))
            .map(|k| Ok(im.get(k)?.iter().map(|&v| v as f64).collect()))
            .collect();
    }
    use rand_core::{RngCore, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    Ok((0..count)
        .map(|_| (0..input.len()).map(|_| rng.next_u32() as f64 / u32::MAX as f64).collect())
        .collect())
}
