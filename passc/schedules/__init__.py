"""passc's default CPU schedules: legalizations and TIR schedule rules that need no tuning.

TVM legalizes every Relax op into naive TIR loops. `legalize_passes` first changes what some ops
legalize to: conv2d with packed weights, or a 1×1 conv at stride 1 as a product over the pixels
(`packed_conv`), a depthwise conv with a kernel of 5×5 or more on a narrow map over channel blocks
(`packed_depthwise`), a matmul by a constant matrix with both operands packed for a register tile
(`packed_dense`), an int8 matmul (ONNX MatMulInteger) kept int8 for the CPU's dot products and
int8 matrix instructions (`int8_matmul`, `int8_intrinsics`), and vector exp, sigmoid, softmax and
erf (`fast_math`). The rules (`rules`) then
give each kernel a schedule at compile time, the way TVM's dlight rules do (`ApplyDefaultSchedule`
after legalize): register and cache tiling of contractions (packed and pointwise conv, depthwise
conv, matmul, batch matmul, pooling) with their elementwise epilogues fused into the tile,
reductions over a middle axis (a softmax over channels) a row at a time, parallel outer loops,
vectors of the target's width, unrolled inner reductions. Like `passc.lowering`, this package
imports TVM; only the lowering imports it.
"""

from passc.schedules.legalize import legalize_passes
from passc.schedules.packed_conv import pack_weight
from passc.schedules.rules import (
    PACKED_CONV,
    AxisReduction,
    Contraction,
    CPUSpec,
    Elementwise,
    Int8Dot,
    PackedConv,
    PackedDense,
    PointwiseConv,
    conv_tile,
    cpu_spec,
    default_rules,
    default_schedule,
    pointwise_tile,
    register_tile,
    schedule_passes,
)

__all__ = [
    "AxisReduction",
    "CPUSpec",
    "Contraction",
    "Elementwise",
    "Int8Dot",
    "PACKED_CONV",
    "PackedConv",
    "PackedDense",
    "PointwiseConv",
    "cpu_spec",
    "default_rules",
    "conv_tile",
    "default_schedule",
    "legalize_passes",
    "pack_weight",
    "pointwise_tile",
    "register_tile",
    "schedule_passes",
]
