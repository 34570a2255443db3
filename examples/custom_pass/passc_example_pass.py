"""An example passc plugin: removes multiplications by one and additions of zero.

Use it without installing (`passc compile m.onnx --plugin examples/custom_pass/passc_example_pass.py
--passes drop-identity-arith`) or install it (`pip install -e examples/custom_pass`), which
registers it through the `passc.passes` entry point group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from passc import PasscPass, register_pass

__all__ = ["DropIdentityArith"]


def _is_neutral(value: ir.Value, neutral: float, output: ir.Value, data: ir.Value) -> bool:
    """True when `value` is a constant equal to `neutral` everywhere that leaves `data`'s shape
    (and dtype) as the op's output shape: then `data op value == data` exactly."""
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or data.shape is None or output.shape is None:
        return False
    if data.shape != output.shape or data.dtype != output.dtype:
        return False
    return bool(np.all(tensor.numpy() == neutral))


class _DropNeutralOperand(pattern.RewriteRuleClassBase):
    """x ∘ c → x, where c is the neutral element of ∘ (1 for Mul, 0 for Add)."""

    def __init__(self, op_type: str, neutral: float) -> None:
        super().__init__(name=f"{op_type}-by-{neutral:g}")
        self._op_type = op_type
        self._neutral = neutral

    def pattern(self, op, x, c):
        return getattr(op, self._op_type)(x, c)

    def check(self, context, x, c, **_):
        result = pattern.MatchResult()
        if not _is_neutral(c, self._neutral, context.root.outputs[0], x):
            return result.fail(f"the other operand is not a constant {self._neutral:g} that keeps x's shape")
        return result

    def rewrite(self, op, x, c):
        return op.Identity(x)


# commute=True also matches the constant as the first operand (1 * x, 0 + x).
_RULES = pattern.RewriteRuleSet(
    [_DropNeutralOperand.rule("Mul", 1.0), _DropNeutralOperand.rule("Add", 0.0)], commute=True
)


@register_pass("drop-identity-arith")
class DropIdentityArith(PasscPass):
    """Removes x·1 and x+0 where the constant leaves x's shape and dtype unchanged.

    Exact: IEEE-754 gives x·1 = x and x+0 = x for every x except −0 + 0 = +0, which compares equal.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options:
        max_rounds: int = field(default=4, metadata={"help": "rewrite rounds before giving up"})

        def __post_init__(self) -> None:
            if self.max_rounds < 1:
                raise ValueError(f"max_rounds must be at least 1, got {self.max_rounds}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rewritten = 0
        for _ in range(self.options.max_rounds):
            count = _RULES.apply_to_model(model)
            if count == 0:
                break
            rewritten += count
        if rewritten:
            ir.passes.common.IdentityEliminationPass()(model)
        return ir.passes.PassResult(model, modified=rewritten > 0)
