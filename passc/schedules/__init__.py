"""passc's default CPU schedules: legalizations and TIR schedule rules that need no tuning.

TVM legalizes every Relax op into naive TIR loops. `legalize_passes` first changes what some ops
legalize to, and the rules (`default_rules`) then give each kernel a schedule at compile time, the
way TVM's dlight rules do (`ApplyDefaultSchedule` after legalize). One module per kernel family
holds its legalization, if passc has one, and its rule:

- `packed_conv`: conv2d with packed weights (and a transposed conv whose kernel is its stride);
- `pointwise_conv`: a 1×1 conv at stride 1 as a product over the pixels;
- `packed_depthwise`: a depthwise conv with a kernel of 5×5 or more on a narrow map, over
  channel blocks; `wide_depthwise`: TVM's depthwise convs and pools with a wide output;
- `packed_dense`: a matmul by a constant matrix, both operands packed for a register tile;
- `int8_matmul`: an int8 matmul (ONNX MatMulInteger) kept int8 for the CPU's dot products and
  int8 matrix instructions (`int8_intrinsics`);
- `row_reduction`: softmax and layer norm over the last axis in vector partials;
  `trailing_sum`: a sum or max over trailing axes; `axis_reduction`: over a middle axis;
- `contraction`: any other single reduction (TVM's conv, matmul, pooling), register-tiled;
- `elementwise`: kernels with no reduction.

`fast_math` legalizes exp, sigmoid, softmax, erf and tanh to vector arithmetic; `analysis` holds the
block analysis the rules share, `cpu` the CPU table, `base` the rules' base class and `rules` their
order. Like `passc.lowering`, this package imports TVM; only the lowering imports it.
"""

from passc.schedules.axis_reduction import AxisReduction
from passc.schedules.base import collecting_declines
from passc.schedules.contraction import Contraction, register_tile
from passc.schedules.cpu import CPUSpec, cpu_spec
from passc.schedules.elementwise import Elementwise
from passc.schedules.int8_matmul import Int8Dot, Int8Tiles
from passc.schedules.legalize import legalize_passes
from passc.schedules.packed_conv import PACKED_CONV, PackedConv, conv_tile, pack_weight
from passc.schedules.packed_dense import PackedDense
from passc.schedules.packed_depthwise import PackedDepthwise
from passc.schedules.pointwise_conv import PointwiseConv, pointwise_tile
from passc.schedules.row_reduction import RowReduction
from passc.schedules.rules import default_rules, default_schedule, schedule_passes
from passc.schedules.trailing_sum import TrailingSum
from passc.schedules.wide_depthwise import WideDepthwise

__all__ = [
    "collecting_declines",
    "AxisReduction",
    "CPUSpec",
    "Contraction",
    "Elementwise",
    "Int8Dot",
    "Int8Tiles",
    "PACKED_CONV",
    "PackedConv",
    "PackedDense",
    "PackedDepthwise",
    "PointwiseConv",
    "RowReduction",
    "TrailingSum",
    "WideDepthwise",
    "conv_tile",
    "cpu_spec",
    "default_rules",
    "default_schedule",
    "legalize_passes",
    "pack_weight",
    "pointwise_tile",
    "register_tile",
    "schedule_passes",
]
