"""Conv2d with its weights packed for output-channel vectors, and `PackedConv`, its schedule.

A plain NCHW × OIHW conv2d gives a schedule two bad choices of vector axis: the output width
(7 of 16 lanes wasted at the end of a ResNet, a strided gather at stride 2) or the output
channels (contiguous in neither operand). Packing a constant weight W[O, I, Kh, Kw] once, at
compile time, as

    P[o // V, i, kh, kw, o % V] = W[o, i, kh, kw]          (V = lanes of the output's element type)

makes V output channels one contiguous vector of P. The packed conv computes, unchanged,

    Y[n, o, y, x] = Σ_{i, kh, kw} pad(X)[n, i, y·sh + kh·dh, x·sw + kw·dw] · P[o // V, i, kh, kw, o % V]

so each step of its reduction is one vector load of P, one broadcast input scalar per output
column and one fused multiply-add per accumulator (`PackedConv`). Activations keep their NCHW
layout: nothing else in the model changes.

The packing happens at legalization (`passc.schedules.legalize`): a conv2d whose weight is a
constant, with one group, NCHW/OIHW layouts, float operands of one type and an output-channel
count that is a multiple of V (or of V/2, which then packs half vectors) becomes the packed
conv, unless it is a pointwise conv (`passc.schedules.pointwise_conv`, tried first); every
other conv2d legalizes as TVM's own.

A transposed conv whose kernel equals its stride s (U-Net's 2×2 upsampling, no padding) gives
every output pixel exactly one tap, so with its weight W[I, O, s, s] packed the same way,

    Y[n, o, y, x] = Σ_i X[n, i, y // s, x // s] · P[o // V, i, y mod s, x mod s, o % V]

is the packed conv's reduction over i alone (`legalize_conv2d_transpose`; its tap loops have
extent 1) and takes `PackedConv`'s schedule. TVM's own legalization dilates the input with zeros
and runs an s×s conv over it: s² times the multiply-adds, with no schedule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tvm
from tvm import relax, s_tir, te, topi
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from passc.schedules.analysis import (
    divisor,
    epilogue_block,
    inline_injective,
    inline_side_inputs,
    named_reduction,
    per_load,
    reduction_chunk,
    tile_factors,
    vector_lanes,
    vectorize_flat,
)
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec, float_spec

__all__ = [
    "PACKED_CONV",
    "ROW_BANDS",
    "PackedConv",
    "conv_spec",
    "conv_tile",
    "legalize_conv2d",
    "legalize_conv2d_transpose",
    "pack_weight",
    "row_bands",
    "weight_chunk",
]

# The reduction block of the packed conv (and of the transposed conv as one), which `PackedConv` takes.
PACKED_CONV = "conv2d_nchw_packed"


def pack_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """W[O, I, Kh, Kw] as P[O / lanes, I, Kh, Kw, lanes] (O a multiple of lanes)."""
    out_channels = weight.shape[0]
    blocked = weight.reshape(out_channels // lanes, lanes, *weight.shape[1:])
    return np.ascontiguousarray(np.moveaxis(blocked, 1, -1))


def _packed_conv2d(
    data: te.Tensor, packed: te.Tensor, strides: Any, padding: Any, dilation: Any
) -> te.Tensor:
    """The packed conv's TE compute (the formula of the module docstring)."""
    _, _, height, width = (int(d) for d in data.shape)
    blocks, in_channels, kernel_h, kernel_w, lanes = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = (int(s) for s in strides), (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    if top or left or bottom or right:
        data = topi.nn.pad(data, [0, 0, top, left], [0, 0, bottom, right])
    out_h = (height + top + bottom - (kernel_h - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kernel_w - 1) * dw - 1) // sw + 1
    i = te.reduce_axis((0, in_channels), "i")
    kh = te.reduce_axis((0, kernel_h), "kh")
    kw = te.reduce_axis((0, kernel_w), "kw")
    return te.compute(
        (int(data.shape[0]), blocks * lanes, out_h, out_w),
        lambda n, o, y, x: te.sum(
            data[n, i, y * sh + kh * dh, x * sw + kw * dw] * packed[o // lanes, i, kh, kw, o % lanes],
            axis=[i, kh, kw],
        ),
        name=PACKED_CONV,
    )


def _upsampling_conv2d_transpose(data: te.Tensor, packed: te.Tensor) -> te.Tensor:
    """A transposed conv with kernel = stride and no padding (the module docstring's formula)."""
    batch, _, height, width = (int(d) for d in data.shape)
    blocks, in_channels, stride, _, lanes = (int(d) for d in packed.shape)
    i = te.reduce_axis((0, in_channels), "i")
    kh = te.reduce_axis((0, 1), "kh")  # the packed conv's tap loops, of one tap
    kw = te.reduce_axis((0, 1), "kw")
    return te.compute(
        (batch, blocks * lanes, height * stride, width * stride),
        lambda n, o, y, x: te.sum(
            data[n, i, y // stride + kh, x // stride + kw]
            * packed[o // lanes, i, y % stride + kh, x % stride + kw, o % lanes],
            axis=[i, kh, kw],
        ),
        name=PACKED_CONV,
    )


def conv_spec(
    call: relax.Call, target: Target, kernel_layout: str = "OIHW", *, grouped: bool = False
) -> CPUSpec | None:
    """The vector shape for this conv2d (or transposed conv2d, whose weight is IOHW), or None
    when it stays TVM's: a constant 4-D weight, one group (any count if `grouped`), NCHW
    activations, float operands."""
    attrs = call.attrs
    data, weight = call.args
    if not isinstance(weight, tvm.ir.expr.Constant) or (int(attrs.groups) != 1 and not grouped):
        return None
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", kernel_layout, "NCHW"):
        return None
    if len(weight.value.shape) != 4:
        return None
    return float_spec(target, attrs.out_dtype, data, weight)


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The packed conv for this conv2d, or None (TVM's own legalization) where it does not apply."""
    target = Target.current(allow_none=True)
    spec = conv_spec(call, target) if target is not None else None
    if spec is None:
        return None
    weight = call.args[1].value.numpy()
    lanes = vector_lanes(spec, weight.shape[0])
    if lanes is None:
        return None
    attrs = call.attrs
    packed = relax.const(pack_weight(weight, lanes))
    return bb.call_te(
        _packed_conv2d,
        call.args[0],
        packed,
        attrs.strides,
        attrs.padding,
        attrs.dilation,
        primfunc_name_hint="conv2d_packed",
    )


def legalize_conv2d_transpose(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """A transposed conv2d whose kernel equals its stride, without padding, as the packed conv's
    reduction over input channels; None (TVM's own legalization) for any other."""
    target = Target.current(allow_none=True)
    spec = conv_spec(call, target, "IOHW") if target is not None else None
    if spec is None:
        return None
    attrs = call.attrs
    kernel = call.args[1].value.numpy()
    if kernel.shape[2] != kernel.shape[3]:
        return None
    stride = kernel.shape[2]
    if [int(s) for s in attrs.strides] != [stride, stride] or any(int(d) != 1 for d in attrs.dilation):
        return None
    if any(int(p) for p in attrs.padding) or any(int(p) for p in attrs.output_padding):
        return None
    lanes = vector_lanes(spec, kernel.shape[1])
    if lanes is None:
        return None
    packed = relax.const(pack_weight(np.ascontiguousarray(kernel.transpose(1, 0, 2, 3)), lanes))
    return bb.call_te(
        _upsampling_conv2d_transpose, call.args[0], packed, primfunc_name_hint="conv2d_transpose_packed"
    )


# The most bands of rows a packed conv's parallel loop cuts first (`row_bands`): a band per thread
# for 1, 2 or 4 threads.
ROW_BANDS = 4


def row_bands(height: int) -> int:
    """How many bands of rows a map of `height` rows splits into as the outermost parallel loop:
    the largest divisor of `ROW_BANDS` that divides `height` (1: no bands)."""
    return math.gcd(height, ROW_BANDS)


# Input channels from which a 1×1 conv's whole row takes two vectors (`conv_tile`).
_LONG_REDUCTION = 128


def conv_tile(
    out_width: int,
    vector_blocks: int,
    spec: CPUSpec,
    kernel_width: int = 1,
    *,
    whole_rows: bool = False,
    reduction: int = 0,
) -> tuple[int, int]:
    """(rows, vectors) of a packed conv's accumulator tile: `rows` output columns × `vectors`
    vectors of output channels, at most (registers - 4) / 2 accumulators (14 with 32 registers;
    the rest hold the weight vectors and broadcasts), or up to 8 where the registers hold them
    (`_fits`). Rows divide the output width, vectors the channel blocks: no tail loops.

    - A 1×1 conv whose row fills more than half the accumulators (8 to 14 columns with 32
      registers) takes the whole row and two vectors when its `reduction` (input channels) is at
      least `_LONG_REDUCTION`, up to registers - 4 accumulators (28 on AVX-512: all but the two
      weight vectors and two spare); else, with `whole_rows` (`PackedConv`'s convs with more
      weights than input, whose channel blocks run outermost), the whole row and one vector.
    - A kernel 2 to 4 wide (3×3): rows first, then the vectors they leave room for; adjacent
      columns share input taps, so wide rows need fewer loads than `per_load` counts.
    - Any other (1×1, or 5 or more wide): each step loads `vectors` weight vectors and
      broadcasts `rows` inputs for rows × vectors multiply-adds; the tile with the most
      multiply-adds per load wins, then the one with the most accumulators (`per_load`).
    """
    budget = max(1, (spec.registers - 4) // 2)
    if kernel_width == 1 and budget // 2 < out_width <= budget:
        if reduction >= _LONG_REDUCTION and 2 * out_width <= spec.registers - 4 and vector_blocks % 2 == 0:
            return out_width, 2
        if whole_rows:
            return out_width, 1
    most = max(budget, _FMAS_IN_FLIGHT)
    if 1 < kernel_width < 5:
        rows = divisor(out_width, most)
        vectors = max(
            k for k in (1, 2, 4) if k == 1 or (vector_blocks % k == 0 and _fits(rows, k, most, spec))
        )
        return rows, vectors
    options = [
        (*per_load(rows, vectors), rows, vectors)
        for rows in range(1, min(out_width, most) + 1)
        if out_width % rows == 0
        for vectors in (1, 2, 4)
        if vector_blocks % vectors == 0 and _fits(rows, vectors, most, spec)
    ]
    return max(options)[2:]


# Independent multiply-adds a core needs in flight to keep its FMA units busy (two units of
# four cycles' latency on Zen 3 and Haswell and later).
_FMAS_IN_FLIGHT = 8


def _fits(rows: int, vectors: int, most: int, spec: CPUSpec) -> bool:
    """Whether a tile of rows × vectors accumulators fits: at most `most` (the budget, or
    `_FMAS_IN_FLIGHT` where that is more), with the registers also holding the tile's `vectors`
    weight vectors, a broadcast and a spare (AVX2's 16: 2 × 4 or 8 × 1, where the budget of 6
    left 1×1 tiles at 2 × 2 and 3×3 tiles at 4 × 1)."""
    return rows * vectors <= most and rows * vectors + vectors + 2 <= spec.registers


def weight_chunk(channels: int, channel_bytes: int, spec: CPUSpec) -> int | None:
    """How many input channels a 1×1 packed conv whose channel blocks run outermost reduces over
    before it moves to the next row, or None for all of them.

    A tile's weights are `channel_bytes` per input channel (its vectors of output channels). The
    tiles of one channel block, one per row of the map, read the same weights: when they fit in
    the L1 data cache, they stay there from one row to the next. When they do not (a 7² map with
    hundreds of input channels), the reduction is cut into chunks of channels whose weights take
    at most a quarter of L1, and each chunk runs over every row before the next: the rows'
    accumulators go to memory and back between chunks, and the weights come from L1. Chunks
    under 16 channels are not worth the accumulators' round trips (None)."""
    return reduction_chunk(channels, channel_bytes, spec.l1_bytes // 4, spec)


class PackedConv(Rule):
    """The packed conv2d (`legalize_conv2d`, `legalize_conv2d_transpose`) with its pad and its
    epilogue.

    Loops n, o, y, x, i, kh, kw are tiled as
        parallel(n · o/(vectors·V) · y · x/rows) · i · kh · kw · unroll(rows) · unroll(vectors) · vector(V)
    so the rows × vectors accumulators (`conv_tile`) stay in registers for the whole reduction:
    each step loads `vectors` weight vectors and broadcasts `rows` input scalars (any stride: no
    gathers). A 1×1 conv whose tile's weights would not stay in L1 from one row to the next
    (`weight_chunk`) runs the reduction in chunks of input channels instead, each over all the
    rows. The accumulator tile is laid out channels-last, so a vector of it is contiguous; the
    epilogue (bias, activation, residual add) writes it back to NCHW per tile, while it is still
    hot, computing on those channel vectors and storing lane by lane (`_vectorize_channels`).

    When the input is larger than the weights, the parallel loop cuts the rows into `row_bands`
    bands first, and so does the pad's copy when the bands divide its rows: each thread takes a
    band of rows of every output channel rather than every row of some channels, so it reads the
    rows that it wrote in the kernel before (in its core's cache) and writes those that it reads
    in the next. With more weights than input, each band would read all the weights again, so
    those convs keep the channel blocks outermost.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        index = named_reduction(blocks, PACKED_CONV)
        if index is None:
            return None
        blocks, index = inline_side_inputs(sch, blocks, index)
        main = blocks[index]
        if main.dom_kind() != "SSSSRRR":
            return None
        consumers = inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        extents = main.dom()
        block = sch.get(main.block_rv)
        output = block.writes[0].source
        weight = next(r.source for r in block.reads if len(r.region) == 5)
        data = next(r.source for r in block.reads if len(r.region) == 4 and not r.source.same_as(output))
        lanes = int(weight.shape[-1])
        n, o, y, x, i, kh, kw = sch.get_loops(main.block_rv)
        channel_blocks = extents[1] // lanes
        blocks_o, lane = sch.split(o, [None, lanes])
        smaller = math.prod(int(d) for d in weight.shape) < math.prod(int(d) for d in data.shape)
        width, kernel_width = extents[3], extents[6]
        rows, vectors = conv_tile(
            width, channel_blocks, spec, kernel_width, whole_rows=not smaller, reduction=extents[4]
        )
        outer_o, vector = sch.split(blocks_o, tile_factors(sch, blocks_o, channel_blocks, vectors))
        outer_x, row = sch.split(x, tile_factors(sch, x, width, rows))
        bands = row_bands(extents[2]) if smaller else 1
        band, y = sch.split(y, [bands, None])
        channel_bytes = vectors * lanes * weight.dtype.bits // 8
        one_by_one = kernel_width == 1 and extents[5] == 1
        chunk = None if smaller or not one_by_one else weight_chunk(extents[4], channel_bytes, spec)
        if chunk is None:
            outer, inner = [band, n, outer_o, y, outer_x], [i]
        else:
            chunks, i = sch.split(i, tile_factors(sch, i, extents[4], chunk))
            outer, inner = [band, n, outer_o], [chunks, y, outer_x, i]
        sch.reorder(*outer, *inner, kh, kw, row, vector, lane)
        tile = sch.fuse(*outer)
        if int(sch.get(tile).extent) > 1:
            sch.parallel(tile)

        epilogue = epilogue_block(sch, main, consumers)
        sch.transform_layout(main.block_rv, ("write", 0), lambda n, c, h, w: (n, h, w, c))
        sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
        _vectorize_channels(sch, epilogue, lanes, output.shape)
        sch.vectorize(lane)
        sch.unroll(vector)
        sch.unroll(row)
        init = sch.decompose_reduction(main.block_rv, inner[0])
        sch.vectorize(sch.get_loops(init)[-1])
        sch.annotate(i, "pragma_auto_unroll_max_step", 128)
        sch.annotate(i, "pragma_unroll_explicit", 1)
        for block in blocks[:index]:
            vectorize_flat(sch, block.block_rv, spec, bands)
        return sch


def _vectorize_channels(sch: s_tir.Schedule, epilogue: Any, lanes: int, shape: Any) -> None:
    """The epilogue's loops n, c, y, x under the tile as n, c/lanes, y, x, vector(lanes): its
    arithmetic runs on the accumulator tile's channel vectors (contiguous, channels-last), and
    only its stores into NCHW go lane by lane. Only where it writes the conv's `shape`: one that
    broadcasts the conv over a larger plane (a squeeze-excite's scale of a feature map) would
    read and write that plane lane by lane too (2× slower in MobileNetV3's)."""
    loops = sch.get_loops(epilogue)
    written = sch.get(epilogue).writes[0].source.shape
    if len(loops) < 4 or [int(d) for d in written] != [int(d) for d in shape]:
        return
    channels, y, x = loops[-3:]
    if int(sch.get(channels).extent) % lanes:
        return
    outer, lane = sch.split(channels, [None, lanes])
    sch.reorder(outer, y, x, lane)
    sch.vectorize(lane)
