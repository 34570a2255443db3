"""Canonicalisation: constant folding, shape inference and dead-node removal, run first."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import fold_constants_ir

from passc.pass_base import PasscPass
from passc.registry import register_pass

__all__ = ["Canonicalize"]


# ConstantOfShape folds when it makes at most this many elements: shape arithmetic (pads, sizes),
# which later folds depend on; onnxscript keeps every ConstantOfShape, so as not to grow a model
# whose weights one makes.
SMALL_CONSTANT = 1024


def _should_fold(node: ir.Node) -> bool | None:
    """True for a ConstantOfShape of a small constant shape; None (onnxscript's rules) otherwise."""
    if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
        shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
        if shape is not None and int(np.prod(shape.numpy())) <= SMALL_CONSTANT:
            return True
    return None


class _FoldConstants(ir.passes.InPlacePass):
    """onnxscript's constant folder with ONNX shape inference."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = fold_constants_ir(model, onnx_shape_inference=True, should_fold=_should_fold)
        return ir.passes.PassResult(model, result.modified)


def _position(value: ir.Value | None, length: int, default: int, insert: bool = False) -> int | None:
    """A constant sequence position, counted from the front; None if not constant or out of range."""
    if value is None:
        return default
    if value.const_value is None:
        return None
    position = int(value.const_value.numpy())
    position += length if position < 0 else 0
    return position if 0 <= position <= length - (0 if insert else 1) else None


class _StaticSequences(ir.passes.InPlacePass):
    """Resolves ONNX sequences whose items and positions are known when the graph is built:
    SequenceConstruct/Empty/Insert/Erase give a list of values, SequenceAt one of them (through an
    Identity), SequenceLength a constant, ConcatFromSequence a Concat. What reads a sequence any
    other way keeps it."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, items, modified = model.graph, {}, False
        for node in list(graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            op, inputs = node.op_type, node.inputs
            if op == "SequenceConstruct":
                items[node.outputs[0]] = list(inputs)
            elif op == "SequenceEmpty":
                items[node.outputs[0]] = []
            if op not in _SEQUENCE_READERS or not inputs or inputs[0] not in items:
                continue
            values = items[inputs[0]]
            at = (
                inputs[2]
                if op == "SequenceInsert" and len(inputs) > 2
                else inputs[1]
                if len(inputs) > 1
                else None
            )
            if op == "SequenceInsert":
                position = _position(at, len(values), len(values), insert=True)
                if position is not None:
                    items[node.outputs[0]] = values[:position] + [inputs[1]] + values[position:]
                continue
            if op == "SequenceErase":
                position = _position(at, len(values), len(values) - 1)
                if position is not None:
                    items[node.outputs[0]] = values[:position] + values[position + 1 :]
                continue
            if op == "SequenceAt":
                position = _position(at, len(values), -1)
                if position is None:
                    continue
                new = ir.node("Identity", [values[position]])
            elif op == "SequenceLength":
                new = ir.node(
                    "Constant", [], attributes={"value": ir.tensor(np.array(len(values), np.int64))}
                )
            else:  # ConcatFromSequence
                axis = node.attributes.get_int("axis", 0)
                if not values:
                    continue
                parts = values
                if node.attributes.get_int("new_axis", 0):
                    axes = ir.node(
                        "Constant", [], attributes={"value": ir.tensor(np.array([axis], np.int64))}
                    )
                    unsqueezed = [ir.node("Unsqueeze", [v, axes.outputs[0]]) for v in values]
                    graph.insert_before(node, [axes, *unsqueezed])
                    parts = [n.outputs[0] for n in unsqueezed]
                new = ir.node("Concat", parts, attributes={"axis": axis})
            new.outputs[0].shape, new.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
            ir.convenience.replace_nodes_and_values(
                graph, node, [node], [new], [node.outputs[0]], [new.outputs[0]]
            )
            modified = True
        return ir.passes.PassResult(model, modified)


_SEQUENCE_READERS = {"SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength", "ConcatFromSequence"}


@register_pass("canonicalize")
class Canonicalize(PasscPass):
    """Folds constants and shape sub-graphs, infers shapes, removes dead nodes (onnxscript's optimizer).

    Exact: folding evaluates the same ops on constants that the runtime would evaluate later.
    Once input shapes are bound, Shape/Gather/Concat/Reshape chains that only compute shapes fold
    away, which TVM needs before it can lower the graph. It is `onnxscript.optimizer.optimize`
    without its pattern rewrites: graph rewrites belong to the passes that report them (`fuse`,
    `fold-linear-blocks`), and one of those defaults (Cast∘Cast → Cast) is not exact. Graph
    inputs and outputs keep their names: an input that is also an output stays one value (onnx_ir's
    OutputFixPass would rename the input to put an Identity between them).

    Sequences whose items and positions are fixed (SequenceConstruct, Insert, Erase, At, Length,
    ConcatFromSequence) resolve to the values they hold.

    A graph input that also has an initializer (every weight of a model from before ONNX IR
    version 4) becomes a constant, as onnxruntime and TVM treat it when the caller does not feed
    it, so that it folds and fuses; `keep_initializer_inputs` keeps such inputs for the caller.
    """

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options:
        keep_initializer_inputs: bool = dataclasses.field(
            default=False,
            metadata={"help": "keep graph inputs that have an initializer as inputs the caller passes"},
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.fired.clear()
        before = ir.to_proto(model).SerializeToString(deterministic=True)
        if not self.options.keep_initializer_inputs:
            constants = [v for v in model.graph.inputs if v.const_value is not None]
            if constants:
                common.RemoveInitializersFromInputsPass()(model)
                self.fired["initializer-inputs-to-constants"] = len(constants)
        fold = ir.passes.PassManager(
            [
                _FoldConstants(),
                _StaticSequences(),
                common.RemoveUnusedNodesPass(),
                common.RemoveUnusedFunctionsPass(),
                common.RemoveUnusedOpsetsPass(),
            ],
            steps=2,
            early_stop=True,
        )
        ir.passes.PassManager(
            [
                common.InlinePass(),
                fold,
                common.RemoveUnusedNodesPass(),
                common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                common.LiftSubgraphInitializersToMainGraphPass(),
                common.DeduplicateInitializersPass(),
                common.CommonSubexpressionEliminationPass(),
                common.NameFixPass(),
            ]
        )(model)
        after = ir.to_proto(model).SerializeToString(deterministic=True)
        return ir.passes.PassResult(model, modified=before != after)
