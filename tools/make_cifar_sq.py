#!/usr/bin/env python3
"""Write cloud-server/models/cifar-sq.onnx: MiniONN's CIFAR-10 network with squares instead of
ReLU, with SEEDED RANDOM weights (timing only, never trained). Input 1x3x32x32 in [0, 1].

  conv3x3 64 p1, sq, conv3x3 64 p1, sq, avgpool 2, conv3x3 64 p1, sq, conv3x3 64 p1, sq,
  avgpool 2, conv3x3 64 p1, sq, conv1x1 64, sq, conv1x1 16, sq, flatten (1024), FC 1024-10

Each conv is calibrated on random inputs (bias = -mean, weights scaled to unit std per channel)
so activations stay bounded through seven squares, as a trained network's BatchNorm would.

  /opt/trainenv/bin/python tools/make_cifar_sq.py
"""
import json
import os

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "cloud-server", "models")


class Square(nn.Module):
    def forward(self, x):
        return x * x


def main():
    torch.manual_seed(2024)
    layers = [
        nn.Conv2d(3, 64, 3, padding=1), Square(),
        nn.Conv2d(64, 64, 3, padding=1), Square(), nn.AvgPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), Square(),
        nn.Conv2d(64, 64, 3, padding=1), Square(), nn.AvgPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), Square(),
        nn.Conv2d(64, 64, 1), Square(),
        nn.Conv2d(64, 16, 1), Square(),
        nn.Flatten(), nn.Linear(1024, 10),
    ]
    model = nn.Sequential(*layers).eval()
    x = torch.rand(256, 3, 32, 32)
    maxima = []
    with torch.no_grad():
        h = x
        for layer in model:
            if isinstance(layer, nn.Conv2d):
                y = layer(h)
                mean = y.mean(dim=(0, 2, 3))
                std = y.std(dim=(0, 2, 3)) + 1e-6
                layer.weight /= std[:, None, None, None]
                layer.bias.copy_((layer.bias - mean) / std)
            h = layer(h)
            if isinstance(layer, Square):
                maxima.append(h.abs().max().item())
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "cifar-sq.onnx")
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), path, dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["logits"])
    info = {"model": "cifar-sq", "trained": False, "seed": 2024, "max_abs_activation_random_inputs": maxima,
            "parameters": sum(p.numel() for p in model.parameters()),
            "command": "/opt/trainenv/bin/python tools/make_cifar_sq.py"}
    with open(os.path.join(OUT, "cifar-sq.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
