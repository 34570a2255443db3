"""Rewrite rules that fold convolutions with the linear ops around them into one convolution.

A Gemm on a [N, C] input (no transA) is the 0-d convolution with weight [O, C], so the same rules
and algebra cover linear layers. Two shapes of match, each read as `ConvMap`s and handed to
`ConvMap.then` / `ConvMap.plus`, where L is Conv or Gemm:
- a chain, `second(first(x))`: Conv → Conv, L → per-channel affine, per-channel affine → L;
- branches of one input, `L(x) ± branch(x)`, where the branch is the same kind of op, x itself, an
  inference BatchNormalization of x or x times a per-channel constant.
A per-channel affine op is an inference BatchNormalization or a Mul, Div, Add or Sub with a constant
that broadcasts as [1, C, 1, …]. `check` rejects, with a reason, anything that is not exact
(non-constant weights, padding the composition cannot reproduce) and anything that would cost more
multiply-accumulates than the graph it replaces (which keeps grouped convs grouped).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from passc.passes.fold_linear_blocks.conv_math import ConvMap, mac_increase
from passc.passes.fold_linear_blocks.rule_support import FoldRule

from passc.graph import constant, inference_batchnorm, per_channel
from passc.rule_tracing import NOT_A_NEAR_MISS

__all__ = ["AFFINE_OPS", "FoldBranches", "FoldChain"]

AFFINE_OPS = ("BatchNormalization", "Mul", "Div", "Add", "Sub")


def _ints(node: ir.Node, key: str, default: list[int]) -> tuple[int, ...]:
    attr = node.attributes.get(key)
    return tuple(attr.as_ints()) if attr is not None else tuple(default)


def conv_map(node: ir.Node) -> ConvMap | str:
    """The Conv node as a float64 `ConvMap`, or why it cannot be folded."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} is not a Conv"
    weight = constant(node.inputs[1])
    if weight is None:
        return f"conv {node.name!r} has a weight that is not a constant"
    if weight.dtype.kind != "f":
        return f"conv {node.name!r} is not floating point"
    bias_input = node.inputs[2] if len(node.inputs) > 2 else None
    bias = constant(bias_input) if bias_input is not None else np.zeros(weight.shape[0])
    if bias is None:
        return f"conv {node.name!r} has a bias that is not a constant"
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return f"conv {node.name!r} uses auto_pad={auto_pad}"
    rank = weight.ndim - 2
    return ConvMap(
        weight.astype(np.float64),
        bias.astype(np.float64),
        _ints(node, "strides", [1] * rank),
        _ints(node, "dilations", [1] * rank),
        _ints(node, "pads", [0] * (2 * rank)) if auto_pad == "NOTSET" else (0,) * (2 * rank),
        node.attributes.get_int("group", 1),
    )


def gemm_map(node: ir.Node) -> ConvMap | str:
    """The Gemm node, y = alpha·x·op(B) + beta·C with C per output feature, as a 0-d float64
    `ConvMap` (weight alpha·op(B)ᵀ, bias beta·C), or why it cannot be folded."""
    if node.attributes.get_int("transA", 0):
        return f"gemm {node.name!r} transposes its input"
    weight = constant(node.inputs[1])
    if weight is None or weight.dtype.kind != "f" or weight.ndim != 2:
        return f"gemm {node.name!r} has a weight that is not a floating-point constant matrix"
    weight = weight.astype(np.float64)
    weight = node.attributes.get_float("alpha", 1.0) * (
        weight if node.attributes.get_int("transB", 0) else weight.T
    )
    bias = np.zeros(weight.shape[0])
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = constant(node.inputs[2])
        vector = None if c is None else per_channel(c, 2, weight.shape[0])
        if vector is None:
            return f"gemm {node.name!r} has a bias that is not a constant per output feature"
        bias = node.attributes.get_float("beta", 1.0) * vector.astype(np.float64)
    return ConvMap(weight, bias, (), (), ())


def linear_map(node: ir.Node) -> ConvMap | str:
    """A Conv or Gemm node as a `ConvMap`, or why it cannot be folded."""
    return gemm_map(node) if node.op_type == "Gemm" else conv_map(node)


def affine_map(node: ir.Node, data: ir.Value, rank: int, channels: int) -> ConvMap | str:
    """The per-channel affine op `node`, applied to its input `data` of [N, channels, rank spatial
    dims], as a depthwise 1×…×1 `ConvMap`, or why it is not one."""
    if node.op_type == "BatchNormalization":
        if node.inputs[0] is not data:
            return "the BatchNormalization normalises another tensor"
        scale_shift = inference_batchnorm(node, channels)
        return scale_shift if isinstance(scale_shift, str) else ConvMap.channel_affine(*scale_shift, rank)
    if node.op_type not in AFFINE_OPS or len(node.inputs) != 2:
        return f"{node.op_type} is not a per-channel affine op"
    position = 0 if node.inputs[0] is data else 1
    operand = node.inputs[1 - position]
    array = constant(operand)
    if array is None or array.dtype.kind != "f":
        return f"{NOT_A_NEAR_MISS}the {node.op_type}'s other operand is not a floating-point constant"
    vector = per_channel(array, rank + 2, channels)
    if vector is None:
        return f"the {node.op_type}'s constant of shape {list(array.shape)} is not per-channel"
    vector = vector.astype(np.float64)
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op_type == "Div":
        if position == 1 or not vector.all():
            return "the Div is not a division by a non-zero constant"
        return ConvMap.channel_affine(1 / vector, zeros, rank)
    scale, shift = {
        "Mul": (vector, zeros),
        "Add": (ones, vector),
        "Sub": (ones, -vector) if position == 0 else (-ones, vector),
    }[node.op_type]
    return ConvMap.channel_affine(scale, shift, rank)


class _ConvFoldRule(FoldRule):
    """Shared accept-then-emit logic: `accept` checks the folded map; `emit` writes it as one Conv."""

    def __init__(self, name: str, fired: Counter[str], max_kernel: int, allow_mac_increase: bool) -> None:
        super().__init__(name, fired)
        self.max_kernel = max_kernel
        self.allow_mac_increase = allow_mac_increase

    def accept(self, folded: ConvMap | str, parts: list[ConvMap], context, out: ir.Value) -> MatchResult:
        """Fails with the reason when the fold is inexact, too large, or costs more MACs than `parts`."""
        result = MatchResult()
        if isinstance(folded, str):
            return result.fail(folded, out.producer())
        if max(folded.kernel, default=1) > self.max_kernel:
            return result.fail(f"the folded kernel {folded.kernel} exceeds max_kernel={self.max_kernel}")
        macs = sum(p.macs_per_output for p in parts)
        if folded.macs_per_output > macs and not self.allow_mac_increase:
            return result.fail(mac_increase(macs, folded.macs_per_output, parts, folded.groups))
        self._folded = folded
        self.remember(context, out)
        return result

    def emit(self, op, x: ir.Value) -> ir.Value:
        self.count()
        m = self._folded
        if m.rank == 0:
            return op.Gemm(
                x, self.initializer(op, "weight", m.weight), self.initializer(op, "bias", m.bias), transB=1
            )
        return op.Conv(
            x,
            self.initializer(op, "weight", m.weight),
            self.initializer(op, "bias", m.bias),
            kernel_shape=list(m.kernel),
            strides=list(m.strides),
            dilations=list(m.dilations),
            pads=list(m.pads),
            group=m.groups,
        )


class FoldChain(_ConvFoldRule):
    """second(first(x)) → L(x), for Conv → Conv, L → affine and affine → L (L: Conv or Gemm).

    The k×k conv → 1×1 projection of a collapsible linear block, a BatchNorm or layer scale after a
    conv, or a normalisation before a conv or a classifier.
    """

    def __init__(self, name: str, fired: Counter[str], first: str, second: str, **conv_options) -> None:
        super().__init__(name, fired, **conv_options)
        self.first, self.second = first, second

    def pattern(self, op, x, c1, c2):
        if self.first in ("Conv", "Gemm", "BatchNormalization"):
            inner = getattr(op, self.first)(x, _allow_other_inputs=True, _outputs=["mid"])
        else:
            inner = getattr(op, self.first)(x, c1, _outputs=["mid"])
        if self.second in ("Conv", "Gemm", "BatchNormalization"):
            return getattr(op, self.second)(inner, _allow_other_inputs=True, _outputs=["out"])
        return getattr(op, self.second)(inner, c2, _outputs=["out"])

    def check(self, context, x, mid: ir.Value, out: ir.Value, **_) -> MatchResult:
        if self.first in ("Conv", "Gemm"):
            first = linear_map(mid.producer())
            if isinstance(first, str):
                return MatchResult().fail(first)
            second = self._map(out.producer(), mid, first.rank, first.out_channels)
        else:
            second = linear_map(out.producer())
            if isinstance(second, str):
                return MatchResult().fail(second)
            first = self._map(mid.producer(), x, second.rank, second.in_channels)
        for m in (first, second):
            if isinstance(m, str):
                return MatchResult().fail(m)
        limit = None if self.allow_mac_increase else first.macs_per_output + second.macs_per_output
        return self.accept(first.then(second, limit), [first, second], context, out)

    @staticmethod
    def _map(node: ir.Node, data: ir.Value, rank: int, channels: int) -> ConvMap | str:
        if node.op_type in ("Conv", "Gemm"):
            return linear_map(node)
        return affine_map(node, data, rank, channels)

    def rewrite(self, op, x, out, **_):
        return self.emit(op, x)


class FoldBranches(_ConvFoldRule):
    """L(x) ± branch(x) → L(x), where L is a Conv or Gemm and the branch is another L, x itself,
    BatchNorm(x) or x·c.

    RepVGG / MobileOne: k×k conv + 1×1 conv + BatchNorm identity sum to one k×k conv (grouped
    branches to one conv with their groups); a residual Add of the block input adds 1 at the
    kernel's centre tap; FastViT's RepMixer subtracts a BatchNorm of x; a distillation head's two
    classifiers sum to one. `combine` is Add or Sub; for Sub, `linear_first` says whether L is the
    minuend.
    """

    def __init__(
        self,
        name: str,
        fired: Counter[str],
        linear: str,
        branch: str | None,
        combine: str = "Add",
        linear_first: bool = True,
        **conv_options,
    ) -> None:
        super().__init__(name, fired, **conv_options)
        self.linear, self.branch, self.combine, self.linear_first = linear, branch, combine, linear_first

    def pattern(self, op, x, c):
        conv = getattr(op, self.linear)(x, _allow_other_inputs=True, _outputs=["left"])
        if self.branch is None:
            other = x
        elif self.branch == "Mul":
            other = op.Mul(x, c, _outputs=["right"])
        else:
            other = getattr(op, self.branch)(x, _allow_other_inputs=True, _outputs=["right"])
        operands = (conv, other) if self.linear_first else (other, conv)
        return getattr(op, self.combine)(*operands, _outputs=["out"])

    def check(
        self, context, x, left: ir.Value, out: ir.Value, right: ir.Value | None = None, **_
    ) -> MatchResult:
        first = linear_map(left.producer())
        if isinstance(first, str):
            return MatchResult().fail(first)
        if right is None:
            second = ConvMap.identity(first.out_channels, first.rank, first.weight.dtype)
        elif self.branch == self.linear:
            second = linear_map(right.producer())
        else:
            second = affine_map(right.producer(), x, first.rank, first.in_channels)
        if isinstance(second, str):
            return MatchResult().fail(second)
        if self.combine == "Sub":
            first, second = (first, second.scaled(-1)) if self.linear_first else (first.scaled(-1), second)
        return self.accept(first.plus(second), [first, second], context, out)

    def rewrite(self, op, x, out, **_):
        return self.emit(op, x)
