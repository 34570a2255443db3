"""Rewrite rules that fold chains of MatMul / Gemm with constant weights and no non-linearity between.

Math, for y = x·W1 + b1 followed by z = y·W2 + b2 (W1: n×p, W2: p×m, biases broadcast over rows):

    z = x·(W1·W2) + (b1·W2 + b2)

Exact in real arithmetic. A fold is skipped when it costs more multiply-accumulates per row than
the chain (n·m > n·p + p·m: a low-rank bottleneck is cheaper left factored).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult
from passc.passes.fold_linear_blocks.rule_support import FoldRule

from passc.graph import constant

__all__ = ["FoldBiasedMatMulChain", "FoldGemmChain", "FoldMatMulChain", "MergeChainBiases"]


def _matrix(value: ir.Value, what: str) -> np.ndarray | str:
    array = constant(value)
    if array is None:
        return f"the {what} is not a constant"
    if array.ndim != 2 or array.dtype.kind != "f":
        return f"the {what} is not a floating-point matrix"
    return array.astype(np.float64)


def _through(bias: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """b·W for a bias that broadcasts over rows (its last dim is p or 1)."""
    return np.broadcast_to(bias, (*bias.shape[:-1], weight.shape[0])) @ weight


class _MatMulFoldRule(FoldRule):
    def __init__(self, name: str, fired: Counter[str], allow_mac_increase: bool) -> None:
        super().__init__(name, fired)
        self.allow_mac_increase = allow_mac_increase

    def accept(self, w1: np.ndarray, w2: np.ndarray, context, out: ir.Value) -> MatchResult:
        """Fails when the weights do not chain or the fold would add MACs; else remembers the graph."""
        (n, p), (p2, m) = w1.shape, w2.shape
        if p != p2:
            return MatchResult().fail("the weights do not chain")
        if n * m > n * p + p * m and not self.allow_mac_increase:
            return MatchResult().fail(f"folding would raise MACs per row from {n * p + p * m} to {n * m}")
        self.remember(context, out)
        return MatchResult()


class FoldMatMulChain(_MatMulFoldRule):
    """MatMul(MatMul(x, W1), W2) → MatMul(x, W1·W2)."""

    def pattern(self, op, x, w1, w2):
        return op.MatMul(op.MatMul(x, w1), w2, _outputs=["out"])

    def check(self, context, x, w1, w2, out, b1=None) -> MatchResult:
        weights = [_matrix(w1, "first weight"), _matrix(w2, "second weight")]
        for w in weights:
            if isinstance(w, str):
                return MatchResult().fail(w)
        bias = None if b1 is None else constant(b1)
        rows = (1, weights[1].shape[0])
        if b1 is not None and (bias is None or bias.ndim == 0 or bias.shape[-1] not in rows):
            return MatchResult().fail("the bias between the MatMuls is not a constant broadcast over rows")
        self._w = weights[0] @ weights[1]
        self._b = None if bias is None else _through(bias.astype(np.float64), weights[1])
        return self.accept(*weights, context, out)

    def rewrite(self, op, x, w1, w2, out, b1=None):
        self.count()
        y = op.MatMul(x, self.initializer(op, "weight", self._w))
        return y if self._b is None else op.Add(y, self.initializer(op, "bias", self._b))


class FoldBiasedMatMulChain(FoldMatMulChain):
    """MatMul(Add(MatMul(x, W1), b1), W2) → Add(MatMul(x, W1·W2), b1·W2)."""

    def pattern(self, op, x, w1, b1, w2):
        return op.MatMul(op.Add(op.MatMul(x, w1), b1), w2, _outputs=["out"])


class MergeChainBiases(FoldRule):
    """Add(Add(MatMul(x, W), c1), c2) → Add(MatMul(x, W), c1 + c2): lets a third MatMul fold in."""

    def pattern(self, op, x, w, c1, c2):
        return op.Add(op.Add(op.MatMul(x, w), c1, _outputs=["mid"]), c2, _outputs=["out"])

    def check(self, context, x, w, c1, c2, mid, out) -> MatchResult:
        arrays = [constant(c) for c in (c1, c2)]
        if any(a is None or a.dtype.kind != "f" for a in arrays):
            return MatchResult().fail("the biases are not floating-point constants")
        self._sum = arrays[0].astype(np.float64) + arrays[1]
        self.remember(context, out)
        return MatchResult()

    def rewrite(self, op, x, w, c1, c2, mid, out):
        self.count()
        return op.Add(op.MatMul(x, w), self.initializer(op, "bias", self._sum))


class FoldGemmChain(_MatMulFoldRule):
    """Gemm(Gemm(x, B1, C1), B2, C2) → Gemm(x, W, c), with alpha, beta and transB folded in."""

    def pattern(self, op, x):
        inner = op.Gemm(x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["mid"])
        return op.Gemm(inner, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    @staticmethod
    def _affine(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | str:
        """(W, c) with Gemm(y) = y·W + c for this node's A operand y (transA applies to y)."""
        weight = _matrix(node.inputs[1], f"weight of {node.name!r}")
        if isinstance(weight, str):
            return weight
        if node.attributes.get_int("transB", 0):
            weight = weight.T
        bias = np.zeros(weight.shape[1])
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = constant(node.inputs[2])
            if c is None:
                return f"the bias of {node.name!r} is not a constant"
            bias = node.attributes.get_float("beta", 1.0) * c.astype(np.float64)
        return node.attributes.get_float("alpha", 1.0) * weight, bias

    def check(self, context, x, mid: ir.Value, out: ir.Value) -> MatchResult:
        first, second = self._affine(mid.producer()), self._affine(out.producer())
        for a in (first, second):
            if isinstance(a, str):
                return MatchResult().fail(a)
        if out.producer().attributes.get_int("transA", 0):
            return MatchResult().fail("the second Gemm transposes its input")
        (w1, b1), (w2, b2) = first, second
        self._transA = mid.producer().attributes.get_int("transA", 0)
        self._w, self._b = w1 @ w2, _through(b1, w2) + b2
        return self.accept(w1, w2, context, out)

    def rewrite(self, op, x, mid, out):
        self.count()
        weight, bias = self.initializer(op, "weight", self._w), self.initializer(op, "bias", self._b)
        return op.Gemm(x, weight, bias, transA=self._transA)
