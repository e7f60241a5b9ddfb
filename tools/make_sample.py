#!/usr/bin/env python3
"""Write the committed Fashion-MNIST sample: the first 200 test images and labels, uncompressed
IDX (the same format as the full set), so `cargo test` and the demo need no apt package.

  python3 tools/make_sample.py            # reads /usr/share/datasets/fashion-mnist
"""
import gzip
import os
import struct

DATA = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "edge-client", "data")
COUNT = 200


def main():
    os.makedirs(OUT, exist_ok=True)
    with gzip.open(f"{DATA}/t10k-images-idx3-ubyte.gz") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    assert magic == 0x803 and rows == 28 and cols == 28 and n >= COUNT
    with open(os.path.join(OUT, f"fashion-mnist-t10k-{COUNT}-images-idx3-ubyte"), "wb") as f:
        f.write(struct.pack(">IIII", magic, COUNT, rows, cols))
        f.write(data[16:16 + COUNT * rows * cols])
    with gzip.open(f"{DATA}/t10k-labels-idx1-ubyte.gz") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    assert magic == 0x801 and n >= COUNT
    with open(os.path.join(OUT, f"fashion-mnist-t10k-{COUNT}-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">II", magic, COUNT))
        f.write(data[8:8 + COUNT])


if __name__ == "__main__":
    main()
