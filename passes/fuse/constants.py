"""Constants that canonicalize leaves unfolded for their size, folded where they stay small.

onnxscript's folder (the canonicalize pass) never folds ConstantOfShape, and skips any op with a
constant input over 8,192 elements. Exporters leave both in graphs where the result is a small
constant: YOLOv8's anchor strides (ConstantOfShape → Add → Concat → Transpose of constants),
BERT's position embeddings (Gather(table, constant positions)). Rule `constants` folds:
  ConstantOfShape(constant shape) of at most 8,192 elements;
  Gather(constant table, constant indices) when the result has at most 8,192 elements, or the
  table has no other use and the result is no larger (the model shrinks);
and then every node whose inputs all come from those folds or other constants, under the folder's
own size rules. Nothing else: ops canonicalize chose to keep (DequantizeLinear, say) stay.
Exact: folding evaluates the same ops the runtime would, once, ahead of time.
Not a pattern rule: it is onnxscript's folder run over that cone of nodes, whose per-op
evaluators a pattern rule would have to duplicate.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.optimizer import fold_constants_ir

from passc.graph import constant, describe

__all__ = ["CONSTANTS", "fold_small_constants"]

CONSTANTS = "constants"

# onnxscript's DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT: a tensor this small it folds anyway.
_SMALL = 8192


def _is_onnx(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx")


def _array(value: ir.Value | None) -> np.ndarray | None:
    """`constant(value)` without its side effect: onnx_ir names a Constant node's tensor when read."""
    if value is None or value.is_graph_input():
        return None
    node = value.producer()
    if value.const_value is None and node is not None and _is_onnx(node, "Constant"):
        attribute = node.attributes.get("value")
        if attribute is not None and not attribute.is_ref():
            return attribute.as_tensor().numpy()
    return constant(value)


def _is_constant(value: ir.Value | None) -> bool:
    if value is None:
        return True
    if value.is_graph_input():
        return False
    node = value.producer()
    return value.const_value is not None or (node is not None and _is_onnx(node, "Constant"))


def _allowed(node: ir.Node) -> bool:
    """A ConstantOfShape or Gather that the folder skips for size but whose result stays small."""
    if not all(_is_constant(v) for v in node.inputs):
        return False
    if _is_onnx(node, "ConstantOfShape"):
        shape = _array(node.inputs[0])
        return shape is not None and math.prod(int(d) for d in shape.reshape(-1)) <= _SMALL
    if _is_onnx(node, "Gather") and len(node.inputs) == 2:
        table, indices = _array(node.inputs[0]), _array(node.inputs[1])
        if table is None or indices is None or table.ndim == 0:
            return False
        axis = node.attributes.get_int("axis", 0)
        if not -table.ndim <= axis < table.ndim or table.shape[axis] == 0:
            return False
        size = table.size // table.shape[axis] * indices.size
        only_use = len(node.inputs[0].uses()) == 1 and not node.inputs[0].is_graph_output()
        return size <= _SMALL or (only_use and size <= table.size)
    return False


def _cone(graph: ir.Graph) -> tuple[set[ir.Node], list[ir.Node]]:
    """(the allowed nodes, they and every node that computes only from them and constants)."""
    seeds: set[ir.Node] = set()
    cone: list[ir.Node] = []
    produced: set[ir.Value] = set()
    for node in graph:  # topological order
        if _allowed(node):
            seeds.add(node)
        elif not any(v in produced for v in node.inputs):
            continue
        elif not all(v in produced or _is_constant(v) for v in node.inputs):
            continue
        cone.append(node)
        produced.update(node.outputs)
    return seeds, cone


def fold_small_constants(model: ir.Model) -> list[str]:
    """Folds the allowed nodes and what they make constant; returns the folded nodes' names."""
    seeds, cone = _cone(model.graph)
    if not seeds:
        return []

    members = set(cone)

    def should_fold(node: ir.Node) -> bool | None:
        if node in seeds:
            return True
        return None if node in members else False

    # Every node the folder removes counts, in or out of the cone (it also simplifies non-constant
    # ops such as Shape, which canonicalize has done already unless fuse runs without it).
    names = {node: describe(node) for node in model.graph}
    result = fold_constants_ir(model, should_fold=should_fold)
    remaining = list(model.graph)
    kept = set(remaining)
    folded = [name for node, name in names.items() if node not in kept]
    if result.modified and not folded:  # rewritten in place: report the new nodes, so fired ⇔ modified
        folded = [describe(node) for node in remaining if node not in names] or ["graph outputs"]
    return folded
