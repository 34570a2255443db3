"""exp, sigmoid, softmax, erf and tanh in vector arithmetic, so their kernels vectorize; division by a
constant as a multiplication.

LLVM has no vector exp on x86 or AArch64 without a vector math library: TIR's `exp` and
`sigmoid` become one libm `expf` call per element. float32 exp legalizes instead to Cephes' `expf`
in TIR arithmetic (`exp32`), which vectorizes:

    e^x = 2^n · p(r),   n = ⌊x·log₂e + ½⌋,   r = x − n·ln 2 ∈ [−ln2/2, ln2/2]

with ln 2 split in two constants (Cody–Waite) so r is exact, p(r) = 1 + r + r²·q(r) with q
Cephes' degree-5 minimax polynomial, and 2^n built from the exponent bits. x is clamped to
[−87, 88.376]: above, e^x gives 2.4e38 instead of inf (and a NaN input gives a number); below,
e^−87 = 1.6e-38 instead of a subnormal or 0 (an absolute error under 1.7e-38): subnormals cost
x86 a microcode assist per operation. Measured relative error over [−87, 88]:
8.3e-8, 1.4 float32 ulp (`tests/test_schedules.py` checks it). sigmoid(x) = 1 / (1 + e^(−x)),
with −x clamped to at most 87 so that 1 / (1 + e^87) = 1.6e-38 is no subnormal either, and
softmax(x)ᵢ = e^(xᵢ − max x) / Σⱼ e^(xⱼ − max x) use the same exp.

float32 erf (GELU's) legalizes to TOPI's `fast_erf`, a rational approximation in the same kind
of arithmetic: measured absolute error 3.7e-7 over [−6, 6]. float32 tanh (an LSTM's) legalizes
to TOPI's `fast_tanh`, Eigen's rational approximation on x clamped to [−9, 9]: measured relative
error 3.3e-7 (5.5 ulp) over [−12, 12], near 0 too; TVM's own tanh called libm's expf per lane.

A float32 division by a scalar constant c (hardswish's x·relu6(x + 3) / 6) legalizes to
x · fl(1/c): a vector division costs about ten multiplications' time on x86, and LLVM may not
make the swap itself (it is not exact). The result is within one float32 ulp of x / c (the two
roundings, of 1/c and of the product, add at most half an ulp each) and exact when c is a power
of two.

Other dtypes legalize as TVM's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx, topi

__all__ = ["FAST_MATH", "exp32"]

_LN2_HIGH, _LN2_LOW = 0.693359375, -2.12194440e-4  # ln 2 = high + low; high has 9 significant bits
_Q = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_LIMIT = 88.3762626647949  # ln(float32 max)
_FLOOR = -87.0  # e^−87 = 1.6e-38, just above float32's smallest normal (1.2e-38)


def exp32(value: tirx.PrimExpr, ceiling: float = _LIMIT) -> tirx.PrimExpr:
    """e^value for a float32 expression, in vectorizable arithmetic (the module docstring's
    formula), with value clamped to [−87, ceiling]."""

    def f32(c: float) -> tirx.PrimExpr:
        return tirx.const(c, "float32")

    x = tirx.max(tirx.min(value, f32(ceiling)), f32(_FLOOR))
    n = tirx.floor(x * f32(1.44269504088896341) + f32(0.5))
    r = x - n * f32(_LN2_HIGH) - n * f32(_LN2_LOW)
    q = f32(_Q[0])
    for c in _Q[1:]:
        q = q * r + f32(c)
    two_to_n = tirx.reinterpret("float32", (n.astype("int32") + 127) << 23)
    return (q * r * r + r + f32(1.0)) * two_to_n


def _exp(x: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda *i: exp32(x(*i)), name="exp")


def _sigmoid(x: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda *i: 1.0 / (1.0 + exp32(-x(*i), ceiling=-_FLOOR)), name="sigmoid")


def _softmax(x: te.Tensor, axis: int) -> te.Tensor:
    shifted = topi.subtract(x, topi.max(x, axis=axis, keepdims=True))
    exp = _exp(shifted)
    return topi.divide(exp, topi.sum(exp, axis=axis, keepdims=True))


def _float32_only(compute: Any, name: str, attrs: Any = lambda call: ()) -> Any:
    """A legalization calling `compute` on a float32 operand (and `attrs(call)`); None (TVM's own
    legalization) for other dtypes."""

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
        if str(call.args[0].ty.dtype) != "float32":
            return None
        return bb.call_te(compute, call.args[0], *attrs(call), primfunc_name_hint=name)

    return legalize


def _divide_by_constant(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """x / c as x · fl(1/c) (the module docstring) for float32 x and a constant c of one element
    that does not broadcast x to more axes; None (TVM's division) otherwise."""
    x, divisor = call.args
    if str(call.ty.dtype) != "float32" or not isinstance(divisor, tvm.ir.expr.Constant):
        return None
    value = divisor.value.numpy()
    if value.size != 1 or str(value.dtype) != "float32" or x.ty.ndim != call.ty.ndim or call.ty.ndim < 0:
        return None
    reciprocal = np.float32(1.0) / value.reshape(())
    if not np.isfinite(reciprocal) or abs(reciprocal) < np.finfo(np.float32).tiny:
        return None  # c is 0, inf, nan or so large that 1/c is no normal number: divide
    factor = tirx.const(float(reciprocal), "float32")

    def multiply(t: te.Tensor) -> te.Tensor:
        return te.compute(t.shape, lambda *i: t(*i) * factor, name="multiply")

    return bb.call_te(multiply, x, primfunc_name_hint="multiply")


# Relax op → legalization, or None where TVM's own applies (`passc.schedules.legalize`).
FAST_MATH: dict[str, Any] = {
    "relax.exp": _float32_only(_exp, "exp"),
    "relax.sigmoid": _float32_only(_sigmoid, "sigmoid"),
    "relax.nn.softmax": _float32_only(_softmax, "softmax", lambda call: (int(call.attrs.axis),)),
    "relax.erf": _float32_only(topi.fast_erf, "erf"),
    "relax.tanh": _float32_only(topi.fast_tanh, "tanh"),
    "relax.divide": _divide_by_constant,
}
