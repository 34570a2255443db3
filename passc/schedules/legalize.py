"""The Relax phases that turn ops into the PrimFuncs passc's rules schedule.

TVM's CPU legalize phases (`cpu_generic.legalize_passes`), with three of TVM's legalizations
replaced: conv2d by the packed conv (`passc.schedules.packed_conv`) where it applies, and float32
exp, sigmoid, softmax and erf by vector arithmetic (`passc.schedules.fast_math`).
"""

from __future__ import annotations

from typing import Any

from tvm import relax

from passc.schedules.fast_math import FAST_MATH
from passc.schedules.packed_conv import legalize_conv2d

__all__ = ["legalize_passes"]


def legalize_passes() -> list[Any]:
    """Legalize, annotate op patterns, fold constants, fuse. Run under the target: it sets the
    packed conv's vector width."""
    return [
        relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": legalize_conv2d, **FAST_MATH}),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
