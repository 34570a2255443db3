"""What the fuse rules share: reading scalars, shapes and axes, matching and explaining.

Constants, opsets and new initializers come from `passc.graph`, which other pass families use too.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from passc.graph import constant

__all__ = [
    "FLOAT_TYPES",
    "scalar",
    "is_scalar",
    "dims",
    "static_shape",
    "same_dim",
    "axes_of",
    "either",
    "fail",
]

# The element types whose ops (Conv, Gemm, LayerNormalization, Gelu, …) onnxruntime's CPU EP runs.
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE})


def scalar(value: ir.Value | None) -> float | None:
    """The element of a one-element constant, else None."""
    array = constant(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


def is_scalar(value: ir.Value | None, expected: float, rel: float = 1e-6) -> bool:
    """True when `value` is a one-element constant equal to `expected` up to float32 rounding."""
    got = scalar(value)
    return got is not None and math.isclose(got, expected, rel_tol=rel, abs_tol=0.0)


def dims(value: ir.Value | None) -> tuple | None:
    """The value's dims (ints or symbolic dims) from its constant or inferred shape; None if unknown."""
    if value is None:
        return None
    array = constant(value)
    if array is not None:
        return tuple(array.shape)
    return None if value.shape is None else tuple(value.shape)


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape when every dim is a known non-negative int."""
    shape = dims(value)
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    return shape


def same_dim(a: object, b: object) -> bool:
    """Two dims known to be equal: equal ints, or the same named symbolic dim."""
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    value_a, value_b = getattr(a, "value", None), getattr(b, "value", None)
    return value_a is not None and value_a == value_b


def axes_of(node: ir.Node, input_index: int = 1) -> list[int] | None:
    """A reduce/squeeze node's `axes`, from its input (newer opsets) or its attribute (older ones).

    Returns [] when the node names no axes, None when they are not constant."""
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        array = constant(node.inputs[input_index])
        return None if array is None else [int(a) for a in array.reshape(-1)]
    attr = node.attributes.get("axes")
    return [] if attr is None else [int(a) for a in attr.as_ints()]


def either(make, a, b):
    """`make(a, b)` or `make(b, a)`: one commutative node, matched with its operands in either order.

    Cheaper than `RewriteRuleSet(commute=True)`, which copies the whole pattern for every
    combination of swapped nodes; safe where at most one operand is a bare variable."""
    return pattern.OrValue([make(a, b), make(b, a)])


def fail(reason: str, *where: ir.Node | ir.Value | None) -> pattern.MatchResult:
    """A failed match with its reason and the nodes or values it concerns (for --explain)."""
    sources = [w for w in where if w is not None]
    return pattern.MatchResult().fail(reason, sources or None)
