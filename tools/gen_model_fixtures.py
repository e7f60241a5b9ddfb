#!/usr/bin/env python3
"""Generate the small ONNX fixtures of cloud-server's model tests.

Run with /opt/trainenv/bin/python tools/gen_model_fixtures.py (torch + onnx). Writes
cloud-server/tests/fixtures/*.onnx and, per valid model, <name>.expected.json with the torch
outputs for a few seeded inputs (an evaluation independent of the Rust importer and of tract).
"""
import json
import os

import torch
import torch.nn as nn

OUT = os.path.join(os.path.dirname(__file__), "..", "cloud-server", "tests", "fixtures")
torch.manual_seed(1234)


class Square(nn.Module):
    def forward(self, x):
        return x * x


class PowSquare(nn.Module):
    def forward(self, x):
        return torch.pow(x, 2)


class Quad(nn.Module):
    """a*y^2 + b*y + c written as Mul/Add nodes, per-channel learned coefficients."""

    def __init__(self, channels, spatial):
        super().__init__()
        shape = (channels, 1, 1) if spatial else (channels,)
        self.a = nn.Parameter(0.5 + 0.2 * torch.rand(shape))
        self.b = nn.Parameter(0.3 * torch.randn(shape))
        self.c = nn.Parameter(0.1 * torch.randn(shape))

    def forward(self, x):
        return self.a * (x * x) + self.b * x + self.c


class Scale(nn.Module):
    def forward(self, x):
        return x * 0.5 + 0.25


def randomise_bn(m):
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 2, 3, padding=1)
        self.c2 = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        y = self.c1(x)
        z = self.c2(y * y)
        return self.fc(torch.flatten((z + y), 1))


MODELS = {
    # conv + BN + avgpool + scale, square, avgpool + conv, Pow square, flatten + linear + BN1d, quadratic, linear
    "tiny-cnn": (
        nn.Sequential(
            nn.Conv2d(1, 3, 3, stride=1, padding=1), nn.BatchNorm2d(3), nn.AvgPool2d(2), Scale(), Square(),
            nn.AvgPool2d(2), nn.Conv2d(3, 4, 3, padding=0), nn.BatchNorm2d(4), PowSquare(),
            nn.Flatten(), nn.Linear(4 * 2 * 2, 6), nn.BatchNorm1d(6), Quad(6, False), nn.Linear(6, 4),
        ),
        (1, 1, 16, 16),
    ),
    "tiny-mlp": (
        nn.Sequential(nn.Flatten(), nn.Linear(64, 16), Quad(16, False), nn.Linear(16, 10), Square(), nn.Linear(10, 3)),
        (1, 1, 8, 8),
    ),
    "tiny-quadconv": (
        nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), Quad(3, True), nn.Conv2d(3, 2, 2), nn.AvgPool2d(2),
                      nn.Flatten(), nn.Linear(2 * 2 * 2, 2)),
        (1, 2, 9, 9),
    ),
    "bad-relu": (nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2)), (1, 1, 4, 4)),
    "bad-residual": (Residual(), (1, 1, 8, 8)),
    "bad-dynamic": (nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), (1, 1, 4, 4)),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (model, shape) in MODELS.items():
        randomise_bn(model)
        model.eval()
        x = torch.rand(shape)
        path = os.path.join(OUT, name + ".onnx")
        kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=13,
                      do_constant_folding=True, dynamo=False)
        if name == "bad-dynamic":
            kwargs["dynamic_axes"] = {"input": {0: "batch"}}
        torch.onnx.export(model, x, path, **kwargs)
        if name.startswith("bad-"):
            continue
        cases = []
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for _ in range(4):
                xi = torch.rand(shape, generator=g)
                cases.append({"input": xi.flatten().tolist(), "logits": model(xi).flatten().tolist()})
        with open(os.path.join(OUT, name + ".expected.json"), "w") as f:
            json.dump(cases, f)
        print("wrote", path)


if __name__ == "__main__":
    main()
