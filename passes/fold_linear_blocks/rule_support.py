"""What every folding rule shares: counting rewrites and naming new initializers (as `fuse` does)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase

from passc.graph import fresh_initializer

__all__ = ["FoldRule"]


class FoldRule(RewriteRuleClassBase):
    """A rewrite rule that counts its rewrites in `fired` and names new initializers uniquely.

    `check` calls `remember(context, out)` once a match is accepted; `rewrite` calls `count()` and
    creates initializers with `initializer(op, suffix, array)`, cast to the replaced output's dtype.
    """

    def __init__(self, name: str, fired: Counter[str]) -> None:
        super().__init__(name)
        self.fired = fired

    def count(self) -> None:
        self.fired[self.name] += 1

    def remember(self, context, out: ir.Value) -> None:
        self._graph = context.graph_or_function
        self._dtype = out.dtype.numpy() if out.dtype is not None else np.dtype(np.float32)
        self._base = out.name or "folded"

    def initializer(self, op, suffix: str, array: np.ndarray) -> ir.Value:
        """A new initializer holding `array`, never clashing with one the graph holds."""
        return fresh_initializer(op, self._graph, array.astype(self._dtype), f"{self._base}_{suffix}")
