"""Train and export the models shipped in models/ (reproducible; CI does not run this).

    python3.11 -m venv models/train/.venv
    models/train/.venv/bin/pip install -r models/train/requirements.txt
    models/train/.venv/bin/python models/train/train.py

Data splits (held-out data is never used for training or normalisation):
- MNIST: only the 10k set is in data/; the first 8000 images train, the last
  2000 are held out.
- Pima: pima-train.csv (200 rows) trains, pima-test.csv (332 rows) is held out.

Input normalisation lives inside each graph (Sub/Div nodes), so every ONNX file
takes raw features. Input bounds are embedded in metadata_props
"veil.input_bounds" (JSON list of [lo, hi] per feature), and each feature's
native precision in "veil.input_scale" (a number, or a list with one per
feature: the feature's values are integer multiples of 1/scale, so the device
sends round(x * scale) exactly).
"""

import csv
import gzip
import json
import os
import random
import struct

import numpy as np
import onnx
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "data")
OUT = os.path.join(ROOT, "models")
SEED = 20260101
MNIST_TRAIN = 8000

# Generous physiological ranges for the Pima features (npreg, glu, bp, skin,
# bmi, ped, age): wider than the union of both files, so that any plausible
# patient encodes, and checked below to contain every row.
PIMA_BOUNDS = [
    [0.0, 20.0],
    [0.0, 300.0],
    [0.0, 200.0],
    [0.0, 120.0],
    [10.0, 80.0],
    [0.0, 3.0],
    [18.0, 120.0],
]
# Native precision of the features: whole counts and mmHg, BMI to 0.1, the
# pedigree function to 0.001 (as in both files, checked below).
PIMA_SCALE = [1, 1, 1, 1, 10, 1000, 1]
# Pixels are bytes: x = p / 255.
MNIST_SCALE = 255


def seed_all():
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def load_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


def load_mnist():
    x = load_idx(os.path.join(DATA, "mnist-10k-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    y = load_idx(os.path.join(DATA, "mnist-10k-labels-idx1-ubyte.gz")).astype(np.int64)
    return x, y


def load_pima(name):
    with open(os.path.join(DATA, name)) as f:
        rows = list(csv.reader(f))[1:]
    x = np.array([[float(v) for v in r[:7]] for r in rows], dtype=np.float32)
    y = np.array([1 if r[7] == "Yes" else 0 for r in rows], dtype=np.int64)
    return x, y


class Normalize(nn.Module):
    """(x - mean) / std, exported as Sub and Div by constants."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) / self.std


def train(model, x, y, epochs, batch, lr, weight_decay):
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


def accuracy(model, x, y):
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def export(model, example, name, bounds, scale, description):
    path = os.path.join(OUT, name)
    model.eval()
    torch.onnx.export(
        model,
        (torch.from_numpy(example),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=13,
        do_constant_folding=True,
        dynamo=False,
    )
    m = onnx.load(path)
    onnx.checker.check_model(m)
    del m.metadata_props[:]
    for key, value in (
        ("veil.input_bounds", json.dumps(bounds, separators=(",", ":"))),
        ("veil.input_scale", json.dumps(scale, separators=(",", ":"))),
        ("veil.description", description),
    ):
        p = m.metadata_props.add()
        p.key = key
        p.value = value
    m.doc_string = description
    onnx.save(m, path)
    ops = sorted({n.op_type for n in m.graph.node})
    print(f"{name}: ops {ops}")


def main():
    seed_all()
    x, y = load_mnist()
    xtr, ytr, xte, yte = x[:MNIST_TRAIN], y[:MNIST_TRAIN], x[MNIST_TRAIN:], y[MNIST_TRAIN:]
    mnist_bounds = [[0.0, 1.0]] * (28 * 28)
    mean, std = float(xtr.mean()), float(xtr.std())

    mlp = nn.Sequential(Normalize(mean, std), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    train(mlp, xtr.reshape(-1, 784), ytr, epochs=30, batch=64, lr=1e-3, weight_decay=1e-4)
    print(f"mnist-mlp held-out accuracy {accuracy(mlp, xte.reshape(-1, 784), yte):.4f}")
    export(mlp, xtr[:1].reshape(1, 784), "mnist-mlp.onnx", mnist_bounds, MNIST_SCALE,
           "MNIST 784-128-10 ReLU MLP; input: 784 pixels in [0,1] (row-major 28x28)")

    seed_all()
    cnn = nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    )
    train(cnn, xtr.reshape(-1, 1, 28, 28), ytr, epochs=30, batch=64, lr=2e-3, weight_decay=1e-4)
    print(f"mnist-cnn held-out accuracy {accuracy(cnn, xte.reshape(-1, 1, 28, 28), yte):.4f}")
    export(cnn, xtr[:1].reshape(1, 1, 28, 28), "mnist-cnn.onnx", mnist_bounds, MNIST_SCALE,
           "MNIST CNN: Conv1-4 3x3 pad1, ReLU, MaxPool2, Conv4-8 3x3, ReLU, MaxPool2, Dense 288-10; input 1x28x28 in [0,1]")

    ptr_x, ptr_y = load_pima("pima-train.csv")
    pte_x, pte_y = load_pima("pima-test.csv")
    for rows in (ptr_x, pte_x):
        for j, (lo, hi) in enumerate(PIMA_BOUNDS):
            assert rows[:, j].min() >= lo and rows[:, j].max() <= hi, j
            scaled = rows[:, j].astype(np.float64) * PIMA_SCALE[j]
            assert np.abs(scaled - np.round(scaled)).max() < 1e-3, j
    pmean, pstd = ptr_x.mean(axis=0), ptr_x.std(axis=0)

    seed_all()
    pima = nn.Sequential(
        Normalize(pmean, pstd),
        nn.Linear(7, 16), nn.ReLU(),
        nn.Linear(16, 8), nn.ReLU(),
        nn.Linear(8, 2),
    )
    train(pima, ptr_x, ptr_y, epochs=150, batch=32, lr=1e-3, weight_decay=1e-3)
    print(f"pima-mlp held-out accuracy {accuracy(pima, pte_x, pte_y):.4f}")
    export(pima, ptr_x[:1], "pima-mlp.onnx", PIMA_BOUNDS, PIMA_SCALE,
           "Pima diabetes 7-16-8-2 ReLU MLP; inputs npreg,glu,bp,skin,bmi,ped,age; output 1 = Yes")

    seed_all()
    pima_t = nn.Sequential(
        Normalize(pmean, pstd),
        nn.Linear(7, 16), nn.Tanh(),
        nn.Linear(16, 8), nn.Sigmoid(),
        nn.Linear(8, 2),
    )
    train(pima_t, ptr_x, ptr_y, epochs=150, batch=32, lr=2e-3, weight_decay=1e-3)
    print(f"pima-tanh held-out accuracy {accuracy(pima_t, pte_x, pte_y):.4f}")
    export(pima_t, ptr_x[:1], "pima-tanh.onnx", PIMA_BOUNDS, PIMA_SCALE,
           "Pima diabetes 7-16(tanh)-8(sigmoid)-2 MLP; inputs npreg,glu,bp,skin,bmi,ped,age; output 1 = Yes")


if __name__ == "__main__":
    main()
