//! The merging stage (DESIGN §4) and the choice of fixed-point parameters.
//!
//! Merging turns the imported op chain into `A_L ∘ sq ∘ ... ∘ sq ∘ A_1`:
//! * each quadratic activation `a*y^2 + b*y + c` becomes `a*(y + beta)^2 + gamma` with
//!   `beta = b / 2a`, `gamma = c - b^2 / 4a`; `+beta` is appended to the stage before it and
//!   `a*z + gamma` is prepended to the stage after it, so only a bare square remains;
//! * every stage (BatchNorm, scalar/per-channel scale and shift, conv, average pool, flatten,
//!   dense) is fused into ONE affine map. When the stage is made of convolutions, average pools
//!   and per-channel scalings only, the kernels are composed exactly into a single Conv2d
//!   (`conv2 ∘ conv1` has kernel `k1 + (k2 - 1) s1`, stride `s1 s2`, padding `p1`; this is exact
//!   when only the first spatial op pads, because a zero-padded border of a pure linear map is the
//!   map of a zero-padded border). Otherwise the map is materialised as a Dense matrix by pushing
//!   basis vectors through the stage. The bias of every map is the stage evaluated at 0, one value
//!   per output element (padding makes a conv's effective bias position-dependent).
//!
//! Quantisation then picks `frac_bits` f, per-map `truncate_bits` t_i and a power-of-two rescale
//! 2^-s_i of each pre-activation (compensated by 2^(2 s_i) in the next map's weights, exact in
//! the reals). The SecureML local truncation fails with probability about `(|x|+1)/p` per element,
//! where `|x|` is the integer being truncated: `|y| 2^(f+t_i)` after a map, `y^2 2^(2f)` after a
//! square. Bounding, per map, `sum_j |y_j|` and `sum_j y_j^2` by their largest values over the
//! calibration inputs times [`SAFETY_MARGIN`] (resp. its square), the sum over all truncations of
//! one inference must stay <= 2^-30. Within that
//! budget the parameters are water-filled: repeatedly give one more bit to the least precise of
//! {each activation, each weight matrix} while the bound still holds, for each candidate f, and
//! keep the f with the best worst-case precision.

use super::graph::{apply_run, Imported, LinOp};
use super::merged::{AffineWeights, MergedModel};
use core_nostd::arch::{AffineSpec, Architecture, LinearKind, Shape};

/// Factor applied to the measured per-map maxima before bounding the failure probability.
pub const SAFETY_MARGIN: f64 = 2.0;
/// Required bound on the truncation failure probability of one inference (DESIGN §3): every
/// bundled model is calibrated to it. `model calibrate --failure-log2` trades it for precision.
pub const FAILURE_TARGET_LOG2: f64 = -30.0;
/// The weakest bound `quantise` accepts: below 2^-10 failures would be routine, not rare.
pub const WEAKEST_FAILURE_LOG2: f64 = -10.0;

/// Largest |rescale exponent| a parameter file may give (calibration picks single digits).
pub const MAX_SHIFT: i32 = 40;

/// Why merging or quantisation failed.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("activation {layer}: quadratic coefficient a is zero at element {element}; a purely affine activation is not supported")]
    ZeroQuadratic { layer: usize, element: usize },
    #[error("map {map}: fused dense map of {inputs}x{outputs} is too large")]
    TooLarge { map: usize, inputs: usize, outputs: usize },
    #[error("too many maps ({0})")]
    TooManyMaps(usize),
    #[error("no fixed-point parameters meet the 2^{0} failure bound")]
    NoParameters(f64),
    #[error("failure bound 2^{0} is not between 2^-60 and 2^{WEAKEST_FAILURE_LOG2}")]
    FailureTarget(f64),
    #[error(
        "the parameters list {truncate_bits} truncations and {shifts} shifts for a model of {maps} maps"
    )]
    Parameters { maps: usize, truncate_bits: usize, shifts: usize },
    #[error("map {map}: rescale exponent {shift} is outside +-{MAX_SHIFT}")]
    Shift { map: usize, shift: i32 },
    #[error("invalid merged model: {0}")]
    Model(#[from] super::merged::ModelError),
    #[error("calibration data is empty or has the wrong input length")]
    Calibration,
}

/// An affine map with real weights (the merged model before quantisation).
#[derive(Clone, Debug)]
pub struct FloatMap {
    pub kind: LinearKind,
    pub weights: Vec<f64>,
    pub bias: Vec<f64>,
}

/// The merged model over the reals: maps with a bare square between consecutive maps.
#[derive(Clone, Debug)]
pub struct FloatModel {
    pub input: Shape,
    pub maps: Vec<FloatMap>,
}

/// `W x` for real weights with the loops of [`super::merged::linear_reference`].
pub fn float_linear(kind: &LinearKind, w: &[f64], x: &[f64]) -> Vec<f64> {
    match *kind {
        LinearKind::Dense { inputs, outputs } => (0..outputs as usize)
            .map(|o| {
                w[o * inputs as usize..(o + 1) * inputs as usize].iter().zip(x).map(|(a, b)| a * b).sum()
            })
            .collect(),
        LinearKind::Conv2d { input, out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w } => {
            let op = LinOp::Conv {
                out_channels: out_channels as usize,
                kernel: (kernel_h as usize, kernel_w as usize),
                stride: (stride_h as usize, stride_w as usize),
                pad: (pad_h as usize, pad_w as usize),
                weights: w.to_vec(),
                bias: vec![0.0; out_channels as usize],
            };
            op.apply(input, x)
        }
    }
}

impl FloatModel {
    /// All map outputs (pre-activations) for input `x`.
    pub fn trace(&self, x: &[f64]) -> Vec<Vec<f64>> {
        let mut out = Vec::with_capacity(self.maps.len());
        let mut v = x.to_vec();
        for (i, m) in self.maps.iter().enumerate() {
            let mut y = float_linear(&m.kind, &m.weights, &v);
            y.iter_mut().zip(&m.bias).for_each(|(a, b)| *a += b);
            if i + 1 < self.maps.len() {
                v = y.iter().map(|a| a * a).collect();
            }
            out.push(y);
        }
        out
    }

    /// The logits.
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        self.trace(x).pop().unwrap_or_default()
    }
}

/// A conv kernel being composed.
#[derive(Clone, Debug)]
struct Kernel {
    cin: usize,
    cout: usize,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
    w: Vec<f64>,
}

impl Kernel {
    fn diag(scale: &[f64]) -> Kernel {
        let c = scale.len();
        let mut w = vec![0.0; c * c];
        for i in 0..c {
            w[i * c + i] = scale[i];
        }
        Kernel { cin: c, cout: c, k: (1, 1), s: (1, 1), p: (0, 0), w }
    }

    fn is_pointwise(&self) -> bool {
        self.k == (1, 1) && self.s == (1, 1) && self.p == (0, 0)
    }

    /// `next ∘ self` for `self` applied to an `hw`-sized input; `None` when not exactly
    /// representable. When `next` pads, the composite pads by `p1 + p2 s1`, which is exact iff
    /// every padded output position of `self` would only read padding (`k1 <= s1 + p1` at the
    /// top/left, `H1 s1 - p1 >= H` at the bottom/right), e.g. a 2x2/2 pool of an even-sized map.
    fn then(&self, next: &Kernel, hw: (usize, usize)) -> Option<Kernel> {
        if next.cin != self.cout {
            return None;
        }
        let p = if self.is_pointwise() {
            next.p
        } else if next.p == (0, 0) {
            self.p
        } else {
            let fits = |h: usize, k: usize, s: usize, p: usize| {
                let out = (h + 2 * p - k) / s + 1;
                k <= s + p && out * s >= h + p
            };
            if !fits(hw.0, self.k.0, self.s.0, self.p.0) || !fits(hw.1, self.k.1, self.s.1, self.p.1) {
                return None;
            }
            (self.p.0 + next.p.0 * self.s.0, self.p.1 + next.p.1 * self.s.1)
        };
        let k = (self.k.0 + (next.k.0 - 1) * self.s.0, self.k.1 + (next.k.1 - 1) * self.s.1);
        let s = (self.s.0 * next.s.0, self.s.1 * next.s.1);
        let (c0, c1, c2) = (self.cin, self.cout, next.cout);
        let mut w = vec![0.0; c2 * c0 * k.0 * k.1];
        for o in 0..c2 {
            for m in 0..c1 {
                for u in 0..next.k.0 {
                    for v in 0..next.k.1 {
                        let w2 = next.w[((o * c1 + m) * next.k.0 + u) * next.k.1 + v];
                        if w2 == 0.0 {
                            continue;
                        }
                        for c in 0..c0 {
                            for p1 in 0..self.k.0 {
                                for q1 in 0..self.k.1 {
                                    let w1 = self.w[((m * c0 + c) * self.k.0 + p1) * self.k.1 + q1];
                                    let (pp, qq) = (u * self.s.0 + p1, v * self.s.1 + q1);
                                    w[((o * c0 + c) * k.0 + pp) * k.1 + qq] += w2 * w1;
                                }
                            }
                        }
                    }
                }
            }
        }
        Some(Kernel { cin: c0, cout: c2, k, s, p, w })
    }
}

/// Per-channel scale of an element-wise op when it is uniform within each channel.
fn channel_uniform(scale: &[f64], shape: Shape) -> Option<Vec<f64>> {
    let hw = (shape.height * shape.width) as usize;
    let per: Vec<f64> = scale.chunks(hw).map(|c| c[0]).collect();
    scale.chunks(hw).zip(&per).all(|(c, v)| c.iter().all(|x| x == v)).then_some(per)
}

/// Compose a stage into one conv kernel, or `None` if it is not a conv-only stage.
fn try_conv(ops: &[LinOp], input: Shape) -> Option<Kernel> {
    let mut shape = input;
    let mut acc = Kernel::diag(&vec![1.0; input.channels as usize]);
    let mut reshaped = false;
    for op in ops {
        if reshaped && !matches!(op, LinOp::Reshape { .. }) {
            return None;
        }
        let next = match op {
            LinOp::Conv { out_channels, kernel, stride, pad, weights, .. } => Some(Kernel {
                cin: shape.channels as usize,
                cout: *out_channels,
                k: *kernel,
                s: *stride,
                p: *pad,
                w: weights.clone(),
            }),
            LinOp::AvgPool { kernel, stride } => {
                let c = shape.channels as usize;
                let mut w = vec![0.0; c * c * kernel.0 * kernel.1];
                let norm = 1.0 / (kernel.0 * kernel.1) as f64;
                for i in 0..c {
                    w[(i * c + i) * kernel.0 * kernel.1..(i * c + i + 1) * kernel.0 * kernel.1].fill(norm);
                }
                Some(Kernel { cin: c, cout: c, k: *kernel, s: *stride, p: (0, 0), w })
            }
            LinOp::ChannelAffine { scale, .. } => Some(Kernel::diag(scale)),
            LinOp::Elementwise { scale, .. } => Some(Kernel::diag(&channel_uniform(scale, shape)?)),
            LinOp::Reshape { .. } => {
                reshaped = true;
                None
            }
            LinOp::Dense { .. } => return None,
        };
        if let Some(k) = next {
            acc = acc.then(&k, (input.height as usize, input.width as usize))?;
        }
        shape = op.output_shape(shape);
    }
    Some(acc)
}

/// Largest dense map the merger materialises (weights).
const MAX_DENSE: usize = 1 << 26;

/// Fuse one op run (with shape `input`) into one affine map.
pub fn fuse_stage(ops: &[LinOp], input: Shape, map: usize) -> Result<FloatMap, MergeError> {
    let n = input.len();
    let (bias, out_shape) = apply_run(ops, input, &vec![0.0; n]);
    if let Some(k) = try_conv(ops, input) {
        let kind = LinearKind::Conv2d {
            input,
            out_channels: k.cout as u32,
            kernel_h: k.k.0 as u32,
            kernel_w: k.k.1 as u32,
            stride_h: k.s.0 as u32,
            stride_w: k.s.1 as u32,
            pad_h: k.p.0 as u32,
            pad_w: k.p.1 as u32,
        };
        if kind.output_len() == out_shape.len() {
            return Ok(FloatMap { kind, weights: k.w, bias });
        }
    }
    let m = out_shape.len();
    if n.saturating_mul(m) > MAX_DENSE {
        return Err(MergeError::TooLarge { map, inputs: n, outputs: m });
    }
    let mut weights = vec![0.0; n * m];
    let mut e = vec![0.0; n];
    for j in 0..n {
        e[j] = 1.0;
        let (col, _) = apply_run(ops, input, &e);
        e[j] = 0.0;
        for o in 0..m {
            weights[o * n + j] = col[o] - bias[o];
        }
    }
    Ok(FloatMap { kind: LinearKind::Dense { inputs: n as u32, outputs: m as u32 }, weights, bias })
}

/// The stages with the quadratic activations rewritten as bare squares (op lists to fuse).
pub fn rewritten_stages(imp: &Imported) -> Result<Vec<(Shape, Vec<LinOp>)>, MergeError> {
    let mut out = vec![];
    let mut shape = imp.input;
    for (i, stage) in imp.stages.iter().enumerate() {
        let mut ops = vec![];
        if i > 0 {
            let q = &imp.activations[i - 1];
            let gamma: Vec<f64> = (0..q.a.len()).map(|k| q.c[k] - q.b[k] * q.b[k] / (4.0 * q.a[k])).collect();
            ops.push(LinOp::Elementwise { scale: q.a.clone(), shift: gamma });
        }
        ops.extend(stage.iter().cloned());
        let (_, out_shape) = apply_run(&ops, shape, &vec![0.0; shape.len()]);
        if let Some(q) = imp.activations.get(i) {
            if let Some(k) = q.a.iter().position(|&a| a == 0.0) {
                return Err(MergeError::ZeroQuadratic { layer: i, element: k });
            }
            let beta: Vec<f64> = (0..q.a.len()).map(|k| q.b[k] / (2.0 * q.a[k])).collect();
            ops.push(LinOp::Elementwise { scale: vec![1.0; beta.len()], shift: beta });
        }
        out.push((shape, ops));
        shape = out_shape;
    }
    Ok(out)
}

/// Merge an imported model into affine maps over the reals.
pub fn merge_float(imp: &Imported) -> Result<FloatModel, MergeError> {
    let maps = rewritten_stages(imp)?
        .iter()
        .enumerate()
        .map(|(i, (shape, ops))| fuse_stage(ops, *shape, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FloatModel { input: imp.input, maps })
}

/// The chosen fixed-point parameters and the resulting failure bound.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct QuantReport {
    pub frac_bits: u8,
    pub truncate_bits: Vec<u8>,
    /// Pre-activation rescale exponents: map i's output is multiplied by 2^-shift[i].
    pub shifts: Vec<i32>,
    /// Measured max |y_i| per map output (before the rescale), on the calibration data.
    pub measured_max: Vec<f64>,
    /// Bound on the truncation failure probability of one inference (log2).
    pub failure_log2: f64,
    /// Number of calibration inputs.
    pub calibration_inputs: usize,
}

const P_F64: f64 = core_nostd::field::P as f64;

/// Margin-scaled magnitude statistics of one map's output, measured on calibration data.
#[derive(Clone, Debug)]
struct Stats {
    /// Number of output elements.
    n: f64,
    /// Largest |y| over elements (the rescale is chosen from it).
    max: f64,
    /// Mean |y| over elements and inputs (the typical magnitude, for precision).
    mean: f64,
    /// Largest over calibration inputs of the sum over elements of |y| (times the margin).
    sum_max: f64,
    /// Largest over calibration inputs of the sum over elements of y^2 (times the margin squared).
    sum_max_sq: f64,
}

/// log2 of the failure bound: per element `(|x| + 1) / p`, with `|x|` the element's maximum
/// (margin included) at its truncation point, summed over all truncations of one inference.
fn failure_log2(stats: &[Stats], f: i32, t: &[i32], s: &[i32]) -> f64 {
    let last = stats.len() - 1;
    let mut sum = 0.0;
    for (i, st) in stats.iter().enumerate() {
        sum += (st.sum_max * 2f64.powi(f + t[i] - s[i]) + st.n) / P_F64;
        if i < last {
            sum += (st.sum_max_sq * 2f64.powi(2 * f - 2 * s[i]) + st.n) / P_F64;
        }
    }
    sum.log2()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |a, b| a.max(b.abs()))
}

/// Choose f, t_i, s_i from per-map maxima (water-filling, see the module docs).
fn choose(maps: &[FloatMap], stats: &[Stats], target_log2: f64) -> Option<(i32, Vec<i32>, Vec<i32>)> {
    let l = maps.len();
    let m: Vec<f64> = stats.iter().map(|st| st.max.max(1e-6)).collect();
    // Bits by which typical values sit below the layer maximum.
    let gap: Vec<i32> =
        stats.iter().map(|st| (st.max / st.mean.max(1e-12)).log2().floor().max(0.0) as i32).collect();
    let wmax: Vec<f64> = maps.iter().map(|mp| max_abs(&mp.weights).max(1e-12)).collect();
    let mut best: Option<(f64, i32, Vec<i32>, Vec<i32>)> = None;
    for f in 6..=16 {
        // Variables: e_i (activation bits of hidden maps; s_i = ceil(log2 m_i + f - e_i)),
        // w_i (weight precision bits; t_i = w_i - floor(log2 max|W'_i|)).
        let mut e = vec![2i32; l];
        let mut w = vec![2i32; l];
        let derive = |e: &[i32], w: &[i32]| -> (Vec<i32>, Vec<i32>) {
            let s: Vec<i32> = (0..l)
                .map(|i| if i + 1 < l { (m[i].log2() + f as f64 - e[i] as f64).ceil() as i32 } else { 0 })
                .collect();
            let t: Vec<i32> = (0..l)
                .map(|i| {
                    let prev = if i > 0 { 2 * s[i - 1] } else { 0 };
                    let scaled = wmax[i].log2() - s[i] as f64 + prev as f64;
                    (w[i] - scaled.floor() as i32).clamp(0, 30)
                })
                .collect();
            (s, t)
        };
        let ok = |e: &[i32], w: &[i32]| {
            let (s, t) = derive(e, w);
            failure_log2(stats, f, &t, &s) <= target_log2
        };
        if !ok(&e, &w) {
            continue;
        }
        let mut frozen = vec![false; 2 * l];
        loop {
            // Candidate with least precision: activations (hidden maps) then weights.
            let mut pick: Option<(i32, usize)> = None;
            for v in 0..2 * l {
                if frozen[v] || (v < l && v + 1 == l) {
                    continue;
                }
                let prec = if v < l { (e[v] - gap[v]).min(2 * (e[v] - gap[v]) - f) } else { w[v - l] };
                if pick.is_none_or(|(p, _)| prec < p) {
                    pick = Some((prec, v));
                }
            }
            let Some((_, v)) = pick else { break };
            let (mut e2, mut w2) = (e.clone(), w.clone());
            if v < l {
                e2[v] += 1;
            } else {
                w2[v - l] += 1;
            }
            if (v < l && e2[v] > 24) || (v >= l && w2[v - l] > 24) || !ok(&e2, &w2) {
                frozen[v] = true;
            } else {
                e = e2;
                w = w2;
            }
        }
        let act = (0..l - 1).map(|i| (e[i] - gap[i]).min(2 * (e[i] - gap[i]) - f)).min().unwrap_or(i32::MAX);
        let score = (act.min(*w.iter().min().unwrap_or(&0)).min(f)) as f64 + f as f64 * 1e-3;
        if best.as_ref().is_none_or(|b| score > b.0) {
            let (s, t) = derive(&e, &w);
            best = Some((score, f, t, s));
        }
    }
    best.map(|(_, f, t, s)| (f, t, s))
}

/// Per output element, the sum of the weights it reads (the map applied to an all-ones input).
fn row_sums(kind: &LinearKind, w: &[i64]) -> Vec<i64> {
    let ones = vec![1.0; kind.input_len()];
    let wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    float_linear(kind, &wf, &ones).iter().map(|v| v.round() as i64).collect()
}

/// Apply the power-of-two rescales to a float model (exact in the reals).
pub fn rescale(model: &FloatModel, s: &[i32]) -> FloatModel {
    let mut out = model.clone();
    for i in 0..out.maps.len() {
        let row = 2f64.powi(-s[i]);
        let col = if i > 0 { 2f64.powi(2 * s[i - 1]) } else { 1.0 };
        out.maps[i].weights.iter_mut().for_each(|v| *v *= row * col);
        out.maps[i].bias.iter_mut().for_each(|v| *v *= row);
    }
    out
}

/// Choose parameters from calibration inputs so that one inference fails with probability at
/// most `2^failure_target_log2` ([`FAILURE_TARGET_LOG2`] unless an operator accepts more) and
/// quantise. Returns the merged model, the rescaled float model (the real-valued twin of the
/// merged model), and the report.
pub fn quantise(
    model_id: &str,
    float: &FloatModel,
    calibration: &[Vec<f64>],
    failure_target_log2: f64,
) -> Result<(MergedModel, FloatModel, QuantReport), MergeError> {
    if !(-60.0..=WEAKEST_FAILURE_LOG2).contains(&failure_target_log2) {
        return Err(MergeError::FailureTarget(failure_target_log2));
    }
    let l = float.maps.len();
    if calibration.is_empty() || calibration.iter().any(|x| x.len() != float.input.len()) {
        return Err(MergeError::Calibration);
    }
    let mut elem_max: Vec<Vec<f64>> = float.maps.iter().map(|m| vec![0.0; m.kind.output_len()]).collect();
    let mut abs_sum = vec![0.0f64; l];
    // Per map, the largest over inputs of sum_j |y_j| and of sum_j y_j^2: the failure
    // probability of one inference is a sum over its elements, so its worst case over the data
    // is bounded by these (tighter than summing each element's own maximum, which combines
    // maxima from different inputs).
    let mut image_sum_max = vec![0.0f64; l];
    let mut image_sum_sq_max = vec![0.0f64; l];
    for x in calibration {
        for (i, y) in float.trace(x).iter().enumerate() {
            let (mut sum, mut sum_sq) = (0.0f64, 0.0f64);
            for (m, v) in elem_max[i].iter_mut().zip(y) {
                *m = m.max(v.abs());
                abs_sum[i] += v.abs();
                sum += v.abs();
                sum_sq += v * v;
            }
            image_sum_max[i] = image_sum_max[i].max(sum);
            image_sum_sq_max[i] = image_sum_sq_max[i].max(sum_sq);
        }
    }
    let measured: Vec<f64> = elem_max.iter().map(|v| max_abs(v)).collect();
    let stats: Vec<Stats> = (0..l)
        .map(|i| Stats {
            n: elem_max[i].len() as f64,
            max: measured[i] * SAFETY_MARGIN,
            mean: abs_sum[i] / (elem_max[i].len() * calibration.len()) as f64,
            sum_max: image_sum_max[i] * SAFETY_MARGIN,
            sum_max_sq: image_sum_sq_max[i] * SAFETY_MARGIN * SAFETY_MARGIN,
        })
        .collect();
    let (f, t, s) = choose(&float.maps, &stats, failure_target_log2)
        .ok_or(MergeError::NoParameters(failure_target_log2))?;
    let report = QuantReport {
        frac_bits: f as u8,
        truncate_bits: t.iter().map(|&v| v as u8).collect(),
        shifts: s.clone(),
        measured_max: measured,
        failure_log2: failure_log2(&stats, f, &t, &s),
        calibration_inputs: calibration.len(),
    };
    let (merged, scaled) = quantise_with(model_id, float, &report)?;
    Ok((merged, scaled, report))
}

/// Quantise with parameters chosen earlier (a committed calibration, `<model>.quant.json`), so
/// loading a model is deterministic and needs no data set: the architecture hash, which client
/// and server compare, depends on these parameters.
pub fn quantise_with(
    model_id: &str,
    float: &FloatModel,
    params: &QuantReport,
) -> Result<(MergedModel, FloatModel), MergeError> {
    let l = float.maps.len();
    if params.truncate_bits.len() != l || params.shifts.len() != l {
        return Err(MergeError::Parameters {
            maps: l,
            truncate_bits: params.truncate_bits.len(),
            shifts: params.shifts.len(),
        });
    }
    // The committed file is input: check every parameter (through the same validation as any
    // descriptor from outside) before it is used as a shift or an exponent.
    let mut maps: heapless::Vec<AffineSpec, { core_nostd::arch::MAX_MAPS }> = heapless::Vec::new();
    for (m, &truncate_bits) in float.maps.iter().zip(&params.truncate_bits) {
        maps.push(AffineSpec { kind: m.kind, truncate_bits }).map_err(|_| MergeError::TooManyMaps(l))?;
    }
    let mut id = heapless::String::new();
    for ch in model_id.chars().take(core_nostd::arch::MAX_MODEL_ID) {
        if id.push(ch).is_err() {
            break;
        }
    }
    let arch = Architecture { model_id: id, input: float.input, maps, frac_bits: params.frac_bits };
    arch.validate().map_err(super::merged::ModelError::Arch)?;
    if let Some((map, &shift)) = params.shifts.iter().enumerate().find(|(_, s)| s.abs() > MAX_SHIFT) {
        return Err(MergeError::Shift { map, shift });
    }
    let f = i32::from(params.frac_bits);
    let t: Vec<i32> = params.truncate_bits.iter().map(|&v| i32::from(v)).collect();
    let scaled = rescale(float, &params.shifts);
    let mut weights = vec![];
    for (i, m) in scaled.maps.iter().enumerate() {
        let ws = 2f64.powi(t[i]);
        let bs = 2f64.powi(f + t[i]);
        let w_int: Vec<i64> = m.weights.iter().map(|v| (v * ws).round() as i64).collect();
        // Floor truncation biases by -1/2 ulp on average. For the map's own truncation, adding
        // 2^(t-1) to the bias turns the floor into round-to-nearest exactly; the -1/2 ulp of the
        // previous square's floor is compensated in expectation by adding W * (1/2 ulp).
        let half_ulp_in = if i > 0 { row_sums(&m.kind, &w_int) } else { vec![0; m.bias.len()] };
        let round = if t[i] > 0 { 1i64 << (t[i] - 1) } else { 0 };
        let bias = m
            .bias
            .iter()
            .zip(&half_ulp_in)
            .map(|(v, &h)| (v * bs).round() as i64 + round + if i > 0 { h / 2 } else { 0 })
            .collect();
        weights.push(AffineWeights { weights: w_int, bias });
    }
    let merged = MergedModel { arch, maps: weights };
    merged.validate()?;
    Ok((merged, scaled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Quadratic;
    use rand_core::{RngCore, SeedableRng};

    fn rand_vec(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.next_u32() as f64 / u32::MAX as f64 - 0.5).collect()
    }

    fn dense(rng: &mut rand_chacha::ChaCha8Rng, inputs: usize, outputs: usize) -> FloatMap {
        FloatMap {
            kind: LinearKind::Dense { inputs: inputs as u32, outputs: outputs as u32 },
            weights: rand_vec(rng, inputs * outputs),
            bias: rand_vec(rng, outputs),
        }
    }

    fn conv(
        rng: &mut rand_chacha::ChaCha8Rng,
        cin: usize,
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> LinOp {
        LinOp::Conv {
            out_channels: cout,
            kernel: (k, k),
            stride: (s, s),
            pad: (p, p),
            weights: rand_vec(rng, cout * cin * k * k),
            bias: rand_vec(rng, cout),
        }
    }

    fn check_fused(ops: &[LinOp], input: Shape, expect_conv: bool) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let map = fuse_stage(ops, input, 0).unwrap();
        assert_eq!(matches!(map.kind, LinearKind::Conv2d { .. }), expect_conv, "{:?}", map.kind);
        for _ in 0..3 {
            let x = rand_vec(&mut rng, input.len());
            let (direct, _) = apply_run(ops, input, &x);
            let mut fused = float_linear(&map.kind, &map.weights, &x);
            fused.iter_mut().zip(&map.bias).for_each(|(a, b)| *a += b);
            for (a, b) in fused.iter().zip(&direct) {
                assert!((a - b).abs() < 1e-9, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn conv_and_avgpool_compose_exactly_in_both_orders() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let pool = LinOp::AvgPool { kernel: (2, 2), stride: (2, 2) };
        let bn = LinOp::ChannelAffine { scale: vec![1.5, -0.5, 2.0], shift: vec![0.1, 0.2, 0.3] };
        // conv (padded, strided) -> BN -> avgpool
        check_fused(&[conv(&mut rng, 2, 3, 3, 2, 1), bn.clone(), pool.clone()], Shape::new(2, 11, 11), true);
        // avgpool -> conv -> avgpool -> conv (odd sizes: floor semantics at the border)
        let ops = [pool.clone(), conv(&mut rng, 2, 3, 3, 1, 0), pool.clone(), conv(&mut rng, 3, 2, 2, 1, 0)];
        check_fused(&ops, Shape::new(2, 21, 19), true);
        let map = fuse_stage(&ops, Shape::new(2, 21, 19), 0).unwrap();
        assert!(matches!(map.kind, LinearKind::Conv2d { kernel_h: 12, stride_h: 4, .. }), "{:?}", map.kind);
        // A padded conv after a pool of an even-sized map is a conv (padding 2 = 1 x stride 2);
        // after a pool that drops a row it is not exactly a conv and falls back to a dense map.
        let c = conv(&mut rng, 2, 2, 3, 1, 1);
        check_fused(&[pool.clone(), c.clone()], Shape::new(2, 8, 8), true);
        check_fused(&[pool.clone(), c], Shape::new(2, 9, 9), false);
        // conv (padded) -> pool -> padded conv: k1 = 3 + 1 <= s1 + p1 = 2 + 1 fails -> dense.
        let ops = [conv(&mut rng, 1, 2, 3, 1, 1), pool, conv(&mut rng, 2, 2, 3, 1, 1)];
        check_fused(&ops, Shape::new(1, 8, 8), false);
        // conv -> flatten -> dense is dense.
        let dense = LinOp::Dense {
            inputs: 18,
            outputs: 4,
            weights: rand_vec(&mut rng, 72),
            bias: rand_vec(&mut rng, 4),
        };
        check_fused(
            &[conv(&mut rng, 1, 2, 2, 1, 0), LinOp::Reshape { to: Shape::flat(18) }, dense],
            Shape::new(1, 4, 4),
            false,
        );
    }

    #[test]
    fn quadratic_activation_is_rewritten_as_a_bare_square() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let d1 = LinOp::Dense {
            inputs: 5,
            outputs: 4,
            weights: rand_vec(&mut rng, 20),
            bias: rand_vec(&mut rng, 4),
        };
        let d2 = LinOp::Dense {
            inputs: 4,
            outputs: 3,
            weights: rand_vec(&mut rng, 12),
            bias: rand_vec(&mut rng, 3),
        };
        let q = Quadratic {
            a: vec![0.5, -1.0, 2.0, 0.25],
            b: vec![0.3, 0.0, -1.0, 2.0],
            c: vec![1.0, -0.5, 0.0, 0.2],
        };
        let imp = Imported {
            input: Shape::flat(5),
            stages: vec![vec![d1], vec![d2]],
            activations: vec![q],
            nodes: vec![],
        };
        let float = merge_float(&imp).unwrap();
        assert_eq!(float.maps.len(), 2);
        for _ in 0..5 {
            let x = rand_vec(&mut rng, 5);
            let (a, b) = (float.forward(&x), imp.evaluate(&x));
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() < 1e-12, "{u} vs {v}");
            }
        }
        let mut zero = imp.clone();
        zero.activations[0].a[2] = 0.0;
        assert!(matches!(merge_float(&zero), Err(MergeError::ZeroQuadratic { layer: 0, element: 2 })));
    }

    #[test]
    fn rescaling_is_exact_and_the_bound_grows_with_precision() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let model = FloatModel {
            input: Shape::flat(6),
            maps: vec![dense(&mut rng, 6, 5), dense(&mut rng, 5, 4), dense(&mut rng, 4, 2)],
        };
        let scaled = rescale(&model, &[3, -2, 0]);
        let x = rand_vec(&mut rng, 6);
        for (u, v) in scaled.forward(&x).iter().zip(&model.forward(&x)) {
            assert!((u - v).abs() < 1e-12);
        }
        let st = |n: f64, m: f64| Stats { n, max: m, mean: m, sum_max: n * m, sum_max_sq: n * m * m };
        let stats = [st(5.0, 4.0), st(4.0, 2.0), st(2.0, 1.0)];
        let lo = failure_log2(&stats, 8, &[8, 8, 8], &[0, 0, 0]);
        let hi = failure_log2(&stats, 12, &[8, 8, 8], &[0, 0, 0]);
        assert!(hi > lo + 3.0);
        // 5 + 4 + 2 map outputs at |x| = 4*2^16, 2*2^16, 2^16 and 9 squared elements.
        let expect = (5.0 * (4.0 * 65536.0 + 1.0)
            + 4.0 * (2.0 * 65536.0 + 1.0)
            + 2.0 * 65537.0
            + 5.0 * (16.0 * 65536.0 + 1.0)
            + 4.0 * (4.0 * 65536.0 + 1.0))
            / P_F64;
        assert!((lo - expect.log2()).abs() < 1e-9);
    }

    #[test]
    fn a_weaker_failure_bound_buys_fraction_bits_and_is_met() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let model =
            FloatModel { input: Shape::flat(8), maps: vec![dense(&mut rng, 8, 6), dense(&mut rng, 6, 3)] };
        let cal: Vec<Vec<f64>> = (0..32).map(|_| rand_vec(&mut rng, 8)).collect();
        let (_, _, strict) = quantise("m", &model, &cal, FAILURE_TARGET_LOG2).unwrap();
        let (_, _, weak) = quantise("m", &model, &cal, -20.0).unwrap();
        assert!(strict.failure_log2 <= FAILURE_TARGET_LOG2 && weak.failure_log2 <= -20.0);
        assert!(
            weak.failure_log2 > strict.failure_log2 + 5.0,
            "{} vs {}",
            weak.failure_log2,
            strict.failure_log2
        );
        let bits = |r: &QuantReport| {
            u32::from(r.frac_bits) + r.truncate_bits.iter().map(|&t| u32::from(t)).sum::<u32>()
        };
        assert!(bits(&weak) > bits(&strict), "{weak:?} vs {strict:?}");
        for bad in [-5.0, -61.0, f64::NAN] {
            assert!(matches!(quantise("m", &model, &cal, bad), Err(MergeError::FailureTarget(_))), "{bad}");
        }
    }

    #[test]
    fn hostile_parameter_files_are_refused_before_use() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let model =
            FloatModel { input: Shape::flat(4), maps: vec![dense(&mut rng, 4, 3), dense(&mut rng, 3, 2)] };
        let good = QuantReport {
            frac_bits: 8,
            truncate_bits: vec![8, 8],
            shifts: vec![0, 0],
            measured_max: vec![1.0, 1.0],
            failure_log2: -40.0,
            calibration_inputs: 1,
        };
        assert!(quantise_with("m", &model, &good).is_ok());
        let arch_error = |r: &QuantReport| {
            matches!(
                quantise_with("m", &model, r),
                Err(MergeError::Model(super::super::merged::ModelError::Arch(_)))
            )
        };
        assert!(arch_error(&QuantReport { frac_bits: 255, ..good.clone() }));
        assert!(arch_error(&QuantReport { truncate_bits: vec![255, 8], ..good.clone() }));
        let far = QuantReport { shifts: vec![i32::MAX, 0], ..good.clone() };
        assert!(matches!(
            quantise_with("m", &model, &far),
            Err(MergeError::Shift { map: 0, shift: i32::MAX })
        ));
        let short = QuantReport { shifts: vec![0], ..good };
        assert!(matches!(quantise_with("m", &model, &short), Err(MergeError::Parameters { maps: 2, .. })));
    }
}
