"""LayerNormalization and RMSNormalization recognised from their decomposed forms.

  layer-norm:       d = x − mean(x);  d / √(mean(d²) + ε) · γ        → LayerNormalization(x, γ)
  layer-norm-bias:  LayerNormalization(x, γ) + β                   → LayerNormalization(x, γ, β)
  rms-norm:         x / √(mean(x²) + ε) · γ                          → RMSNormalization(x, γ)
The means run over the trailing axes; d² may be d·d or Pow(d, 2); the division may be a
multiplication by Reciprocal. Emitted only where onnxruntime's CPU EP and TVM's Relax frontend
both take the op: LayerNormalization from opset 17, RMSNormalization from opset 23 (below that the
decomposed form is left as it is; upgrading a model's opset is left to the user). Only float32
inputs are fused: both ops compute in float32 (stash_type 1) so the fused op matches the original
up to float rounding (onnxruntime computes the variance as E[x²] − E[x]², which rounds differently).
onnxscript's fusions are not reused: they match only axes given as an input and [-1], do not check
the opset or the shape of γ and β, and emit RMSNormalization at any opset.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from passc.passes.fuse._common import axes_of, dims, either, fail, is_scalar, same_dim, scalar

from passc.graph import constant, fresh_initializer, onnx_opset

__all__ = ["normalization_rules"]


def _trailing_axes(reductions: list[ir.Node], x: ir.Value):
    """The number k of trailing axes the ReduceMean nodes all average over, or a failure."""
    x_dims = dims(x)
    found = None
    for node in reductions:
        axes = axes_of(node)
        if axes is None:
            return fail("ReduceMean axes are not constant", node)
        if node.attributes.get_int("keepdims", 1) != 1:
            return fail("ReduceMean does not keep dims", node)
        if not axes:
            if node.attributes.get_int("noop_with_empty_axes", 0):
                return fail("ReduceMean with no axes and noop_with_empty_axes=1 reduces nothing", node)
            if x_dims is None:
                return fail("ReduceMean reduces all axes of an input of unknown rank", node)
            axes = list(range(len(x_dims)))
        if any(a >= 0 for a in axes):
            if x_dims is None:
                return fail("ReduceMean axes are positive and the input rank is unknown", node)
            axes = [a - len(x_dims) if a >= 0 else a for a in axes]
        k = len(axes)
        if sorted(axes) != list(range(-k, 0)):
            return fail(f"ReduceMean averages over axes {axes}, not the trailing ones", node)
        if found is not None and k != found:
            return fail("the two ReduceMean nodes average over different axes", node)
        found = k
    return found


def _parameter(value: ir.Value, x: ir.Value, k: int, what: str, node: ir.Node):
    """γ or β as LayerNormalization wants it: shaped like x's last k dims.

    Returns (value, array): array is a reshaped or broadcast copy to store when the constant
    was not already in that shape (e.g. [1, 1, D] or a scalar), else None."""
    x_dims = dims(x)
    if x_dims is None or len(x_dims) < k:
        return fail(f"the input's shape is unknown, so {what} cannot be checked", node)
    normalized = x_dims[-k:]
    array = constant(value)
    if array is not None:
        if array.ndim > len(x_dims) or any(d != 1 for d in array.shape[: max(array.ndim - k, 0)]):
            return fail(f"{what} of shape {list(array.shape)} broadcasts over the leading axes", node)
        trailing = array.reshape(array.shape[max(array.ndim - k, 0) :])
        trailing = trailing.reshape((1,) * (k - trailing.ndim) + trailing.shape)
        if all(same_dim(n, d) for n, d in zip(normalized, trailing.shape, strict=True)):
            return value, (trailing if trailing.shape != array.shape else None)
        if not all(isinstance(n, int) for n in normalized) or any(
            d not in (1, n) for d, n in zip(trailing.shape, normalized, strict=True)
        ):
            return fail(f"{what} of shape {list(array.shape)} does not fit dims {list(normalized)}", node)
        return value, np.ascontiguousarray(np.broadcast_to(trailing, tuple(normalized)))
    have = dims(value)
    if (
        have is None
        or len(have) != k
        or not all(same_dim(a, b) for a, b in zip(have, normalized, strict=True))
    ):
        return fail(f"{what} is not a constant and is not shaped like the normalized dims", node)
    return value, None


def _store(op, graph: ir.Graph, value: ir.Value, array: np.ndarray | None) -> ir.Value:
    if array is None:
        return value
    return fresh_initializer(op, graph, array, f"{value.name}_normalized_shape")


class _NormFusion(pattern.RewriteRuleClassBase):
    """Decomposed LayerNorm (kind "layer") or RMSNorm (kind "rms"), ending in Mul by γ."""

    def __init__(self, kind: str, scale_first: bool) -> None:
        super().__init__(name=f"{kind}-norm")
        self._kind, self._scale_first = kind, scale_first
        self._op, self._opset = ("LayerNormalization", 17) if kind == "layer" else ("RMSNormalization", 23)

    def pattern(self, op, x, eps, scale, two):
        if self._kind == "layer":
            mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
            centred = op.Sub(x, mean)
        else:
            centred = x
        squared = pattern.OrValue([op.Mul(centred, centred), op.Pow(centred, two)])
        variance = op.ReduceMean(squared, _allow_other_inputs=True, _outputs=["variance"])
        std = op.Sqrt(either(op.Add, variance, eps))
        normalized = pattern.OrValue([op.Div(centred, std), either(op.Mul, centred, op.Reciprocal(std))])
        if self._scale_first:
            return op.Mul(scale, normalized, _outputs=["out"])
        return op.Mul(normalized, scale, _outputs=["out"])

    def check(self, context, x, eps, scale, two, variance, out, mean=None, **_):
        root = out.producer()
        opset = onnx_opset(context.model)
        if opset < self._opset:
            return fail(
                f"{self._op} needs opset {self._opset}, the model is opset {opset}: left decomposed", root
            )
        if x.dtype != ir.DataType.FLOAT:
            return fail(f"input is {x.dtype}, only float32 is fused", root)
        if two is not None and not is_scalar(two, 2.0):
            return fail("Pow exponent is not 2", root)
        epsilon = scalar(eps)
        if epsilon is None or epsilon < 0:
            return fail("epsilon is not a non-negative scalar constant", root)
        reductions = [variance.producer()] + ([mean.producer()] if mean is not None else [])
        k = _trailing_axes(reductions, x)
        if isinstance(k, pattern.MatchResult):
            return k
        param = _parameter(scale, x, k, "scale", root)
        if isinstance(param, pattern.MatchResult):
            return param
        self._plan = (k, epsilon, param, context.graph_or_function)
        return pattern.MatchResult()

    def rewrite(self, op, x, out, **_):
        k, epsilon, (scale, array), graph = self._plan
        return op.op(
            self._op,
            x,
            _store(op, graph, scale, array),
            axis=-k,
            epsilon=epsilon,
            stash_type=1,
            _name=out.producer().name,
        )


class _LayerNormBias(pattern.RewriteRuleClassBase):
    """LayerNormalization without bias, then Add of β shaped like γ."""

    def __init__(self) -> None:
        super().__init__(name="layer-norm-bias")

    def pattern(self, op, x, scale, bias):
        return op.Add(op.LayerNormalization(x, scale, _outputs=["ln"]), bias, _outputs=["out"])

    def check(self, context, x, scale, bias, ln, out, **_):
        node = ln.producer()
        x_dims = dims(x)
        axis = node.attributes.get_int("axis", -1)
        if axis >= 0:
            if x_dims is None:
                return fail("LayerNormalization axis is positive and the input rank is unknown", node)
            axis -= len(x_dims)
        if bias.dtype != x.dtype:
            return fail("bias and input types differ", out.producer())
        param = _parameter(bias, x, -axis, "bias", out.producer())
        if isinstance(param, pattern.MatchResult):
            return param
        scale_dims, (bias_value, array) = dims(scale), param
        bias_dims = array.shape if array is not None else dims(bias_value)
        if (
            scale_dims is None
            or len(scale_dims) != len(bias_dims)
            or not all(same_dim(a, b) for a, b in zip(scale_dims, bias_dims, strict=True))
        ):
            return fail("bias would not have the shape of the scale", out.producer())
        self._plan = (param, context.graph_or_function)
        return pattern.MatchResult()

    def rewrite(self, op, x, scale, ln, **_):
        (bias, array), graph = self._plan
        node = ln.producer()
        return op.LayerNormalization(
            x, scale, _store(op, graph, bias, array), _name=node.name, **node.attributes
        )


def normalization_rules() -> dict[str, list[pattern.RewriteRule]]:
    """`layer-norm`, `layer-norm-bias`, `rms-norm`."""
    return {
        "layer-norm": [_NormFusion.rule("layer", first) for first in (False, True)],
        "layer-norm-bias": list(_LayerNormBias.rule().commute()),
        "rms-norm": [_NormFusion.rule("rms", first) for first in (False, True)],
    }
