"""Chains of Transpose / Reshape / Squeeze / Unsqueeze collapsed into one op, or removed.

All exact: these ops only move or relabel elements.
  Transpose(Transpose(x, p), q) = Transpose(x, p∘q), or x when p∘q is the identity   (onnxscript)
  Transpose(x, identity perm) = x                                                     (onnxscript)
  Reshape(Reshape(x, s1), s2) = Reshape(x, s2)                                        (onnxscript)
  Unsqueeze(Unsqueeze(x, a), b) = Unsqueeze(x, a ∪ b')                                (onnxscript)
  Unsqueeze(Squeeze(x, a), a) = x  and  Squeeze(Unsqueeze(x, a), a) = x
  Reshape(Squeeze | Unsqueeze | Flatten (x), s) = Reshape(x, s)  (0 entries of s resolved first)
  Reshape(x, s) = x when s keeps x's shape
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    no_op_transpose_rule,
    reshape_reshape_rule,
    transpose_transpose_rule,
    unsqueeze_unsqueeze_rule,
)
from passc.passes.fuse._common import axes_of, dims, fail, same_dim, static_shape

from passc.graph import constant, fresh_initializer

__all__ = ["layout_rules"]


def _normalized(axes: list[int], rank: int | None) -> set[int] | None:
    if any(a < 0 for a in axes) and rank is None:
        return None
    return {a + rank if a < 0 else a for a in axes}  # type: ignore[operator]


class _InversePair(pattern.RewriteRuleClassBase):
    """Squeeze then Unsqueeze (or the reverse) on the same axes: the input itself."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(name=f"{first.lower()}-{second.lower()}")
        self._first, self._second = first, second

    def pattern(self, op, x):
        inner = getattr(op, self._first)(x, _allow_other_inputs=True, _outputs=["inner"])
        return getattr(op, self._second)(inner, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, inner, out, **_):
        first, second = inner.producer(), out.producer()
        first_axes, second_axes = axes_of(first), axes_of(second)
        if first_axes is None or second_axes is None:
            return fail("axes are not constant", first, second)
        squeeze, squeeze_axes = (first, first_axes) if self._first == "Squeeze" else (second, second_axes)
        if not squeeze_axes:
            shape = static_shape(squeeze.inputs[0])
            if shape is None or self._first == "Unsqueeze":
                return fail("Squeeze names no axes (it drops every size-1 dim)", squeeze)
            squeeze_axes[:] = [i for i, d in enumerate(shape) if d == 1]
        # Both ops' axes are relative to the same tensor rank: x's for Squeeze→Unsqueeze, the
        # unsqueezed rank for Unsqueeze→Squeeze.
        rank_value = x if self._first == "Squeeze" else inner
        shape = dims(rank_value)
        tensor_rank = None if shape is None else len(shape)
        a, b = _normalized(first_axes, tensor_rank), _normalized(second_axes, tensor_rank)
        if a is None or b is None:
            return fail("negative axes and unknown rank", first, second)
        if a != b:
            return fail(f"axes differ: {sorted(a)} then {sorted(b)}", first, second)
        return pattern.MatchResult()

    def rewrite(self, op, x, **_):
        return op.Identity(x)


class _ReshapeAbsorbs(pattern.RewriteRuleClassBase):
    """Reshape after Squeeze / Unsqueeze / Flatten: the first op is redundant."""

    def __init__(self, inner_op: str) -> None:
        super().__init__(name=f"{inner_op.lower()}-reshape")
        self._inner_op = inner_op

    def pattern(self, op, x, shape):
        inner = getattr(op, self._inner_op)(x, _allow_other_inputs=True, _outputs=["inner"])
        return op.Reshape(inner, shape, _outputs=["out"])

    def check(self, context, x, shape, inner, out, **_):
        reshape = out.producer()
        target = constant(shape)
        if target is None:
            return fail("Reshape target shape is not a constant", reshape)
        target = target.astype(np.int64).reshape(-1)
        self._target = None
        if reshape.attributes.get_int("allowzero", 0) == 0 and (target == 0).any():
            inner_shape = static_shape(inner)
            if inner_shape is None or len(inner_shape) < len(target):
                return fail("Reshape target copies dims (0) of an input whose shape is unknown", reshape)
            target = np.array([inner_shape[i] if t == 0 else t for i, t in enumerate(target)], np.int64)
            self._target = target
        self._graph = context.graph_or_function
        return pattern.MatchResult()

    def rewrite(self, op, x, shape, out, **_):
        reshape = out.producer()
        if self._target is not None:
            shape = fresh_initializer(op, self._graph, self._target, f"{shape.name}_resolved")
        return op.Reshape(x, shape, _name=reshape.name, **reshape.attributes)


class _NoOpReshape(pattern.RewriteRuleClassBase):
    """Reshape(x, s) = x when s keeps every dim of x."""

    def __init__(self) -> None:
        super().__init__(name="noop-reshape")

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["out"])

    def check(self, context, x, shape, out, **_):
        reshape = out.producer()
        target = constant(shape)
        have = dims(x)
        if target is None or have is None:
            return fail("Reshape target or input shape is unknown", reshape)
        target = [int(t) for t in target.reshape(-1)]
        allowzero = reshape.attributes.get_int("allowzero", 0)
        if len(target) != len(have):
            return fail(f"Reshape changes the rank from {len(have)} to {len(target)}", reshape)
        unresolved = 0
        for axis, (dim, t) in enumerate(zip(have, target, strict=True)):
            if t == -1:
                unresolved += 1
            elif not ((t == 0 and not allowzero) or same_dim(dim, t)):
                return fail(f"Reshape changes dim {axis} ({dim} -> {t})", reshape)
        if unresolved > 1:
            return fail("Reshape target has more than one -1", reshape)
        return pattern.MatchResult()

    def rewrite(self, op, x, **_):
        return op.Identity(x)


def layout_rules() -> dict[str, list[pattern.RewriteRule]]:
    """Rule name → rules, reused from onnxscript where it has them."""
    return {
        "noop-transpose": [no_op_transpose_rule],
        "transpose-transpose": [transpose_transpose_rule],
        "reshape-reshape": [reshape_reshape_rule],
        "noop-reshape": [_NoOpReshape.rule()],
        "unsqueeze-unsqueeze": [unsqueeze_unsqueeze_rule],
        "squeeze-unsqueeze": [_InversePair.rule("Squeeze", "Unsqueeze")],
        "unsqueeze-squeeze": [_InversePair.rule("Unsqueeze", "Squeeze")],
        "squeeze-reshape": [_ReshapeAbsorbs.rule("Squeeze")],
        "unsqueeze-reshape": [_ReshapeAbsorbs.rule("Unsqueeze")],
        "flatten-reshape": [_ReshapeAbsorbs.rule("Flatten")],
    }
