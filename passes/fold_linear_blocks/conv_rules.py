"""Rewrite rules that fold convolutions: a conv into the conv after it, and summed branches into one.

Each rule reads the matched nodes as `ConvMap`s, asks `ConvMap.then` / `ConvMap.plus` for the single
equivalent convolution and emits it. `check` rejects, with a reason, anything that is not exact
(grouped convs, non-constant weights, padding the composition cannot reproduce) and anything that
would cost more multiply-accumulates than the graph it replaces.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.common._fuse_batchnorm import FuseBatchNormIntoConv
from passc.passes.fold_linear_blocks.conv_math import ConvMap
from passc.passes.fold_linear_blocks.rule_support import FoldRule

from passc.graph import batchnorm_affine, constant

__all__ = ["FoldBatchNormIntoConv", "FoldBranchSum", "FoldConvIntoConv"]


def _ints(node: ir.Node, key: str, default: list[int]) -> tuple[int, ...]:
    attr = node.attributes.get(key)
    return tuple(attr.as_ints()) if attr is not None else tuple(default)


def conv_map(node: ir.Node) -> ConvMap | str:
    """The node as a float64 `ConvMap`, or why it cannot be folded."""
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
    if node.attributes.get_int("group", 1) != 1:
        return f"conv {node.name!r} is grouped (folding would make it dense)"
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
    )


def batchnorm_map(node: ir.Node, rank: int) -> ConvMap | str:
    """An inference BatchNormalization as a 1×…×1 `ConvMap` of `rank` spatial dims, or why it cannot be
    folded."""
    if node.op_type != "BatchNormalization" or len(node.outputs) != 1:
        return "not an inference BatchNormalization"
    if node.attributes.get_int("training_mode", 0):
        return f"batchnorm {node.name!r} is in training mode"
    params = [constant(v) for v in node.inputs[1:5]]
    if any(p is None for p in params):
        return f"batchnorm {node.name!r} has parameters that are not constants"
    return ConvMap.channel_affine(*batchnorm_affine(node, *params), rank)


class FoldBatchNormIntoConv(FuseBatchNormIntoConv):
    """onnxscript's Conv + BatchNormalization fold, counted like the other rules."""

    def __init__(self, name: str, fired: Counter[str]) -> None:
        super().__init__(name)
        self.fired = fired

    def rewrite(self, op, *args, **kwargs):
        self.fired[self.name] += 1
        return super().rewrite(op, *args, **kwargs)


class _ConvFoldRule(FoldRule):
    """Shared accept-then-emit logic: `accept` checks the folded map; `emit` writes it as one Conv."""

    def __init__(self, name: str, fired: Counter[str], max_kernel: int, allow_mac_increase: bool) -> None:
        super().__init__(name, fired)
        self.max_kernel = max_kernel
        self.allow_mac_increase = allow_mac_increase

    def accept(self, folded: ConvMap | str, parts_macs: int, context, out: ir.Value) -> MatchResult:
        """Fails with the reason when the fold is inexact, too large, or more expensive."""
        result = MatchResult()
        if isinstance(folded, str):
            return result.fail(folded, out.producer())
        if max(folded.kernel) > self.max_kernel:
            return result.fail(f"the folded kernel {folded.kernel} exceeds max_kernel={self.max_kernel}")
        if folded.macs_per_output > parts_macs and not self.allow_mac_increase:
            return result.fail(
                f"folding would raise MACs per output from {parts_macs} to {folded.macs_per_output}"
            )
        self._folded = folded
        self.remember(context, out)
        return result

    def emit(self, op, x: ir.Value) -> ir.Value:
        self.count()
        m = self._folded
        return op.Conv(
            x,
            self.initializer(op, "weight", m.weight),
            self.initializer(op, "bias", m.bias),
            kernel_shape=list(m.kernel),
            strides=list(m.strides),
            dilations=list(m.dilations),
            pads=list(m.pads),
            group=1,
        )


class FoldConvIntoConv(_ConvFoldRule):
    """Conv(Conv(x)) → Conv(x): the k×k conv → 1×1 projection of a collapsible linear block."""

    def pattern(self, op, x):
        inner = op.Conv(x, _allow_other_inputs=True, _outputs=["mid"])
        return op.Conv(inner, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, mid: ir.Value, out: ir.Value) -> MatchResult:
        first, second = conv_map(mid.producer()), conv_map(out.producer())
        for m in (first, second):
            if isinstance(m, str):
                return MatchResult().fail(m)
        return self.accept(first.then(second), first.macs_per_output + second.macs_per_output, context, out)

    def rewrite(self, op, x, mid, out):
        return self.emit(op, x)


class FoldBranchSum(_ConvFoldRule):
    """Add(Conv(x), branch(x)) → Conv(x), where the branch is a Conv, x itself, or a BatchNorm of x.

    RepVGG-style: k×k conv + 1×1 conv + identity (each optionally batch-normalised, which
    folds into its conv first) sum to one k×k conv; a residual Add of the block input adds 1
    at the kernel's centre tap.
    """

    def __init__(
        self, name: str, fired: Counter[str], branch: str | None, max_kernel: int, allow_mac_increase: bool
    ) -> None:
        super().__init__(name, fired, max_kernel, allow_mac_increase)
        self.branch = branch

    def pattern(self, op, x):
        conv = op.Conv(x, _allow_other_inputs=True, _outputs=["left"])
        if self.branch is None:
            return op.Add(conv, x, _outputs=["out"])
        other = getattr(op, self.branch)(x, _allow_other_inputs=True, _outputs=["right"])
        return op.Add(conv, other, _outputs=["out"])

    def _branch_map(self, right: ir.Value | None, like: ConvMap) -> ConvMap | str:
        if right is None:
            return ConvMap.identity(like.weight.shape[0], like.rank, like.weight.dtype)
        if self.branch == "Conv":
            return conv_map(right.producer())
        return batchnorm_map(right.producer(), like.rank)

    def check(self, context, x, left: ir.Value, out: ir.Value, right: ir.Value | None = None) -> MatchResult:
        first = conv_map(left.producer())
        if isinstance(first, str):
            return MatchResult().fail(first)
        second = self._branch_map(right, first)
        if isinstance(second, str):
            return MatchResult().fail(second)
        # An identity or batchnorm branch does no MACs, so the fold must keep the conv's cost.
        second_macs = second.macs_per_output if self.branch == "Conv" else 0
        return self.accept(first.plus(second), first.macs_per_output + second_macs, context, out)

    def rewrite(self, op, x, left, out, right=None):
        return self.emit(op, x)
