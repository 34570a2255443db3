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
