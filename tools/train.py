#!/usr/bin/env python3
"""Train the bundled Fashion-MNIST benchmark networks and export them to ONNX.

Networks (DESIGN §6), all with square activations ("sq"):
  mlp-sq         Flatten, FC 784-128, quad, FC 128-128, quad, FC 128-10
                 (quad = trainable a*y^2 + b*y + c per layer, exported as Mul/Add nodes, so the
                 Rust merging's polynomial rewrite is exercised; BatchNorm1d before each quad)
  cryptonets-sq  conv 5x5 s2 p1 x5, BN, sq, FC 845-100, BN, sq, FC 100-10
  minionn-sq     conv 5x5 x16, BN, sq, avgpool 2, conv 5x5 x16, BN, sq, avgpool 2,
                 FC 256-100, BN, sq, FC 100-10

BatchNorm sits before every square: it keeps pre-activations near unit scale, which both
stabilises training of square networks and keeps the fixed-point values (and so the
truncation failure probability of the private protocol, about |x|/p per element) small.
BatchNormalization nodes are exported as such (not fused) so the Rust importer folds them.

Input: raw pixels / 255 in [0, 1], shape 1x1x28x28 (batch fixed to 1, static shapes).
Writes cloud-server/models/<id>.onnx and <id>.json (accuracy, activation maxima, settings).

Reproduce (CPU, ~2 cores):
  /opt/trainenv/bin/python tools/train.py --model minionn-sq   # 40 epochs, lr 3e-3, flip: 91.36 %
  /opt/trainenv/bin/python tools/train.py --model cryptonets-sq
  /opt/trainenv/bin/python tools/train.py --model mlp-sq
"""

import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "cloud-server", "models")
ALLOWED_OPS = {"Conv", "Gemm", "MatMul", "Add", "BatchNormalization", "AveragePool", "Flatten", "Reshape", "Mul", "Pow"}


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split):
    images = read_idx(f"{DATA}/{split}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = read_idx(f"{DATA}/{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Quadratic(nn.Module):
    """a*y^2 + b*y + c with trainable scalars (starts as 0.1 y^2 + y)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.1))
        self.b = nn.Parameter(torch.tensor(1.0))
        self.c = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return x * x * self.a + x * self.b + self.c


def build(model_id):
    if model_id == "mlp-sq":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 128), nn.BatchNorm1d(128), Quadratic(),
            nn.Linear(128, 128), nn.BatchNorm1d(128), Quadratic(),
            nn.Linear(128, 10),
        )
    if model_id == "cryptonets-sq":
        return nn.Sequential(
            nn.Conv2d(1, 5, 5, stride=2, padding=1), nn.BatchNorm2d(5), Square(),
            nn.Flatten(),
            nn.Linear(845, 100), nn.BatchNorm1d(100), Square(),
            nn.Linear(100, 10),
        )
    if model_id == "minionn-sq":
        return nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.BatchNorm2d(16), Square(), nn.AvgPool2d(2),
            nn.Conv2d(16, 16, 5), nn.BatchNorm2d(16), Square(), nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 100), nn.BatchNorm1d(100), Square(),
            nn.Linear(100, 10),
        )
    raise SystemExit(f"unknown model {model_id}")


def augment(x, gen, mode):
    """Random horizontal flip ("flip"), plus a shift of up to 2 pixels ("flipshift")."""
    if mode == "none":
        return x
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if mode == "flip":
        return x
    padded = F.pad(x, (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + 28, dx:dx + 28]


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        correct = 0
        for i in range(0, len(x), 1000):
            correct += (model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
    return correct / len(x)


def activation_maxima(model, x):
    """Max |pre-activation| (input of each square/quad) and max |activation output|."""
    pre, post, hooks = [], [], []
    for m in model:
        if isinstance(m, (Square, Quadratic)):
            pre.append(0.0)
            post.append(0.0)
            k = len(pre) - 1

            def hook(mod, inp, out, k=k):
                pre[k] = max(pre[k], inp[0].abs().max().item())
                post[k] = max(post[k], out.abs().max().item())

            hooks.append(m.register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            model(x[i:i + 1000])
    for h in hooks:
        h.remove()
    return pre, post


def strip_identities(path):
    """The exporter wraps some initializers in Identity nodes: rewire and drop them."""
    m = onnx.load(path)
    g = m.graph
    rename = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    keep = [n for n in g.node if n.op_type != "Identity"]
    for n in keep:
        for i, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[i] = name
    for o in g.output:
        while o.name in rename:
            o.name = rename[o.name]
    del g.node[:]
    g.node.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return [n.op_type for n in keep]


def export(model, model_id):
    model.eval()
    path = os.path.join(OUT, f"{model_id}.onnx")
    torch.onnx.export(
        model, (torch.zeros(1, 1, 28, 28),), path, dynamo=False, opset_version=13,
        training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"], output_names=["logits"],
    )
    ops = strip_identities(path)
    bad = sorted(set(ops) - ALLOWED_OPS)
    if bad:
        raise SystemExit(f"{model_id}: exporter emitted unsupported ops {bad}")
    return path, ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--augment", choices=["none", "flip", "flipshift"], default="flip")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix for the output files (experiments)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)

    xtr, ytr = load("train")
    xte, yte = load("t10k")
    model = build(args.model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    steps = args.epochs * ((len(xtr) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(0, len(xtr), args.batch):
            idx = perm[i:i + args.batch]
            xb = augment(xtr[idx], gen, args.augment)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = evaluate(model, xte, yte)
        print(f"{args.model} epoch {epoch + 1}/{args.epochs} loss {total / len(xtr):.4f} "
              f"test acc {acc:.4f} ({time.time() - start:.0f}s)", flush=True)
    train_time = time.time() - start
    acc = evaluate(model, xte, yte)
    pre, post = activation_maxima(model, xte)
    os.makedirs(OUT, exist_ok=True)
    name = args.model + args.tag
    path, ops = export(model, name)
    params = sum(p.numel() for p in model.parameters())
    info = {
        "model": args.model,
        "f32_test_accuracy": acc,
        "test_images": len(xte),
        "parameters": params,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "augment": args.augment,
        "train_seconds": round(train_time, 1),
        "max_abs_pre_activation": pre,
        "max_abs_activation": post,
        "onnx_ops": ops,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "command": f"/opt/trainenv/bin/python tools/train.py --model {args.model} --epochs {args.epochs} "
        f"--lr {args.lr} --augment {args.augment} --seed {args.seed}",
    }
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    sys.exit(main())
