"""SESR (Bhardwaj et al., "Collapsible Linear Blocks for Super-Efficient Super Resolution", MLSys 2022)
in its training-time, expanded form, and its export to ONNX.

The network works on the luma (Y) channel:

    a = PReLU(LinearBlock5×5(x))                     1 → 16 channels
    b = a + [PReLU(h + LinearBlock3×3(h))]×m (a)       m residual linear blocks, 16 → 16, and a long residual
    c = LinearBlock5×5(b) + repeat(x, scale²)        16 → scale² channels, plus the input on every channel
    y = DepthToSpace(c, scale)                       1 × (scale·H) × (scale·W)

A linear block is a k×k conv expanding to `hidden` (256) channels followed by a 1×1 conv projecting
back, with no non-linearity between: at inference it collapses into one k×k conv, which is what
passc's `fold-linear-blocks` pass does. Weights are random (seed 0): the example measures folding and
compilation, not image quality. M3 / M5 / M7 / M11 set m; f = 16 and hidden = 256 as in the paper.

    python examples/sesr/sesr.py --m 5 --scale 2 -o build/sesr_m5_x2.onnx
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

VARIANTS = {"m3": 3, "m5": 5, "m7": 7, "m11": 11}


class LinearBlock(nn.Module):
    """k×k conv to `hidden` channels, then a 1×1 conv to `out`: linear, so collapsible."""

    def __init__(self, inp: int, out: int, kernel: int, hidden: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(inp, hidden, kernel, padding=kernel // 2)
        self.project = nn.Conv2d(hidden, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.expand(x))


class ResidualLinearBlock(nn.Module):
    """PReLU(x + LinearBlock3×3(x)): the short residual folds into the collapsed kernel's centre tap."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = LinearBlock(channels, channels, 3, hidden)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.block(x))


class SESR(nn.Module):
    """SESR-M<m> for ×`scale` super-resolution of a 1-channel image."""

    def __init__(self, m: int, scale: int, f: int = 16, hidden: int = 256) -> None:
        super().__init__()
        self.scale = scale
        self.first = LinearBlock(1, f, 5, hidden)
        self.first_act = nn.PReLU(f)
        self.blocks = nn.Sequential(*(ResidualLinearBlock(f, hidden) for _ in range(m)))
        self.last = LinearBlock(f, scale * scale, 5, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.first_act(self.first(x))
        b = a + self.blocks(a)
        c = self.last(b) + x.repeat(1, self.scale * self.scale, 1, 1)
        return nn.functional.pixel_shuffle(c, self.scale)


def export(variant: str, scale: int, path: Path, height: int = 64, width: int = 64) -> Path:
    """Writes SESR-`variant` ×`scale` to `path` with dynamic height and width (atomically)."""
    torch.manual_seed(0)
    model = SESR(VARIANTS[variant], scale).eval()
    example = torch.rand(1, 1, height, width)
    dims = {"x": {2: torch.export.Dim("height", min=8), 3: torch.export.Dim("width", min=8)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        program = torch.onnx.export(
            model, (example,), input_names=["x"], output_names=["y"], dynamic_shapes=dims, dynamo=True
        )
        program.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", choices=[v[1:] for v in VARIANTS], default="5", help="SESR-M<m> (default 5)")
    parser.add_argument("--scale", type=int, choices=[2, 4], default=2, help="upscaling factor")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the .onnx")
    args = parser.parse_args()
    print(export(f"m{args.m}", args.scale, args.output))


if __name__ == "__main__":
    main()
