"""Model statistics for the pass log and `passc inspect`: nodes, parameters, MACs, op counts."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

import onnx_ir as ir

__all__ = ["ModelStats", "model_stats", "node_macs", "op_counts"]


@dataclass(frozen=True)
class ModelStats:
    nodes: int
    initializers: int
    params: int  # elements in all initializers
    macs: int  # multiply-accumulates of Conv/ConvTranspose/MatMul/Gemm with known shapes

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    if value is None or value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(value.shape)


def node_macs(node: ir.Node) -> int:
    """MACs of one node: output elements × reduction length, for the ops that dominate cost.

    Conv: |Y| · (C_in / groups) · Πk.  ConvTranspose: |X| · (C_out / groups) · Πk.
    MatMul/Gemm: |Y| · K, K the contracted dim.  Other ops count 0.
    """
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "MatMul", "Gemm") and node.domain in ("", "ai.onnx"):
        out = _static_shape(node.outputs[0])
        weight = _static_shape(node.inputs[1]) if len(node.inputs) > 1 else None
        data = _static_shape(node.inputs[0])
        if out is None or weight is None or data is None:
            return 0
        if op == "Conv":
            return math.prod(out) * math.prod(weight[1:])
        if op == "ConvTranspose":
            return math.prod(data) * math.prod(weight[1:])
        if op == "Gemm":
            trans_a = node.attributes.get("transA")
            k = data[0] if trans_a is not None and trans_a.as_int() else data[-1]
            return math.prod(out) * k
        return math.prod(out) * data[-1]
    return 0


def model_stats(model: ir.Model) -> ModelStats:
    """Counts over the main graph (nodes in sub-graphs are not counted)."""
    graph = model.graph
    params = sum(
        math.prod(shape) for v in graph.initializers.values() if (shape := _static_shape(v)) is not None
    )
    return ModelStats(
        nodes=len(graph),
        initializers=len(graph.initializers),
        params=params,
        macs=sum(node_macs(n) for n in graph),
    )


def op_counts(model: ir.Model) -> Counter[str]:
    """How many nodes of each op type ("domain::Op" outside the default domain)."""
    return Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph
    )
