"""Depthwise conv2d over channel blocks, and `PackedDepthwise`, its schedule: wide kernels, narrow maps.

A depthwise conv in NCHW vectorizes along the output row, and MobileNetV3's 5×5 depthwise convs
run on rows of 14 and 7 columns: part-empty vectors, and at stride 2 a gather per load. Blocking
V channels instead (V = lanes of the output's type),

    B[n, c // V, y, x, c % V] = pad(X)[n, c, y, x]                (the input, once per call)
    P[c // V, kh, kw, c % V]  = W[c, 0, kh, kw]                   (the weight, once, at compile time)
    Y[n, c, y, x] = Σ_{kh, kw} B[n, c // V, y·sh + kh·dh, x·sw + kw·dw, c % V] · P[c // V, kh, kw, c % V]

makes every step of the reduction one vector load of B, one of P and one fused multiply-add per
output column of the tile, with all V lanes in use at any width and stride (`PackedDepthwise`).
Y is still NCHW to the rest of the model: the schedule keeps the tile channel-blocked and the
epilogue writes it back, so the kernel pays two transposes (B, and the epilogue's) for the
vector-wide reduction.

The transposes cost about what a 3×3 kernel's nine taps save, so only kernels of at least
`MIN_TAPS` taps on outputs at most `MAX_WIDTH` columns wide take this legalization; every other
depthwise conv legalizes as TVM's own.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, s_tir, te
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from passc.schedules.analysis import (
    divisor,
    epilogue_block,
    inline_injective,
    inline_prologues,
    inline_side_inputs,
    named_reduction,
    tile_factors,
    vector_lanes,
)
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec
from passc.schedules.packed_conv import conv_spec, pack_weight

__all__ = [
    "DEPTHWISE_BLOCKS",
    "MAX_WIDTH",
    "MIN_TAPS",
    "PACKED_DEPTHWISE",
    "PackedDepthwise",
    "legalize_depthwise_conv2d",
]

# The reduction block of the channel-blocked depthwise conv (`PackedDepthwise`) and the block
# that copies its input into channel blocks.
PACKED_DEPTHWISE = "depthwise_conv2d_nchw_packed"
DEPTHWISE_BLOCKS = "depthwise_input_blocks"
# Kernels with fewer taps keep NCHW: the two transposes cost more than the vectors save (3×3).
MIN_TAPS = 25
# Outputs wider than this keep NCHW: their rows fill whole vectors.
MAX_WIDTH = 28


def _packed_depthwise_conv2d(
    data: te.Tensor, packed: te.Tensor, strides: Any, padding: Any, dilation: Any
) -> te.Tensor:
    """The TE compute of the module docstring's formula: B, then Y."""
    batch, _, height, width = (int(d) for d in data.shape)
    blocks, kernel_h, kernel_w, lanes = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    zero = tvm.tirx.const(0, data.dtype)

    def blocked_input(n: Any, b: Any, y: Any, x: Any, v: Any) -> Any:
        inside = tvm.tirx.all(y >= top, y < height + top, x >= left, x < width + left)
        return tvm.tirx.if_then_else(inside, data[n, b * lanes + v, y - top, x - left], zero)

    padded = (batch, blocks, height + top + bottom, width + left + right, lanes)
    blocked = te.compute(padded, blocked_input, name=DEPTHWISE_BLOCKS)
    out_h = (height + top + bottom - (kernel_h - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kernel_w - 1) * dw - 1) // sw + 1
    kh = te.reduce_axis((0, kernel_h), "kh")
    kw = te.reduce_axis((0, kernel_w), "kw")
    return te.compute(
        (batch, blocks * lanes, out_h, out_w),
        lambda n, c, y, x: te.sum(
            blocked[n, c // lanes, y * sh + kh * dh, x * sw + kw * dw, c % lanes]
            * packed[c // lanes, kh, kw, c % lanes],
            axis=[kh, kw],
        ),
        name=PACKED_DEPTHWISE,
    )


def legalize_depthwise_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The channel-blocked depthwise conv for this conv2d, or None where it does not apply: a
    constant weight [C, 1, Kh, Kw] with C groups, NCHW/OIHW, float operands, at least `MIN_TAPS`
    taps, an output at most `MAX_WIDTH` columns wide, and C a multiple of a (half) vector."""
    target = Target.current(allow_none=True)
    spec = conv_spec(call, target, grouped=True) if target is not None else None
    if spec is None:
        return None
    attrs = call.attrs
    data, weight = call.args
    channels, group_width, kernel_h, kernel_w = (int(d) for d in weight.value.shape)
    if int(attrs.groups) != channels or group_width != 1 or int(data.ty.shape[1]) != channels:
        return None
    out_width = int(call.ty.shape[3])
    lanes = vector_lanes(spec, channels)
    if kernel_h * kernel_w < MIN_TAPS or out_width > MAX_WIDTH or lanes is None:
        return None
    packed = relax.const(pack_weight(weight.value.numpy(), lanes)[:, 0])  # [C/V, 1, Kh, Kw, V] without its 1
    return bb.call_te(
        _packed_depthwise_conv2d,
        data,
        packed,
        attrs.strides,
        attrs.padding,
        attrs.dilation,
        primfunc_name_hint="depthwise_conv2d_packed",
    )


class PackedDepthwise(Rule):
    """The channel-blocked depthwise conv (`legalize_depthwise_conv2d`) with its epilogue.

    Loops n, c, y, x, kh, kw are tiled as
        parallel(n · c/V · y · x/columns) · kh · kw · unroll(columns) · vector(V)
    so a row of `columns` output columns (at most 14, the largest divisor of the width) stays in
    registers as channel vectors for the whole reduction: each tap loads one weight vector and one
    input vector per column. The tile is laid out channel-blocked, so its vectors are contiguous,
    and the epilogue (bias, activation) writes it back to NCHW per tile. The input's copy into
    channel blocks runs first, over all of it, as one parallel loop with the channels vectorized.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        index = named_reduction(blocks, PACKED_DEPTHWISE)
        if index is None or blocks[index].dom_kind() != "SSSSRR":
            return None
        blocks, index = inline_side_inputs(sch, blocks, index)
        blocks, index = inline_prologues(sch, blocks, index)
        if [b.name for b in blocks[:index]] != [DEPTHWISE_BLOCKS]:
            return None
        main, copy = blocks[index], blocks[0]
        consumers = inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        lanes = copy.dom()[-1]
        width = main.dom()[3]
        n, c, y, x, kh, kw = sch.get_loops(main.block_rv)
        block, lane = sch.split(c, [None, lanes])
        columns = divisor(width, min(14, spec.registers - 2))
        outer_x, column = sch.split(x, tile_factors(sch, x, width, columns))
        sch.reorder(n, block, y, outer_x, kh, kw, column, lane)
        tile = sch.fuse(n, block, y, outer_x)
        if int(sch.get(tile).extent) > 1:
            sch.parallel(tile)

        epilogue = epilogue_block(sch, main, consumers)
        sch.transform_layout(main.block_rv, ("write", 0), lambda n, c, h, w: (n, c // lanes, h, w, c % lanes))
        sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
        sch.vectorize(lane)
        sch.unroll(column)
        init = sch.decompose_reduction(main.block_rv, kh)
        sch.vectorize(sch.get_loops(init)[-1])

        *rows, _, copy_lane = sch.get_loops(copy.block_rv)
        sch.parallel(sch.fuse(*rows))
        sch.vectorize(copy_lane)
        return sch
