//! The merged model: `A_L ∘ sq ∘ ... ∘ sq ∘ A_1` with private fixed-point weights.
//!
//! Weights are signed integers at `truncate_bits` fraction bits of their map
//! (`w_int = round(w * 2^truncate_bits)`), biases are signed integers at
//! `frac_bits + truncate_bits` fraction bits (the scale of `W x` before truncation), so a map is
//! evaluated as `trunc(W_int x + b_int, truncate_bits)` on activations with `frac_bits` fraction
//! bits. Layouts: conv weights `[out][in][kh][kw]`, dense weights `[out][in]` (row-major),
//! tensors channel-major (see `core_nostd::arch`).

use core_nostd::arch::{Architecture, LinearKind};
use core_nostd::Fp;

/// Private parameters of one affine map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffineWeights {
    /// Fixed-point weights, layout as in the module docs.
    pub weights: Vec<i64>,
    /// Fixed-point bias, one per output element (a conv's per-channel bias is expanded).
    pub bias: Vec<i64>,
}

/// A merged model: the public architecture and, per map, its private weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedModel {
    pub arch: Architecture,
    pub maps: Vec<AffineWeights>,
}

/// Why a merged model is inconsistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelError {
    Arch(core_nostd::arch::ArchError),
    MapCount { arch: usize, weights: usize },
    WeightCount { map: usize, expected: usize, found: usize },
    BiasCount { map: usize, expected: usize, found: usize },
    InputLength { expected: usize, found: usize },
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::Arch(e) => write!(f, "invalid architecture: {e}"),
            ModelError::MapCount { arch, weights } => {
                write!(f, "architecture has {arch} maps but {weights} weight sets were given")
            }
            ModelError::WeightCount { map, expected, found } => {
                write!(f, "map {map}: expected {expected} weights, found {found}")
            }
            ModelError::BiasCount { map, expected, found } => {
                write!(f, "map {map}: expected {expected} biases, found {found}")
            }
            ModelError::InputLength { expected, found } => {
                write!(f, "input has {found} elements, the model expects {expected}")
            }
        }
    }
}

impl std::error::Error for ModelError {}

/// Number of weights a linear map of this kind has.
pub fn weight_count(kind: &LinearKind) -> usize {
    match *kind {
        LinearKind::Conv2d { input, out_channels, kernel_h, kernel_w, .. } => {
            out_channels as usize * input.channels as usize * kernel_h as usize * kernel_w as usize
        }
        LinearKind::Dense { inputs, outputs } => inputs as usize * outputs as usize,
    }
}

impl MergedModel {
    /// Check that the weights fit the architecture.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.arch.validate().map_err(ModelError::Arch)?;
        if self.arch.maps.len() != self.maps.len() {
            return Err(ModelError::MapCount { arch: self.arch.maps.len(), weights: self.maps.len() });
        }
        for (i, (spec, w)) in self.arch.maps.iter().zip(&self.maps).enumerate() {
            let expected = weight_count(&spec.kind);
            if w.weights.len() != expected {
                return Err(ModelError::WeightCount { map: i, expected, found: w.weights.len() });
            }
            let expected = spec.kind.output_len();
            if w.bias.len() != expected {
                return Err(ModelError::BiasCount { map: i, expected, found: w.bias.len() });
            }
        }
        Ok(())
    }
}

/// `W x` over F_p by direct loops (no bias, no truncation): the oracle for the HE packing and the
/// online GEMM. `weights` are the signed fixed-point weights of `kind`; `x.len()` must be
/// `kind.input_len()`.
pub fn linear_reference(kind: &LinearKind, weights: &[i64], x: &[Fp]) -> Vec<Fp> {
    assert_eq!(x.len(), kind.input_len(), "input length");
    assert_eq!(weights.len(), weight_count(kind), "weight count");
    match *kind {
        LinearKind::Dense { inputs, outputs } => (0..outputs as usize)
            .map(|o| {
                let row = &weights[o * inputs as usize..(o + 1) * inputs as usize];
                row.iter().zip(x).map(|(&w, &xi)| Fp::from_i64(w) * xi).sum()
            })
            .collect(),
        LinearKind::Conv2d { input, out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w } => {
            let out = kind.output_shape();
            let (c_in, h, w) = (input.channels as usize, input.height as i64, input.width as i64);
            let (kh, kw) = (kernel_h as usize, kernel_w as usize);
            let mut y = Vec::with_capacity(out.len());
            for o in 0..out_channels as usize {
                for oi in 0..out.height as i64 {
                    for oj in 0..out.width as i64 {
                        let mut acc = Fp::ZERO;
                        for c in 0..c_in {
                            for p in 0..kh {
                                for q in 0..kw {
                                    let i = oi * stride_h as i64 + p as i64 - pad_h as i64;
                                    let j = oj * stride_w as i64 + q as i64 - pad_w as i64;
                                    if i < 0 || j < 0 || i >= h || j >= w {
                                        continue;
                                    }
                                    let wv = weights[((o * c_in + c) * kh + p) * kw + q];
                                    acc += Fp::from_i64(wv) * x[c * (h * w) as usize + (i * w + j) as usize];
                                }
                            }
                        }
                        y.push(acc);
                    }
                }
            }
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core_nostd::arch::Shape;

    #[test]
    fn conv_reference_matches_hand_computation() {
        // 1x3x3 input, one 2x2 kernel, stride 1, no padding.
        let kind = LinearKind::Conv2d {
            input: Shape::new(1, 3, 3),
            out_channels: 1,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 1,
            stride_w: 1,
            pad_h: 0,
            pad_w: 0,
        };
        let x: Vec<Fp> = (1..=9).map(Fp::from_i64).collect();
        let y = linear_reference(&kind, &[1, -1, 2, 0], &x);
        // y[0][0] = 1*1 - 1*2 + 2*4 = 7, etc.
        let expect: Vec<i64> = vec![7, 9, 13, 15];
        assert_eq!(y.iter().map(|v| v.to_i64_centered()).collect::<Vec<_>>(), expect);
    }

    #[test]
    fn dense_reference_is_a_matrix_product() {
        let kind = LinearKind::Dense { inputs: 2, outputs: 2 };
        let y = linear_reference(&kind, &[1, 2, -3, 4], &[Fp::from_i64(5), Fp::from_i64(-6)]);
        assert_eq!(y, vec![Fp::from_i64(-7), Fp::from_i64(-39)]);
    }
}
