"""The Relax phases that turn ops into the PrimFuncs passc's rules schedule.

TVM's CPU legalize phases (`cpu_generic.legalize_passes`), with the legalizations of these ops
replaced where passc's apply:
- conv2d by the pointwise conv (`passc.schedules.pointwise_conv`) or the packed conv, and a
  transposed conv whose kernel is its stride by the packed conv's reduction
  (`passc.schedules.packed_conv`); a depthwise conv with a wide kernel on a narrow output by
  channel blocks (`passc.schedules.packed_depthwise`);
- a matmul by a constant by int8 kernels (`passc.schedules.int8_matmul`, after
  `narrow_int8_matmul` has taken the int32 widening off its 8-bit operands) or by packed row tiles
  and column panels (`passc.schedules.packed_dense`);
- softmax and layer norm over the last axis by reductions in partials
  (`passc.schedules.row_reduction`);
- float32 exp, sigmoid, softmax over other axes, erf and tanh by vector arithmetic, and a float32
  division by a constant by a multiplication (`passc.schedules.fast_math`).
Each of passc's legalizations returns None where it does not apply, and the op gets TVM's own.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from passc.schedules.fast_math import FAST_MATH
from passc.schedules.int8_matmul import legalize_int8_matmul, narrow_int8_matmul
from passc.schedules.packed_conv import legalize_conv2d, legalize_conv2d_transpose
from passc.schedules.packed_dense import legalize_matmul
from passc.schedules.packed_depthwise import legalize_depthwise_conv2d
from passc.schedules.pointwise_conv import legalize_pointwise_conv2d
from passc.schedules.row_reduction import legalize_layer_norm, legalize_softmax

__all__ = ["legalize_passes"]


def _or_tvm(legalize: Any) -> Any:
    """`legalize`, falling back to the op's registered TVM legalization where it returns None."""

    def legalize_or_tvm(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        expr = legalize(bb, call)
        return expr if expr is not None else tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)

    return legalize_or_tvm


def _first(*legalizations: Any) -> Any:
    """The first of `legalizations` that applies (returns an expression), else None."""

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
        return next((e for e in (f(bb, call) for f in legalizations) if e is not None), None)

    return legalize


LEGALIZATIONS = {
    "relax.nn.conv2d": _first(legalize_pointwise_conv2d, legalize_conv2d, legalize_depthwise_conv2d),
    "relax.nn.conv2d_transpose": legalize_conv2d_transpose,
    "relax.matmul": _first(legalize_int8_matmul, legalize_matmul),
    **FAST_MATH,
    "relax.nn.softmax": _first(legalize_softmax, FAST_MATH["relax.nn.softmax"]),
    "relax.nn.layer_norm": legalize_layer_norm,
}


def legalize_passes() -> list[Any]:
    """Narrow int8 matmuls, fold constants, legalize, annotate op patterns, fold constants, fuse.
    Run under the target: it sets the packed conv's vector width. The first fold turns a
    transposed constant weight (a Gemm's) into a constant, so the packed legalizations see it."""
    return [
        narrow_int8_matmul,
        relax.transform.FoldConstant(),
        relax.transform.LegalizeOps(
            customize_legalize_map={op: _or_tvm(legalize) for op, legalize in LEGALIZATIONS.items()}
        ),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
