"""GELU recognised from its erf and tanh forms, as the standard ONNX Gelu (opset 20).

  gelu-erf:   0.5 · x · (1 + erf(x / √2))                              → Gelu(x)
  gelu-tanh:  0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))        → Gelu(x, approximate="tanh")
The three products may be grouped any way ((x·0.5)·t, x·(0.5·t), (x·t)·0.5) and each operand
order; x/√2 may be x·(1/√2) and x³ may be Pow(x, 3) or x·(x·x). Constants must be scalars equal to
the formula's up to float32 rounding.
Gelu exists from opset 20; onnxruntime rejects it earlier and TVM's frontend would run the erf form
for both approximations before 20, so at lower opsets the decomposed form is left as it is.
onnxscript's GELU fusions emit com.microsoft ops (Gelu, FastGelu), which this pass never emits.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern
from passc.passes.fuse._common import either, fail

from passc.graph import onnx_opset

__all__ = ["gelu_rules"]

_GROUPINGS = ("x*half,t", "x,half*t", "x*t,half")


class _Gelu(pattern.RewriteRuleClassBase):
    def __init__(self, form: str, grouping: str, swap: bool) -> None:
        super().__init__(name=f"gelu-{form}")
        self._form, self._grouping, self._swap = form, grouping, swap

    def _inner(self, op, x):
        """1 + erf(x/√2) or 1 + tanh(√(2/π)·(x + 0.044715·x³))."""
        if self._form == "erf":
            scaled = pattern.OrValue([op.Div(x, math.sqrt(2.0)), either(op.Mul, x, math.sqrt(0.5))])
            return either(op.Add, op.Erf(scaled), 1.0)
        cube = pattern.OrValue([op.Pow(x, 3.0), either(op.Mul, x, op.Mul(x, x))])
        polynomial = either(op.Add, x, either(op.Mul, cube, 0.044715))
        return either(op.Add, op.Tanh(either(op.Mul, polynomial, math.sqrt(2.0 / math.pi))), 1.0)

    def pattern(self, op, x):
        # The root cannot be an OrValue, so the root's operand order is a rule parameter.
        first, second = {
            "x*half,t": (lambda: either(op.Mul, x, 0.5), lambda: self._inner(op, x)),
            "x,half*t": (lambda: x, lambda: either(op.Mul, self._inner(op, x), 0.5)),
            "x*t,half": (lambda: either(op.Mul, x, self._inner(op, x)), lambda: 0.5),
        }[self._grouping]
        a, b = (second(), first()) if self._swap else (first(), second())
        return op.Mul(a, b, _outputs=["out"])

    def check(self, context, x, out, **_):
        opset = onnx_opset(context.model)
        if opset < 20:
            return fail(f"Gelu needs opset 20, the model is opset {opset}: left decomposed", out.producer())
        return pattern.MatchResult()

    def rewrite(self, op, x, out, **_):
        approximate = "none" if self._form == "erf" else "tanh"
        return op.Gelu(x, approximate=approximate, _name=out.producer().name)


def gelu_rules() -> dict[str, list[pattern.RewriteRule]]:
    """`gelu-erf` and `gelu-tanh`, each as one rule per grouping and root operand order."""
    return {
        f"gelu-{form}": [
            _Gelu.rule(form, grouping, swap) for grouping in _GROUPINGS for swap in (False, True)
        ]
        for form in ("erf", "tanh")
    }
