"""int8 matrix products that stay int8 in the kernel, so the CPU's dot-product instructions apply.

ONNX's MatMulInteger (int8 A, int8 B, no zero points) imports as
matmul(astype(A, int32), astype(B, int32)): a kernel multiplying int32s, four times the bytes and
no use of the int8 dot products of Armv8.2 (`sdot`) or x86. Two steps keep the operands int8:

1. `narrow_int8_matmul` (a Relax pass, before legalize) rewrites that form to
   matmul(A, B, out_dtype=int32) where A and B are int8.
2. `legalize_int8_matmul` turns such a matmul with a constant B[K, N] into

       C[..., i, j] = Σ_k int32(A[..., i, k]) · int32(Bᵀ[j, k])        (Bᵀ transposed once)

   whose reduction reads both operands contiguously along k. `Int8Dot` (`passc.schedules.rules`)
   leaves k innermost and unvectorized, and LLVM's loop vectorizer turns the int8 products summed
   into int32 into `sdot` on Armv8.2+dotprod (`tests/test_schedules.py` checks the disassembly
   for rpi5) and `vpmaddwd` on AVX2 / AVX-512 (LLVM 22 does not form VNNI's `vpdpbusd`, which
   multiplies unsigned by signed bytes, from signed × signed).

The sum is exact in int32 for K < 2¹⁷ (each product is at most 2¹⁴ in magnitude), so the result
equals onnxruntime's bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, te
from tvm.relax.dpl import is_op, rewrite_call, wildcard

from passc.schedules.rules import INT8_DOT

__all__ = ["legalize_int8_matmul", "narrow_int8_matmul"]

_LEFT, _RIGHT = wildcard(), wildcard()
_WIDENED = is_op("relax.matmul")(is_op("relax.astype")(_LEFT), is_op("relax.astype")(_RIGHT))


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _narrow(call: relax.Call, matches: dict[Any, relax.Expr]) -> relax.Expr:
    left, right = matches[_LEFT], matches[_RIGHT]
    if _dtype(left) == _dtype(right) == "int8" and _dtype(call) == "int32":
        return relax.op.matmul(left, right, out_dtype="int32")
    return call


@tvm.transform.module_pass(opt_level=0, name="NarrowInt8Matmul")
def narrow_int8_matmul(mod: tvm.IRModule, _context: Any) -> tvm.IRModule:
    """matmul(astype(A, int32), astype(B, int32)) → matmul(A, B, out_dtype=int32), A and B int8."""
    for var, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[var] = rewrite_call(_WIDENED, _narrow, func)
    return mod


def _int8_dot(data: te.Tensor, transposed: te.Tensor) -> te.Tensor:
    """C of the module docstring: `data` [..., M, K] int8, `transposed` Bᵀ [N, K] int8."""
    *lead, depth = (int(d) for d in data.shape)
    count = int(transposed.shape[0])
    k = te.reduce_axis((0, depth), "k")
    return te.compute(
        (*lead, count),
        lambda *i: te.sum(data[(*i[:-1], k)].astype("int32") * transposed[i[-1], k].astype("int32"), axis=k),
        name=INT8_DOT,
    )


def legalize_int8_matmul(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The int8 dot-product kernel for an int8 × constant int8 matmul into int32, else None."""
    data, matrix = call.args
    if not isinstance(matrix, tvm.ir.expr.Constant) or len(matrix.value.shape) != 2:
        return None
    if _dtype(data) != "int8" or _dtype(matrix) != "int8" or str(call.attrs.out_dtype) != "int32":
        return None
    if any(not isinstance(d, tvm.tirx.IntImm) for d in data.ty.shape) or len(data.ty.shape) < 2:
        return None
    transposed = relax.const(np.ascontiguousarray(matrix.value.numpy().T))
    return bb.call_te(_int8_dot, data, transposed, primfunc_name_hint="matmul_int8")
