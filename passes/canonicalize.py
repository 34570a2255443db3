"""Canonicalisation: constant folding, shape inference and dead-node removal, run first."""

from __future__ import annotations

import onnx_ir as ir
import onnxscript.optimizer

from passc.pass_base import PasscPass
from passc.registry import register_pass

__all__ = ["Canonicalize"]


@register_pass("canonicalize")
class Canonicalize(PasscPass):
    """Folds constants and shape sub-graphs, infers shapes, removes dead nodes (onnxscript.optimizer).

    Exact: folding evaluates the same ops on constants that the runtime would evaluate later.
    Once input shapes are bound, Shape/Gather/Concat/Reshape chains that only compute shapes fold
    away, which TVM needs before it can lower the graph.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = ir.to_proto(model).SerializeToString(deterministic=True)
        onnxscript.optimizer.optimize(model)
        after = ir.to_proto(model).SerializeToString(deterministic=True)
        return ir.passes.PassResult(model, modified=before != after)
