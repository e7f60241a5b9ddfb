"""Shared helpers for the model tools: ONNX export with an op whitelist, and an independent
(onnx.reference.ReferenceEvaluator, not torch) evaluation for the Rust import tests.

Why a whitelist: the Rust importer (DESIGN.md section 6) accepts only Conv, Gemm/MatMul, Add,
BatchNormalization, AveragePool, Flatten/Reshape, Mul, Pow; exporting anything else must fail
here, loudly, instead of surfacing later as an import error.
"""
import json

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

ALLOWED_OPS = {"Conv", "Gemm", "MatMul", "Add", "BatchNormalization", "AveragePool",
               "Flatten", "Reshape", "Mul", "Pow"}
OPSET = 17


def export_onnx(model, input_shape, path):
    """Export `model` (eval mode) with a static batch-1 input; return the list of node op types."""
    model.eval()
    dummy = torch.zeros(*input_shape)
    torch.onnx.export(model, (dummy,), path, input_names=["input"], output_names=["logits"],
                      opset_version=OPSET, do_constant_folding=True, dynamo=False)
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    bad = sorted(set(ops) - ALLOWED_OPS)
    if bad:
        raise SystemExit(f"{path}: exported graph contains disallowed ops {bad}; all ops: {ops}")
    for n in m.graph.node:
        if n.op_type == "Pow":
            exps = [i for i in m.graph.initializer if i.name == n.input[1]]
            if not exps or onnx.numpy_helper.to_array(exps[0]).item() != 2:
                raise SystemExit(f"{path}: Pow node {n.name} exponent is not the constant 2")
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    if dims != list(input_shape):
        raise SystemExit(f"{path}: input shape {dims} is not static {list(input_shape)}")
    return ops


def reference_logits(path, inputs):
    """Evaluate the ONNX file with onnx's reference evaluator on each input (batch 1)."""
    sess = ReferenceEvaluator(path)
    out = []
    for x in inputs:
        (y,) = sess.run(None, {"input": np.asarray(x, dtype=np.float32)[None]})
        out.append([float(v) for v in y.reshape(-1)])
    return out


def write_expected(path_onnx, path_json, inputs, labels, input_desc):
    logits = reference_logits(path_onnx, inputs)
    with open(path_json, "w") as f:
        json.dump({"evaluator": f"onnx.reference.ReferenceEvaluator (onnx {onnx.__version__})",
                   "inputs": input_desc,
                   "labels": labels,
                   "logits": logits}, f, indent=1)
    return logits
