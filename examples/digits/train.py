"""Trains a small CNN and a small transformer on scikit-learn's digits and exports them to ONNX.

Real trained weights for the mixed-precision benchmark (bench/bits.py): 1797 8×8 grey images of the
digits 0–9, split 80/20 with a fixed seed. Both train in well under a minute on two CPU cores.

    python examples/digits/train.py -o build/digits

writes `cnn.onnx`, `transformer.onnx` (input "x": [batch, 1, 8, 8] floats in [0, 1], output
"logits": [batch, 10]) and `data.npz` (x_train, y_train, x_test, y_test).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


class DigitsCNN(nn.Module):
    """conv 3×3 (16) → conv 3×3 (32) → max-pool → conv 3×3 (32) → FC 128 → FC 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsTransformer(nn.Module):
    """Each image row is a token: 8 tokens of 8 pixels → 64-wide, 2 encoder layers, mean pool, FC 10."""

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(torch.zeros(1, 8, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.position
        return self.head(self.encoder(tokens).mean(dim=1))


def digits() -> list[np.ndarray]:
    """[x_train, x_test, y_train, y_test]: images scaled to [0, 1] as [n, 1, 8, 8] float32."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, data.target, test_size=0.2, random_state=0, stratify=data.target)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 25) -> nn.Module:
    """Adam, batch 64, cross-entropy; deterministic (seed 0)."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y).long()
    for _ in range(epochs):
        for batch in torch.randperm(len(xs)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
    return model.eval()


def export(model: nn.Module, path: Path) -> None:
    """ONNX with a dynamic batch, written atomically."""
    batch = torch.export.Dim("batch", min=1)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        program = torch.onnx.export(
            model,
            (torch.rand(2, 1, 8, 8),),
            input_names=["x"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            dynamo=True,
            opset_version=18,
            verbose=False,
        )
        program.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="directory to write into")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = digits()
    np.savez(args.output / "data.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    torch.set_num_threads(1)  # tiny models: more threads only add synchronisation (16× slower on 2 cores)
    for name, model in (("cnn", DigitsCNN()), ("transformer", DigitsTransformer())):
        start = time.perf_counter()
        train(model, x_train, y_train)
        with torch.no_grad():
            accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
        export(model, args.output / f"{name}.onnx")
        seconds = time.perf_counter() - start
        print(f"{name}: trained in {seconds:.0f}s, test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
