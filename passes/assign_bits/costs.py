"""Cost tables: what each layer costs at each width, per budget kind (rows layers, columns widths).

size and bops are exact; avg-bits is kept as total bits Σ nᵢ·bᵢ (integers; the budget is
multiplied by Σ nᵢ) so that the ILP compares integers. Latency has no model here: it comes from a
`LatencyTable` hook, e.g. one that measures each layer at each width on the target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
from passc.passes.assign_bits.layers import Layer
from passc.passes.assign_bits.quantize import INTEGER_WIDTHS, Scheme, packed_length, scale_shape, view_shape

from passc.errors import UsageError

__all__ = ["ACTIVATION_BITS", "LatencyTable", "cost_table", "stored_bytes"]

ACTIVATION_BITS = 32  # activations stay float32

# latency_table(model, layer names, widths) -> {(layer name, width): seconds}
LatencyTable = Callable[[ir.Model, Sequence[str], Sequence[int]], Mapping[tuple[str, int], float]]


def stored_bytes(layer: Layer, width: int, scheme: Scheme) -> int:
    """Bytes of the layer's weight as `realise` stores it: packed codes + float32 scales + uint8
    zero points (asymmetric only), or 2 (float16) or 4 (float32) bytes per element."""
    if width not in INTEGER_WIDTHS:
        return layer.elements * width // 8
    view = view_shape(layer.shape, layer.channels_last, scheme.group)
    groups = int(np.prod(scale_shape(view, layer.channels_last)))
    return packed_length(layer.elements, width) + groups * (4 if scheme.symmetric else 5)


def cost_table(
    kind: str,
    model: ir.Model,
    layers: Sequence[Layer],
    widths: Sequence[int],
    scheme: Scheme,
    latency_table: LatencyTable | None,
) -> np.ndarray:
    """[layers, widths] costs in the units of `kind` (avg-bits: bits, summed)."""
    if kind == "size":
        return np.array([[stored_bytes(layer, w, scheme) for w in widths] for layer in layers], np.int64)
    if kind == "avg-bits":
        return np.array([[layer.elements * w for w in widths] for layer in layers], np.int64)
    if kind == "bops":
        unknown = [layer.name for layer in layers if not layer.macs]
        if unknown:
            raise UsageError(
                f"assign-bits: bops budgets need static shapes, and layer {unknown[0]!r} has none "
                "(bind the input shapes)"
            )
        return np.array([[layer.macs * w * ACTIVATION_BITS for w in widths] for layer in layers], np.int64)
    if latency_table is None:
        raise UsageError(
            "assign-bits: latency budgets need measured latencies (no latency model exists for this "
            "target yet; pass latency_table= to AssignBits to use one)"
        )
    names = [layer.name for layer in layers]
    table = latency_table(model, names, list(widths))
    missing = [(n, w) for n in names for w in widths if (n, w) not in table]
    if missing:
        raise UsageError(
            f"assign-bits: the latency table has no entry for layer {missing[0][0]!r} at {missing[0][1]} bits"
        )
    return np.array([[float(table[n, w]) for w in widths] for n in names], np.float64)
