"""Exports a timm model twice: as trained (branches) and after the authors' `reparameterize_model`.

    <python with torch, torchvision, timm> bench/reparam_export.py NAME OUT_DIR [--size 224]

Runs in a separate venv (timm imports torchvision, which does not load beside passc's torch 2.13;
the guide's benchmark venv is `torch==2.14.1 torchvision==0.29.1` plus `timm`). Random weights
(seed 0) and randomised BatchNorm statistics (running mean ~ N(0, 0.1), running var ~ U(0.5, 2),
affine ~ U(0.5, 1.5) / N(0, 0.1)), so folding BatchNorm is not the identity. Writes
`OUT_DIR/NAME.train.onnx` and `OUT_DIR/NAME.reparam.onnx` (torch.onnx.export, dynamo, opset 18,
static shapes) and `OUT_DIR/NAME.json` with the PyTorch outputs' max abs difference between the two.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import timm
import torch
from timm.utils.model import reparameterize_model

OPSET = 18


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def _export(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.onnx.export(model, (x,), str(tmp), dynamo=True, opset_version=OPSET, external_data=False)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", type=int, default=None, help="input size (default: the model's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.name, pretrained=False).eval()
    _randomise_batchnorm(model)
    size = args.size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        trained = model(x)
        _export(model, x, args.out_dir / f"{args.name}.train.onnx")
        fused = reparameterize_model(model)
        reparam = fused(x)
        _export(fused, x, args.out_dir / f"{args.name}.reparam.onnx")
    info = {
        "input_size": size,
        "output_range": float(trained.max() - trained.min()),
        "torch_reparam_max_abs_diff": float((trained - reparam).abs().max()),
    }
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(info))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
