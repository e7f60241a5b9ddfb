#!/usr/bin/env python3
"""`cifar-sq` (timing only): MiniONN's CIFAR-10 seven-conv network with squares instead of ReLU,
seeded random weights, no training.

Why scaled: the fixed-point protocol's truncation failure probability grows with |value| and
squares blow values up, so each layer's weights are rescaled (on calibration inputs uniform in
[0,1]) so each output channel's pre-activation RMS is ~1; the square outputs then stay O(10) at most.
Usage: /opt/trainenv/bin/python tools/make_cifar_sq.py   (writes cloud-server/models/cifar-sq.*)
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnx_common import export_onnx, write_expected  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "cloud-server", "models")
SEED = 20261125


class Square(nn.Module):
    def forward(self, x):
        return x * x


def build():
    c = lambda i, o, k, p: nn.Conv2d(i, o, k, padding=p)  # noqa: E731
    return nn.Sequential(
        c(3, 64, 3, 1), Square(), c(64, 64, 3, 1), Square(), nn.AvgPool2d(2),
        c(64, 64, 3, 1), Square(), c(64, 64, 3, 1), Square(), nn.AvgPool2d(2),
        c(64, 64, 3, 1), Square(), c(64, 64, 1, 0), Square(), c(64, 16, 1, 0), Square(),
        nn.Flatten(), nn.Linear(1024, 10))


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    model = build().eval()
    calib = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        # Layer-wise: normalize each affine layer so its output (pre-activation) has RMS 1.
        x = calib
        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                y = layer(x)
                # Per output channel RMS (not std: the mean counts too, squares are >= 0).
                dims = [0, 2, 3] if y.dim() == 4 else [0]
                s = y.pow(2).mean(dim=dims).sqrt()
                layer.weight.mul_((1.0 / s).view(-1, *([1] * (layer.weight.dim() - 1))))
                layer.bias.mul_(1.0 / s)
            x = layer(x)
        test = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(SEED + 2))
        maxima, x, k = [], test, 0
        for layer in model:
            x = layer(x)
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                k += 1
                maxima.append({"layer": k, "kind": type(layer).__name__,
                               "max_abs_pre_activation": x.abs().max().item()})
            elif isinstance(layer, Square):
                maxima[-1]["max_abs_square_output"] = x.abs().max().item()
    for m in maxima:
        print(json.dumps(m))
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "cifar-sq.onnx")
    ops = export_onnx(model, (1, 3, 32, 32), path)
    print("ops:", ops)
    params = sum(p.numel() for p in model.parameters())
    inputs = test[:4].numpy()
    write_expected(path, os.path.join(OUT, "cifar-sq.expected.json"), inputs, None,
                   f"torch.rand(8,3,32,32, generator=manual_seed({SEED + 2}))[:4] as float32; "
                   "the flattened inputs are stored in 'input_values'")
    # Random inputs cannot be regenerated in Rust, so store them next to the logits.
    p = os.path.join(OUT, "cifar-sq.expected.json")
    d = json.load(open(p))
    d["input_values"] = [[float(v) for v in x.reshape(-1)] for x in inputs]
    json.dump(d, open(p, "w"))
    with open(os.path.join(OUT, "cifar-sq.json"), "w") as f:
        json.dump({"model": "cifar-sq", "trained": False, "seed": SEED, "parameters": params,
                   "test_accuracy": None, "ops": ops,
                   "activation_maxima_random_inputs": maxima}, f, indent=1)
    print(f"parameters {params}; wrote {path}")


if __name__ == "__main__":
    main()
