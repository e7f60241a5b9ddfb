//! The imported, unmerged model: a chain of "stages" of linear operations separated by quadratic
//! activations, with an exact f64 evaluator for every operation.
//!
//! The importer (`onnx`) reduces the ONNX graph to this form; the merger (`merge`) turns each
//! stage into one affine map. Keeping the unmerged ops evaluable lets the merger materialise a
//! fused map by pushing vectors through the stage (the Dense fallback) and lets tests compare the
//! merged maps with the op-by-op evaluation.

use core_nostd::arch::Shape;

/// One linear (affine) operation of a stage. Tensors are channel-major (`x[c][i][j]`).
#[derive(Clone, Debug, PartialEq)]
pub enum LinOp {
    /// 2-D convolution, groups 1, dilation 1, symmetric zero padding.
    Conv {
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        /// `[out][in][kh][kw]`
        weights: Vec<f64>,
        /// One per output channel.
        bias: Vec<f64>,
    },
    /// Average pooling without padding.
    AvgPool { kernel: (usize, usize), stride: (usize, usize) },
    /// `y = W x + b` on the flattened input; `weights` is `[outputs][inputs]`.
    Dense { inputs: usize, outputs: usize, weights: Vec<f64>, bias: Vec<f64> },
    /// Per-channel `y = scale[c] * x + shift[c]` (BatchNormalization, per-channel or scalar
    /// Mul/Add by a constant).
    ChannelAffine { scale: Vec<f64>, shift: Vec<f64> },
    /// Per-element `y = scale[k] * x + shift[k]` (a constant of the full tensor shape).
    Elementwise { scale: Vec<f64>, shift: Vec<f64> },
    /// Flatten / Reshape: the data order is unchanged, only the shape.
    Reshape { to: Shape },
}

/// A quadratic activation `a*y^2 + b*y + c`, coefficients per element of `y`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quadratic {
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
}

/// An imported model: `stages[0]`, act 0, `stages[1]`, ..., `stages[L-1]`.
#[derive(Clone, Debug)]
pub struct Imported {
    pub input: Shape,
    pub stages: Vec<Vec<LinOp>>,
    pub activations: Vec<Quadratic>,
    /// `(op_type, node name)` of every ONNX node that was imported, in graph order.
    pub nodes: Vec<(String, String)>,
}

impl LinOp {
    /// Short human-readable description.
    pub fn describe(&self, input: Shape) -> String {
        let out = self.output_shape(input);
        let s = |sh: Shape| format!("{}x{}x{}", sh.channels, sh.height, sh.width);
        match self {
            LinOp::Conv { out_channels, kernel, stride, pad, .. } => format!(
                "conv {}x{} s{}x{} p{}x{} -> {} ch  ({} -> {})",
                kernel.0,
                kernel.1,
                stride.0,
                stride.1,
                pad.0,
                pad.1,
                out_channels,
                s(input),
                s(out)
            ),
            LinOp::AvgPool { kernel, stride } => {
                format!(
                    "avgpool {}x{} s{}x{}  ({} -> {})",
                    kernel.0,
                    kernel.1,
                    stride.0,
                    stride.1,
                    s(input),
                    s(out)
                )
            }
            LinOp::Dense { inputs, outputs, .. } => format!("dense {inputs} -> {outputs}"),
            LinOp::ChannelAffine { .. } => format!("per-channel scale/shift  ({})", s(input)),
            LinOp::Elementwise { .. } => format!("element-wise scale/shift  ({})", s(input)),
            LinOp::Reshape { to } => format!("reshape {} -> {}", s(input), s(*to)),
        }
    }

    /// Output shape for the given input shape (callers checked the op fits at import).
    pub fn output_shape(&self, input: Shape) -> Shape {
        match self {
            LinOp::Conv { out_channels, kernel, stride, pad, .. } => {
                let oh = (input.height as usize + 2 * pad.0 - kernel.0) / stride.0 + 1;
                let ow = (input.width as usize + 2 * pad.1 - kernel.1) / stride.1 + 1;
                Shape::new(*out_channels as u32, oh as u32, ow as u32)
            }
            LinOp::AvgPool { kernel, stride } => {
                let oh = (input.height as usize - kernel.0) / stride.0 + 1;
                let ow = (input.width as usize - kernel.1) / stride.1 + 1;
                Shape::new(input.channels, oh as u32, ow as u32)
            }
            LinOp::Dense { outputs, .. } => Shape::flat(*outputs as u32),
            LinOp::ChannelAffine { .. } | LinOp::Elementwise { .. } => input,
            LinOp::Reshape { to } => *to,
        }
    }

    /// Evaluate the op on `x` (shape `input`), exactly as ONNX defines it, in f64.
    pub fn apply(&self, input: Shape, x: &[f64]) -> Vec<f64> {
        let (c_in, h, w) = (input.channels as usize, input.height as usize, input.width as usize);
        match self {
            LinOp::Conv { out_channels, kernel, stride, pad, weights, bias } => {
                let out = self.output_shape(input);
                let (oh, ow) = (out.height as usize, out.width as usize);
                let (kh, kw) = *kernel;
                let mut y = vec![0.0; out_channels * oh * ow];
                for o in 0..*out_channels {
                    for oi in 0..oh {
                        for oj in 0..ow {
                            let mut acc = bias[o];
                            for c in 0..c_in {
                                for p in 0..kh {
                                    let i = (oi * stride.0 + p) as isize - pad.0 as isize;
                                    if i < 0 || i >= h as isize {
                                        continue;
                                    }
                                    for q in 0..kw {
                                        let j = (oj * stride.1 + q) as isize - pad.1 as isize;
                                        if j < 0 || j >= w as isize {
                                            continue;
                                        }
                                        acc += weights[((o * c_in + c) * kh + p) * kw + q]
                                            * x[(c * h + i as usize) * w + j as usize];
                                    }
                                }
                            }
                            y[(o * oh + oi) * ow + oj] = acc;
                        }
                    }
                }
                y
            }
            LinOp::AvgPool { kernel, stride } => {
                let out = self.output_shape(input);
                let (oh, ow) = (out.height as usize, out.width as usize);
                let norm = 1.0 / (kernel.0 * kernel.1) as f64;
                let mut y = vec![0.0; c_in * oh * ow];
                for c in 0..c_in {
                    for oi in 0..oh {
                        for oj in 0..ow {
                            let mut acc = 0.0;
                            for p in 0..kernel.0 {
                                for q in 0..kernel.1 {
                                    acc += x[(c * h + oi * stride.0 + p) * w + oj * stride.1 + q];
                                }
                            }
                            y[(c * oh + oi) * ow + oj] = acc * norm;
                        }
                    }
                }
                y
            }
            LinOp::Dense { inputs, outputs, weights, bias } => (0..*outputs)
                .map(|o| {
                    bias[o]
                        + weights[o * inputs..(o + 1) * inputs].iter().zip(x).map(|(a, b)| a * b).sum::<f64>()
                })
                .collect(),
            LinOp::ChannelAffine { scale, shift } => {
                let per = h * w;
                x.iter().enumerate().map(|(k, v)| scale[k / per] * v + shift[k / per]).collect()
            }
            LinOp::Elementwise { scale, shift } => {
                x.iter().zip(scale.iter().zip(shift)).map(|(v, (a, b))| a * v + b).collect()
            }
            LinOp::Reshape { .. } => x.to_vec(),
        }
    }
}

/// Push `x` through a run of ops starting at shape `input`; returns the output and its shape.
pub fn apply_run(ops: &[LinOp], input: Shape, x: &[f64]) -> (Vec<f64>, Shape) {
    let mut shape = input;
    let mut v = x.to_vec();
    for op in ops {
        v = op.apply(shape, &v);
        shape = op.output_shape(shape);
    }
    (v, shape)
}

impl Quadratic {
    pub fn apply(&self, y: &[f64]) -> Vec<f64> {
        y.iter().enumerate().map(|(k, v)| self.a[k] * v * v + self.b[k] * v + self.c[k]).collect()
    }
}

impl Imported {
    /// Evaluate the unmerged model op by op (f64).
    pub fn evaluate(&self, x: &[f64]) -> Vec<f64> {
        let mut shape = self.input;
        let mut v = x.to_vec();
        for (i, stage) in self.stages.iter().enumerate() {
            let (y, s) = apply_run(stage, shape, &v);
            shape = s;
            v = match self.activations.get(i) {
                Some(act) => act.apply(&y),
                None => y,
            };
        }
        v
    }
}
