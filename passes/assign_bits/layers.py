"""The layers whose weights get a bit width, and the bytes weights occupy as stored.

A layer is a Conv, Gemm or MatMul node whose weight operand (input 1) is a float32 initializer
used by that node alone: Conv [O, C/g, *k] and Gemm with transB=1 [N, K] have their output
channels first; MatMul and Gemm with transB=0, [K, N], last. A layer is named by its node's name,
or its first output's name when the node has none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from passc.stats import node_macs

__all__ = ["LAYER_OPS", "Layer", "find_layers", "layer_name", "weight_bytes"]

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# Ops whose input 1 is a weight, for weight_bytes: the layer ops and ConvTranspose.
_WEIGHTED_OPS = (*LAYER_OPS, "ConvTranspose")


@dataclass(frozen=True, eq=False)
class Layer:
    name: str
    node: ir.Node
    weight: ir.Value  # a float32 initializer with this node as its only user
    channels_last: bool
    macs: int  # 0 when shapes are not static

    @property
    def array(self) -> np.ndarray:
        return self.weight.const_value.numpy()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.const_value.shape)

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def reduced(self) -> int:
        """L: the weight elements each output channel reduces over."""
        return self.elements // (self.shape[-1] if self.channels_last else self.shape[0])


def layer_name(node: ir.Node) -> str:
    return node.name or node.outputs[0].name or ""


def _own_initializer(value: ir.Value | None) -> bool:
    return (
        value is not None
        and value.is_initializer()
        and not value.is_graph_input()
        and not value.is_graph_output()
        and value.const_value is not None
        and value.const_value.dtype == ir.DataType.FLOAT
        and len(value.uses()) == 1
    )


def find_layers(graph: ir.Graph) -> list[Layer]:
    """The graph's layers in node order."""
    layers = []
    for node in graph:
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if not _own_initializer(weight):
            continue
        rank = len(weight.const_value.shape)
        if node.op_type == "Conv" and rank >= 3:
            channels_last = False
        elif node.op_type == "Gemm" and rank == 2:
            channels_last = not node.attributes.get_int("transB", 0)
        elif node.op_type == "MatMul" and rank == 2:
            channels_last = True
        else:
            continue
        layers.append(Layer(layer_name(node), node, weight, channels_last, node_macs(node)))
    return layers


def _upstream_initializers(value: ir.Value) -> set[ir.Value] | None:
    """The initializers `value` is computed from, or None when it depends on a graph input."""
    found: set[ir.Value] = set()
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v.is_graph_input():
            return None
        if v.is_initializer():
            found.add(v)
            continue
        producer = v.producer()
        if producer is not None:
            stack.extend(i for i in producer.inputs if i is not None)
    return found


def weight_bytes(model: ir.Model, layers: Iterable[str] | None = None) -> int:
    """Bytes of the initializers that the weights of `layers` (default: all) are computed from.

    For a realised layer these are its packed codes, scales and zero points (or its float16
    weight); for a float layer, its float32 weight. Biases, Constant nodes (the decode graph's
    shifts and shapes) and weights computed from graph inputs do not count; an initializer shared
    by several layers counts once. This is what the artifact holds for those weights.
    """
    wanted = None if layers is None else set(layers)
    counted: set[ir.Value] = set()
    for node in model.graph:
        if node.op_type not in _WEIGHTED_OPS or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        if wanted is not None and layer_name(node) not in wanted:
            continue
        counted |= _upstream_initializers(node.inputs[1]) or set()
    return sum(v.const_value.nbytes for v in counted)
