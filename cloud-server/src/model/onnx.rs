//! ONNX import: what PyTorch exports for the square-activation networks of DESIGN §6.
//!
//! The protobuf is parsed by `tract-onnx` (whose own evaluator the tests use as the independent
//! reference for the unmerged graph). The graph is then walked symbolically: every value is a
//! constant, an affine function of the current stage input (a chain of [`LinOp`]s), or a
//! quadratic polynomial `a*y^2 + b*y + c` of one such affine value. This accepts exactly the
//! shapes the protocol can run: chains of linear ops separated by quadratic activations, where
//! the quadratic may be written as `Mul(y,y)`/`Pow(y,2)` followed by `Mul`/`Add` nodes with
//! constants and with (scaled) `y` itself. Everything else is rejected with the op and node:
//! unsupported op types, dynamic shapes, asymmetric padding, and residual connections (an `Add`
//! of two computed branches that is not part of a quadratic activation) -- a residual link would
//! need the pre-activation value twice, which the one-map-per-layer protocol cannot express.

use super::graph::{Imported, LinOp, Quadratic};
use core_nostd::arch::Shape;
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

/// Why an ONNX file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read or parse ONNX file: {0}")]
    Parse(String),
    #[error("unsupported ONNX op `{op}` (node `{node}`); supported: Conv, Gemm, MatMul, Add, Mul, Pow, BatchNormalization, AveragePool, Flatten, Reshape, Constant")]
    UnsupportedOp { op: String, node: String },
    #[error("dynamic or unknown shape for graph input `{0}`: every dimension must be a fixed number")]
    DynamicShape(String),
    #[error("node `{node}` ({op}): residual/branching connection (two computed values combined, or a value reused across an activation); only chains with quadratic activations are supported")]
    Residual { op: String, node: String },
    #[error("node `{node}` ({op}): {reason}")]
    Unsupported { op: String, node: String, reason: String },
    #[error("node `{node}` refers to unknown value `{value}`")]
    UnknownValue { node: String, value: String },
    #[error("the graph must have exactly one input and one output")]
    Io,
    #[error("the model output is an activation, not an affine map")]
    EndsWithActivation,
}

#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: Vec<f64>,
}

#[derive(Clone, Debug)]
struct LinVal {
    stage: usize,
    ops: Vec<LinOp>,
    shape: Shape,
}

#[derive(Clone, Debug)]
enum Val {
    Const(Const),
    Lin(LinVal),
    Quad { y: LinVal, q: Quadratic },
}

fn tensor_to_const(t: &pb::TensorProto) -> Result<Const, String> {
    let resolver = tract_onnx::data_resolver::default();
    let tensor = tract_onnx::tensor::load_tensor(&*resolver, t, None).map_err(|e| e.to_string())?;
    let dims = tensor.shape().to_vec();
    let cast = tensor.cast_to::<f64>().map_err(|e| e.to_string())?;
    let data = cast.to_plain_array_view::<f64>().map_err(|e| e.to_string())?.iter().copied().collect();
    Ok(Const { dims, data })
}

struct Ctx {
    values: HashMap<String, Val>,
    stages: Vec<Vec<LinOp>>,
    acts: Vec<Quadratic>,
    input: Shape,
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}
fn attr_ints(node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}
fn attr_int(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}
fn attr_float(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

/// Import an ONNX file.
pub fn import_path(path: &Path) -> Result<Imported, ImportError> {
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| ImportError::Parse(format!("{}: {e}", path.display())))?;
    import_proto(&proto)
}

/// Import a parsed ONNX model.
pub fn import_proto(proto: &pb::ModelProto) -> Result<Imported, ImportError> {
    let graph = proto.graph.as_ref().ok_or_else(|| ImportError::Parse("no graph".into()))?;
    let mut values = HashMap::new();
    for t in &graph.initializer {
        let c =
            tensor_to_const(t).map_err(|e| ImportError::Parse(format!("initializer `{}`: {e}", t.name)))?;
        values.insert(t.name.clone(), Val::Const(c));
    }
    let inputs: Vec<&pb::ValueInfoProto> =
        graph.input.iter().filter(|i| !values.contains_key(&i.name)).collect();
    if inputs.len() != 1 || graph.output.len() != 1 {
        return Err(ImportError::Io);
    }
    let input = inputs[0];
    let dims = input_dims(input)?;
    let shape = match dims.as_slice() {
        [1, c, h, w] => Shape::new(*c as u32, *h as u32, *w as u32),
        [1, n] => Shape::flat(*n as u32),
        [c, h, w] => Shape::new(*c as u32, *h as u32, *w as u32),
        _ => {
            return Err(ImportError::Unsupported {
                op: "input".into(),
                node: input.name.clone(),
                reason: format!("input shape {dims:?} is not [1,C,H,W] or [1,N]"),
            })
        }
    };
    values.insert(input.name.clone(), Val::Lin(LinVal { stage: 0, ops: vec![], shape }));
    let mut ctx = Ctx { values, stages: vec![], acts: vec![], input: shape };
    let mut nodes = vec![];
    for node in &graph.node {
        let out = ctx.node(node)?;
        for (name, v) in node.output.iter().zip([out]) {
            ctx.values.insert(name.clone(), v);
        }
        nodes.push((node.op_type.clone(), node.name.clone()));
    }
    let out_name = &graph.output[0].name;
    match ctx.values.get(out_name) {
        Some(Val::Lin(l)) if l.stage == ctx.stages.len() => {
            ctx.stages.push(l.ops.clone());
        }
        Some(Val::Quad { .. }) => return Err(ImportError::EndsWithActivation),
        _ => return Err(ImportError::Io),
    }
    Ok(Imported { input: ctx.input, stages: ctx.stages, activations: ctx.acts, nodes })
}

fn input_dims(input: &pb::ValueInfoProto) -> Result<Vec<usize>, ImportError> {
    use pb::tensor_shape_proto::dimension::Value as D;
    use pb::type_proto::Value as T;
    let dynamic = || ImportError::DynamicShape(input.name.clone());
    let Some(T::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(dynamic());
    };
    let shape = t.shape.as_ref().ok_or_else(dynamic)?;
    shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(D::DimValue(v)) if v > 0 => Ok(v as usize),
            _ => Err(dynamic()),
        })
        .collect()
}

impl Ctx {
    fn get(&self, node: &pb::NodeProto, i: usize) -> Result<Val, ImportError> {
        let name = node.input.get(i).ok_or_else(|| self.unsup(node, format!("missing input {i}")))?;
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| ImportError::UnknownValue { node: node.name.clone(), value: name.clone() })
    }

    fn unsup(&self, node: &pb::NodeProto, reason: String) -> ImportError {
        ImportError::Unsupported { op: node.op_type.clone(), node: node.name.clone(), reason }
    }

    fn residual(node: &pb::NodeProto) -> ImportError {
        ImportError::Residual { op: node.op_type.clone(), node: node.name.clone() }
    }

    fn get_const(&self, node: &pb::NodeProto, i: usize) -> Result<Const, ImportError> {
        match self.get(node, i)? {
            Val::Const(c) => Ok(c),
            _ => Err(self.unsup(node, format!("input {i} must be a constant (initializer)"))),
        }
    }

    /// A linear value that a new linear op may extend: closes the pending activation if needed.
    fn lin_input(&mut self, node: &pb::NodeProto) -> Result<LinVal, ImportError> {
        match self.get(node, 0)? {
            Val::Lin(l) if l.stage == self.stages.len() => Ok(l),
            Val::Quad { y, q } if y.stage == self.stages.len() => {
                self.stages.push(y.ops.clone());
                self.acts.push(q);
                Ok(LinVal { stage: self.stages.len(), ops: vec![], shape: y.shape })
            }
            Val::Const(_) => Err(self.unsup(node, "data input is a constant".into())),
            _ => Err(Self::residual(node)),
        }
    }

    fn push(&self, node: &pb::NodeProto, mut l: LinVal, op: LinOp) -> Result<Val, ImportError> {
        let out = op.output_shape(l.shape);
        if out.is_empty() {
            return Err(self.unsup(node, "empty output".into()));
        }
        l.ops.push(op);
        l.shape = out;
        Ok(Val::Lin(l))
    }

    /// A constant broadcast against `shape`: per-channel (incl. scalar) or full, as per-element
    /// vectors of length `shape.len()`, plus whether it is per-channel.
    fn broadcast(
        &self,
        node: &pb::NodeProto,
        c: &Const,
        shape: Shape,
    ) -> Result<(Vec<f64>, Option<Vec<f64>>), ImportError> {
        let n = shape.len();
        let (ch, hw) = (shape.channels as usize, shape.height as usize * shape.width as usize);
        let significant: Vec<usize> = c.dims.iter().copied().filter(|&d| d != 1).collect();
        if c.data.len() == 1 {
            return Ok((vec![c.data[0]; n], Some(vec![c.data[0]; ch])));
        }
        if c.data.len() == ch && significant.len() == 1 && (hw == 1 || c.dims.len() >= 3) {
            let per: Vec<f64> = c.data.clone();
            return Ok(((0..n).map(|k| per[k / hw]).collect(), Some(per)));
        }
        if c.data.len() == n {
            return Ok((c.data.clone(), None));
        }
        Err(self.unsup(
            node,
            format!(
                "constant of shape {:?} does not broadcast to {}x{}x{}",
                c.dims, shape.channels, shape.height, shape.width
            ),
        ))
    }

    fn scale_shift_op(
        &self,
        node: &pb::NodeProto,
        c: &Const,
        shape: Shape,
        mul: bool,
    ) -> Result<LinOp, ImportError> {
        let (full, per) = self.broadcast(node, c, shape)?;
        Ok(match (per, mul) {
            (Some(p), true) => LinOp::ChannelAffine { shift: vec![0.0; p.len()], scale: p },
            (Some(p), false) => LinOp::ChannelAffine { scale: vec![1.0; p.len()], shift: p },
            (None, true) => LinOp::Elementwise { shift: vec![0.0; full.len()], scale: full },
            (None, false) => LinOp::Elementwise { scale: vec![1.0; full.len()], shift: full },
        })
    }

    fn node(&mut self, node: &pb::NodeProto) -> Result<Val, ImportError> {
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(ImportError::UnsupportedOp {
                op: format!("{}:{}", node.domain, node.op_type),
                node: node.name.clone(),
            });
        }
        match node.op_type.as_str() {
            "Constant" => {
                let t = attr(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .ok_or_else(|| self.unsup(node, "only tensor `value` constants are supported".into()))?;
                Ok(Val::Const(tensor_to_const(t).map_err(|e| self.unsup(node, e))?))
            }
            "Conv" => self.conv(node),
            "Gemm" => self.gemm(node),
            "MatMul" => {
                let l = self.lin_input(node)?;
                let w = self.get_const(node, 1)?;
                let [inputs, outputs] = w.dims[..] else {
                    return Err(self.unsup(node, "weight must be 2-D".into()));
                };
                if l.shape.len() != inputs || l.shape.height != 1 || l.shape.width != 1 {
                    return Err(self.unsup(
                        node,
                        format!("input of {} elements is not a flat vector of {inputs}", l.shape.len()),
                    ));
                }
                // MatMul computes x W with W [in][out]; store W^T.
                let mut wt = vec![0.0; inputs * outputs];
                for i in 0..inputs {
                    for o in 0..outputs {
                        wt[o * inputs + i] = w.data[i * outputs + o];
                    }
                }
                self.push(node, l, LinOp::Dense { inputs, outputs, weights: wt, bias: vec![0.0; outputs] })
            }
            "BatchNormalization" => {
                let l = self.lin_input(node)?;
                let eps = attr_float(node, "epsilon", 1e-5) as f64;
                let (g, b, m, v) = (
                    self.get_const(node, 1)?,
                    self.get_const(node, 2)?,
                    self.get_const(node, 3)?,
                    self.get_const(node, 4)?,
                );
                let ch = l.shape.channels as usize;
                if [&g, &b, &m, &v].iter().any(|c| c.data.len() != ch) {
                    return Err(self.unsup(node, "parameter length differs from channel count".into()));
                }
                let scale: Vec<f64> = (0..ch).map(|k| g.data[k] / (v.data[k] + eps).sqrt()).collect();
                let shift: Vec<f64> = (0..ch).map(|k| b.data[k] - m.data[k] * scale[k]).collect();
                self.push(node, l, LinOp::ChannelAffine { scale, shift })
            }
            "AveragePool" => {
                let l = self.lin_input(node)?;
                let k = attr_ints(node, "kernel_shape").unwrap_or_default();
                let s = attr_ints(node, "strides").unwrap_or_else(|| vec![1, 1]);
                let pads = attr_ints(node, "pads").unwrap_or_else(|| vec![0; 4]);
                if k.len() != 2
                    || s.len() != 2
                    || pads.iter().any(|&p| p != 0)
                    || attr_int(node, "ceil_mode", 0) != 0
                {
                    return Err(
                        self.unsup(node, "only 2-D average pooling without padding or ceil_mode".into())
                    );
                }
                let (kernel, stride) = ((k[0] as usize, k[1] as usize), (s[0] as usize, s[1] as usize));
                if kernel.0 == 0
                    || stride.0 == 0
                    || kernel.1 == 0
                    || stride.1 == 0
                    || kernel.0 > l.shape.height as usize
                    || kernel.1 > l.shape.width as usize
                {
                    return Err(self.unsup(node, "kernel does not fit".into()));
                }
                self.push(node, l, LinOp::AvgPool { kernel, stride })
            }
            "Flatten" => {
                let l = self.lin_input(node)?;
                if attr_int(node, "axis", 1) != 1 {
                    return Err(self.unsup(node, "only axis 1".into()));
                }
                let to = Shape::flat(l.shape.len() as u32);
                self.push(node, l, LinOp::Reshape { to })
            }
            "Reshape" => {
                let l = self.lin_input(node)?;
                let target = self.get_const(node, 1)?;
                let n = l.shape.len() as f64;
                let ok = matches!(target.data[..], [a, b] if (a == 1.0 || a == -1.0) && (b == n || b == -1.0) && !(a == -1.0 && b == -1.0));
                if !ok {
                    return Err(self.unsup(
                        node,
                        format!("only a flatten to [1, {n}] is supported, got {:?}", target.data),
                    ));
                }
                let to = Shape::flat(l.shape.len() as u32);
                self.push(node, l, LinOp::Reshape { to })
            }
            "Mul" => self.mul(node),
            "Add" => self.add(node),
            "Pow" => {
                let e = self.get_const(node, 1)?;
                if e.data.len() != 1 || e.data[0] != 2.0 {
                    return Err(self.unsup(node, "only the exponent 2 is supported".into()));
                }
                match self.get(node, 0)? {
                    Val::Lin(y) if y.stage == self.stages.len() => Ok(square(y)),
                    Val::Lin(_) => Err(Self::residual(node)),
                    _ => Err(self.unsup(node, "Pow of a non-affine value (degree > 2)".into())),
                }
            }
            other => Err(ImportError::UnsupportedOp { op: other.to_string(), node: node.name.clone() }),
        }
    }

    fn conv(&mut self, node: &pb::NodeProto) -> Result<Val, ImportError> {
        let l = self.lin_input(node)?;
        let w = self.get_const(node, 1)?;
        let bias = if node.input.len() > 2 && !node.input[2].is_empty() {
            Some(self.get_const(node, 2)?)
        } else {
            None
        };
        if attr_int(node, "group", 1) != 1
            || attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1))
        {
            return Err(self.unsup(node, "grouped or dilated convolution".into()));
        }
        if attr(node, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
            return Err(self.unsup(node, "auto_pad".into()));
        }
        let [oc, ic, kh, kw] = w.dims[..] else { return Err(self.unsup(node, "weight must be 4-D".into())) };
        if ic != l.shape.channels as usize || l.shape.height == 1 && l.shape.width == 1 && kh * kw > 1 {
            return Err(self
                .unsup(node, format!("weight expects {ic} input channels, input has shape {:?}", l.shape)));
        }
        let s = attr_ints(node, "strides").unwrap_or_else(|| vec![1, 1]);
        let p = attr_ints(node, "pads").unwrap_or_else(|| vec![0; 4]);
        if s.len() != 2 || p.len() != 4 || s.iter().any(|&v| v <= 0) || p.iter().any(|&v| v < 0) {
            return Err(self.unsup(node, "bad strides/pads".into()));
        }
        if p[0] != p[2] || p[1] != p[3] {
            return Err(self.unsup(node, format!("asymmetric padding {p:?}")));
        }
        let (pad, stride) = ((p[0] as usize, p[1] as usize), (s[0] as usize, s[1] as usize));
        if kh > l.shape.height as usize + 2 * pad.0 || kw > l.shape.width as usize + 2 * pad.1 {
            return Err(self.unsup(node, "kernel larger than padded input".into()));
        }
        let bias = match bias {
            Some(b) if b.data.len() == oc => b.data,
            Some(_) => return Err(self.unsup(node, "bias length".into())),
            None => vec![0.0; oc],
        };
        self.push(
            node,
            l,
            LinOp::Conv { out_channels: oc, kernel: (kh, kw), stride, pad, weights: w.data, bias },
        )
    }

    fn gemm(&mut self, node: &pb::NodeProto) -> Result<Val, ImportError> {
        let l = self.lin_input(node)?;
        let w = self.get_const(node, 1)?;
        let alpha = attr_float(node, "alpha", 1.0) as f64;
        let beta = attr_float(node, "beta", 1.0) as f64;
        if attr_int(node, "transA", 0) != 0 {
            return Err(self.unsup(node, "transA".into()));
        }
        let trans_b = attr_int(node, "transB", 0) != 0;
        let [d0, d1] = w.dims[..] else { return Err(self.unsup(node, "weight must be 2-D".into())) };
        let (inputs, outputs) = if trans_b { (d1, d0) } else { (d0, d1) };
        if l.shape.len() != inputs || l.shape.height != 1 || l.shape.width != 1 {
            return Err(
                self.unsup(node, format!("input of shape {:?} is not a flat vector of {inputs}", l.shape))
            );
        }
        let mut weights = vec![0.0; inputs * outputs];
        for o in 0..outputs {
            for i in 0..inputs {
                let v = if trans_b { w.data[o * inputs + i] } else { w.data[i * outputs + o] };
                weights[o * inputs + i] = alpha * v;
            }
        }
        let bias = if node.input.len() > 2 && !node.input[2].is_empty() {
            let c = self.get_const(node, 2)?;
            let (full, _) = self.broadcast(node, &c, Shape::flat(outputs as u32))?;
            full.into_iter().map(|v| beta * v).collect()
        } else {
            vec![0.0; outputs]
        };
        self.push(node, l, LinOp::Dense { inputs, outputs, weights, bias })
    }

    fn mul(&mut self, node: &pb::NodeProto) -> Result<Val, ImportError> {
        let (a, b) = (self.get(node, 0)?, self.get(node, 1)?);
        let cur = self.stages.len();
        match (a, b) {
            (Val::Lin(x), Val::Lin(y)) => {
                if x.stage != cur || y.stage != cur {
                    return Err(Self::residual(node));
                }
                if node.input[0] == node.input[1] || x.ops == y.ops {
                    Ok(square(x))
                } else {
                    Err(self.unsup(node, "product of two different computed values".into()))
                }
            }
            (Val::Lin(x), Val::Const(c)) | (Val::Const(c), Val::Lin(x)) => {
                if x.stage != cur {
                    // A constant multiple of a value from before an activation: a branch.
                    return Err(Self::residual(node));
                }
                let op = self.scale_shift_op(node, &c, x.shape, true)?;
                self.push(node, x, op)
            }
            (Val::Quad { y, mut q }, Val::Const(c)) | (Val::Const(c), Val::Quad { y, mut q }) => {
                let (full, _) = self.broadcast(node, &c, y.shape)?;
                for (k, &v) in full.iter().enumerate() {
                    q.a[k] *= v;
                    q.b[k] *= v;
                    q.c[k] *= v;
                }
                Ok(Val::Quad { y, q })
            }
            (Val::Const(_), Val::Const(_)) => Err(self.unsup(
                node,
                "constant folding is not supported; export with do_constant_folding=True".into(),
            )),
            _ => Err(self.unsup(node, "product of degree > 2 (only squares are supported)".into())),
        }
    }

    fn add(&mut self, node: &pb::NodeProto) -> Result<Val, ImportError> {
        let (a, b) = (self.get(node, 0)?, self.get(node, 1)?);
        let cur = self.stages.len();
        match (a, b) {
            (Val::Lin(x), Val::Const(c)) | (Val::Const(c), Val::Lin(x)) => {
                if x.stage != cur {
                    return Err(Self::residual(node));
                }
                let op = self.scale_shift_op(node, &c, x.shape, false)?;
                self.push(node, x, op)
            }
            (Val::Quad { y, mut q }, Val::Const(c)) | (Val::Const(c), Val::Quad { y, mut q }) => {
                let (full, _) = self.broadcast(node, &c, y.shape)?;
                q.c.iter_mut().zip(&full).for_each(|(v, f)| *v += f);
                Ok(Val::Quad { y, q })
            }
            (Val::Quad { y, mut q }, Val::Lin(t)) | (Val::Lin(t), Val::Quad { y, mut q }) => {
                // `t` must be an element-wise affine function of `y`: `y`'s chain followed only by
                // element-wise scale/shift ops (the `b*y` term of a quadratic activation).
                if t.stage != y.stage || t.ops.len() < y.ops.len() || t.ops[..y.ops.len()] != y.ops[..] {
                    return Err(Self::residual(node));
                }
                let tail = &t.ops[y.ops.len()..];
                if !tail
                    .iter()
                    .all(|op| matches!(op, LinOp::ChannelAffine { .. } | LinOp::Elementwise { .. }))
                {
                    return Err(Self::residual(node));
                }
                let n = y.shape.len();
                let (at0, _) = super::graph::apply_run(tail, y.shape, &vec![0.0; n]);
                let (at1, _) = super::graph::apply_run(tail, y.shape, &vec![1.0; n]);
                for k in 0..n {
                    q.b[k] += at1[k] - at0[k];
                    q.c[k] += at0[k];
                }
                Ok(Val::Quad { y, q })
            }
            (Val::Quad { y, mut q }, Val::Quad { y: y2, q: q2 }) => {
                if y.stage != y2.stage || y.ops != y2.ops {
                    return Err(Self::residual(node));
                }
                for k in 0..q.a.len() {
                    q.a[k] += q2.a[k];
                    q.b[k] += q2.b[k];
                    q.c[k] += q2.c[k];
                }
                Ok(Val::Quad { y, q })
            }
            (Val::Lin(_), Val::Lin(_)) => Err(Self::residual(node)),
            (Val::Const(_), Val::Const(_)) => Err(self.unsup(
                node,
                "constant folding is not supported; export with do_constant_folding=True".into(),
            )),
        }
    }
}

fn square(y: LinVal) -> Val {
    let n = y.shape.len();
    Val::Quad { q: Quadratic { a: vec![1.0; n], b: vec![0.0; n], c: vec![0.0; n] }, y }
}
