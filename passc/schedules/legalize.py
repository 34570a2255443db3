"""The Relax phases that turn ops into the PrimFuncs passc's rules schedule.

TVM's CPU legalize phases (`cpu_generic.legalize_passes`), with the legalizations of five ops
replaced where passc's apply: conv2d by the packed or the pointwise conv
(`passc.schedules.packed_conv`), and float32 exp, sigmoid, softmax and erf by vector arithmetic
(`passc.schedules.fast_math`). Each of passc's legalizations returns None where it does not
apply, and the op gets TVM's own.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from passc.schedules.fast_math import FAST_MATH
from passc.schedules.packed_conv import legalize_conv2d

__all__ = ["legalize_passes"]


def _or_tvm(legalize: Any) -> Any:
    """`legalize`, falling back to the op's registered TVM legalization where it returns None."""

    def legalize_or_tvm(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        expr = legalize(bb, call)
        return expr if expr is not None else tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)

    return legalize_or_tvm


LEGALIZATIONS = {"relax.nn.conv2d": legalize_conv2d, **FAST_MATH}


def legalize_passes() -> list[Any]:
    """Legalize, annotate op patterns, fold constants, fuse. Run under the target: it sets the
    packed conv's vector width."""
    return [
        relax.transform.LegalizeOps(
            customize_legalize_map={op: _or_tvm(legalize) for op, legalize in LEGALIZATIONS.items()}
        ),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
