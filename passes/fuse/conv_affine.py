"""Per-channel affine ops after a Conv or ConvTranspose, folded into its weights and bias.

A per-output-channel map y ↦ y·s + t after  y = W ⊛ x + b  is the same conv with
    W'[o, …] = W[o, …] · s[o]   (ConvTranspose: the output channel is axis 1 of W, per group)
    b'[o]    = b[o] · s[o] + t[o]
BatchNormalization (inference) is that map with (s, t) = `passc.graph.batchnorm_affine`;
a Mul by a per-channel constant is (s, 0), an Add is (1, t). Conv→Mul→Add folds in two steps.
Exact up to float rounding (the products are reassociated); the folded constants are computed in
float64 and rounded once.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from passc.passes.fuse._common import FLOAT_TYPES, fail

from passc.graph import constant, fresh_initializer, inference_batchnorm, per_channel

__all__ = ["conv_affine_rules"]

_KINDS = ("batchnorm", "mul", "add")


class _ConvAffine(pattern.RewriteRuleClassBase):
    """Conv/ConvTranspose followed by BatchNormalization, a per-channel Mul or a per-channel Add."""

    def __init__(self, conv_op: str, kind: str) -> None:
        super().__init__(name=f"{conv_op.lower()}-{kind}")
        self._conv_op, self._kind = conv_op, kind

    def pattern(self, op, x, w, p):
        conv = getattr(op, self._conv_op)(x, w, _allow_other_inputs=True, _outputs=["conv_out"])
        if self._kind == "batchnorm":
            return op.BatchNormalization(conv, p, _allow_other_inputs=True, _outputs=["out"])
        return getattr(op, "Mul" if self._kind == "mul" else "Add")(conv, p, _outputs=["out"])

    def check(self, context, x, w, p, conv_out, out, **_):
        conv, follower = conv_out.producer(), out.producer()
        weight = constant(w)
        if weight is None:
            return fail(f"{self._conv_op} weight {w.name!r} is not a constant", conv)
        if w.dtype not in FLOAT_TYPES:
            return fail(f"{self._conv_op} weight is {w.dtype}, not float or double", conv)
        bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        bias = np.zeros(0) if bias_value is None else constant(bias_value)
        if bias is None:
            return fail(f"{self._conv_op} bias {bias_value.name!r} is not a constant", conv)
        group = conv.attributes.get_int("group", 1)
        if self._conv_op == "Conv":
            channels = weight.shape[0]
        else:
            if weight.shape[0] % group:
                return fail(f"ConvTranspose in-channels {weight.shape[0]} not divisible by group", conv)
            channels = weight.shape[1] * group
        if self._kind == "batchnorm":
            scale_shift = self._batchnorm(follower, channels)
        else:
            scale_shift = self._mul_or_add(follower, p, weight.ndim, channels)
        if isinstance(scale_shift, pattern.MatchResult):
            return scale_shift
        scale, shift = scale_shift
        bias = np.zeros(channels) if bias.size == 0 else bias.astype(np.float64)
        self._folded = (self._scale_weight(weight, scale, group), bias * scale + shift)
        self._graph = context.graph_or_function
        return pattern.MatchResult()

    def _batchnorm(self, bn: ir.Node, channels: int):
        scale_shift = inference_batchnorm(bn, channels)
        return fail(scale_shift, bn) if isinstance(scale_shift, str) else scale_shift

    def _mul_or_add(self, node: ir.Node, operand: ir.Value, out_rank: int, channels: int):
        array = constant(operand)
        if array is None:
            return fail(f"{node.op_type} operand {operand.name!r} is not a constant", node)
        vector = per_channel(array, out_rank, channels)
        if vector is None:
            return fail(
                f"{node.op_type} operand of shape {list(array.shape)} is not per-channel for a "
                f"rank-{out_rank} output with {channels} channels (it must broadcast as [1, C, 1, …])",
                node,
            )
        vector = vector.astype(np.float64)
        if self._kind == "mul":
            return vector, np.zeros(channels)
        return np.ones(channels), vector

    def _scale_weight(self, weight: np.ndarray, scale: np.ndarray, group: int) -> np.ndarray:
        w = weight.astype(np.float64)
        if self._conv_op == "Conv":
            return w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        # ConvTranspose: W is [C_in, C_out / group, k…]; output channel g·(C_out/group) + j.
        per_group = w.shape[1]
        grouped = w.reshape(group, w.shape[0] // group, per_group, *w.shape[2:])
        s = scale.reshape((group, 1, per_group) + (1,) * (w.ndim - 2))
        return (grouped * s).reshape(w.shape)

    def rewrite(self, op, x, w, conv_out, **_):
        conv = conv_out.producer()
        weight, bias = self._folded
        dtype = w.dtype.numpy()
        new_w = fresh_initializer(op, self._graph, weight.astype(dtype), f"{w.name}_{self._kind}")
        new_b = fresh_initializer(op, self._graph, bias.astype(dtype), f"{w.name}_{self._kind}_bias")
        return op.op(self._conv_op, x, new_w, new_b, _name=conv.name, **conv.attributes)


def conv_affine_rules() -> dict[str, list[pattern.RewriteRule]]:
    """Rule name → rules: `conv-batchnorm`, `conv-mul`, `conv-add` and the `convtranspose-` ones."""
    rules: dict[str, list[pattern.RewriteRule]] = {}
    for conv_op in ("Conv", "ConvTranspose"):
        for kind in _KINDS:
            rule = _ConvAffine.rule(conv_op, kind)
            # Mul and Add commute: also match the constant as the first operand.
            rules[rule.name] = [rule] if kind == "batchnorm" else list(rule.commute())
    return rules
