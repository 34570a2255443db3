"""A 1×1 conv at stride 1 as a matrix product over each plane's pixels, and `PointwiseConv`, its schedule.

A 1×1 conv at stride 1 without padding, over planes that `pointwise_tile` can cut into whole
vectors, is

    Y[n, o, y, x] = Σ_i X[n, i, y, x] · T[i, o]          (T = W[:, :, 0, 0] transposed once)

which `PointwiseConv` vectorizes along the pixels (x): its loads and its epilogue's stores are
contiguous in NCHW, where the packed conv's channel vectors (`passc.schedules.packed_conv`) would
need a transpose per output. Its legalization is tried before the packed conv's and takes the
convs that one would (`conv_spec`, output channels a multiple of a vector or half of one).
"""

from __future__ import annotations

import numpy as np
from tvm import relax, s_tir, te
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
from passc.schedules.cpu import CPUSpec
from passc.schedules.packed_conv import conv_spec

__all__ = ["POINTWISE_CONV", "PointwiseConv", "legalize_pointwise_conv2d", "pointwise_tile"]

# The reduction block of the pointwise conv, which `PointwiseConv` takes.
POINTWISE_CONV = "conv2d_nchw_pointwise"


def _pointwise_conv2d(data: te.Tensor, transposed: te.Tensor) -> te.Tensor:
    """A 1×1 conv at stride 1 without padding, with its weight transposed to T[I, O]:
    Y[n, o, y, x] = Σ_i X[n, i, y, x] · T[i, o], a matrix product over the pixels of each plane."""
    batch, _, height, width = (int(d) for d in data.shape)
    in_channels, out_channels = (int(d) for d in transposed.shape)
    i = te.reduce_axis((0, in_channels), "i")
    return te.compute(
        (batch, out_channels, height, width),
        lambda n, o, y, x: te.sum(data[n, i, y, x] * transposed[i, o], axis=[i]),
        name=POINTWISE_CONV,
    )


def _is_pointwise(call: relax.Call, spec: CPUSpec) -> bool:
    """A 1×1 conv at stride 1 without padding whose plane `pointwise_tile` can tile: the
    `PointwiseConv` schedule's case (vectors along the plane, stores straight into NCHW)."""
    attrs = call.attrs
    out_channels, _, kernel_h, kernel_w = (int(d) for d in call.args[1].value.shape)
    _, _, height, width = (int(d) for d in call.args[0].ty.shape)
    return (
        (kernel_h, kernel_w) == (1, 1)
        and all(int(s) == 1 for s in attrs.strides)
        and all(int(p) == 0 for p in attrs.padding)
        and pointwise_tile(height, width, out_channels, spec) is not None
    )


def legalize_pointwise_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The pointwise conv for this conv2d, or None where it does not apply (the packed conv's
    conditions, and a 1×1 kernel at stride 1 without padding over a plane `pointwise_tile` tiles)."""
    target = Target.current(allow_none=True)
    spec = conv_spec(call, target) if target is not None else None
    if spec is None:
        return None
    weight = call.args[1].value.numpy()
    if vector_lanes(spec, weight.shape[0]) is None or not _is_pointwise(call, spec):
        return None
    transposed = relax.const(np.ascontiguousarray(weight[:, :, 0, 0].T))
    return bb.call_te(_pointwise_conv2d, call.args[0], transposed, primfunc_name_hint="conv2d_pointwise")


def pointwise_tile(height: int, width: int, out_channels: int, spec: CPUSpec) -> tuple[int, int, int] | None:
    """(lanes, vectors, rows) of a pointwise conv's accumulator tile: `vectors` whole vectors of
    `lanes` pixels of one plane × `rows` output channels, or None when no whole number of vectors
    divides the plane (the packed conv takes it: on AVX2's 14×14 planes, tiles of half vectors ran
    the 1×1 convs of a PoolFormer 1.5× slower than the packed conv's channel vectors).

    A tile spans a divisor of an image row or a whole number of rows (56 columns on AVX-512: two
    rows, 7 vectors), so its pixels are a box of the plane that the epilogue can take. Its
    accumulators, plus the `vectors` input vectors each step loads, fill at most `registers - 1`
    registers (the weight is a broadcast operand of the multiply-add). A tile of two or more
    vectors wins over a one-vector tile (rows of broadcasts over 8 pixels ran 1.5–2× slower than
    7 vectors × 1 row on AVX2's 56-wide planes); then the tile with the most multiply-adds per
    load, rows · vectors / (rows + vectors), wins, then the one with the most accumulators
    (`per_load`): many rows of one vector would saturate the load ports.
    """
    lanes = spec.lanes
    options = []
    for vectors in range(1, 9):
        pixels = lanes * vectors
        if (height * width) % pixels or (width % pixels and pixels % width):
            continue
        most_rows = (spec.registers - 1 - vectors) // vectors
        if most_rows < 1:  # no room for one row of accumulators (AVX2's 16 registers)
            continue
        rows = divisor(out_channels, most_rows)
        options.append((vectors > 1, *per_load(rows, vectors), lanes, vectors, rows))
    return max(options)[3:] if options else None


# An expanding pointwise conv whose output is larger than this writes a few output planes at a
# time; convs whose input is the larger re-read it less pixel-major.
_STREAMED_OUTPUT = 1 << 20


class PointwiseConv(Rule):
    """The pointwise conv (`legalize_pointwise_conv2d`) with its epilogue: a matrix product of
    the weight T[I, O] and the input's pixels X[i, y·W + x], vectorized along the pixels, so loads
    and the epilogue's stores are contiguous in NCHW (`PackedConv`'s channels-last tile would
    transpose in its epilogue, which costs more than a short 1×1 reduction). Loops n, o, (y, x)
    are tiled as
        parallel(n · pixels/(vectors·lanes) · o/rows) · i · unroll(rows) · unroll(vectors) · vector(lanes)
    with `pointwise_tile`'s factors: each step of i loads `vectors` input vectors and broadcasts
    `rows` weights, one fused multiply-add per accumulator. An expanding conv with a large output
    runs o/rows outside the pixels instead (`_STREAMED_OUTPUT`).

    Every output channel's tile reads the same pixels of every input channel. When those would
    not stay in L1, the reduction runs in chunks of input channels whose pixels fill at most L1,
    each for every output channel before the next (`parallel(n · pixels/(vectors·lanes) · 2) · i/chunk
    · o/(2·rows) · chunk · ...`: halves of the output channels in parallel, so that two threads
    balance over a plane of 7 tiles).
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        index = named_reduction(blocks, POINTWISE_CONV)
        if index is None:
            return None
        blocks, index = inline_side_inputs(sch, blocks, index)
        main = blocks[index]
        extents = main.dom()
        _, out_channels, height, width, _ = extents
        tile = pointwise_tile(height, width, out_channels, spec)
        if main.dom_kind() != "SSSSR" or tile is None:
            return None
        lanes, vectors, rows = tile
        consumers = inline_injective(sch, blocks[index + 1 :])
        if len(consumers) > 1:
            return None
        n, o, y, x, i = sch.get_loops(main.block_rv)
        pixels = height * width
        outer_p, vector, lane = sch.split(sch.fuse(y, x), [pixels // (vectors * lanes), vectors, lanes])
        outer_o, row = sch.split(o, tile_factors(sch, o, out_channels, rows))
        in_channels = extents[4]
        element_bytes = sch.get(main.block_rv).writes[0].source.dtype.bits // 8
        streamed = out_channels > in_channels and out_channels * pixels * element_bytes > _STREAMED_OUTPUT
        tile_bytes = vectors * lanes * element_bytes  # of one input channel
        chunk = None if streamed else reduction_chunk(in_channels, tile_bytes, spec.l1_bytes, spec)
        if streamed:
            outer, inner = [n, outer_o, outer_p], [i]  # a few output planes at a time, in order
        elif chunk is None:
            outer, inner = [n, outer_p, outer_o], [i]  # a few pixels at a time, for every channel
        else:
            # A few pixels of a chunk of input channels at a time, for every output channel (half
            # of them per parallel iteration, so that threads balance over few pixel tiles).
            chunks, i = sch.split(i, tile_factors(sch, i, in_channels, chunk))
            half, outer_o = sch.split(outer_o, [2 if out_channels // rows % 2 == 0 else 1, None])
            outer, inner = [n, outer_p, half], [chunks, outer_o, i]
        sch.reorder(*outer, *inner, row, vector, lane)
        tile_loop = sch.fuse(*outer)
        if int(sch.get(tile_loop).extent) > 1:
            sch.parallel(tile_loop)

        epilogue = epilogue_block(sch, main, consumers)
        sch.reverse_compute_at(epilogue, tile_loop, preserve_unit_loops=True)
        *_, epilogue_y, epilogue_x = sch.get_loops(epilogue)
        _, epilogue_lane = sch.split(sch.fuse(epilogue_y, epilogue_x), [None, lanes])
        sch.vectorize(epilogue_lane)
        sch.vectorize(lane)
        sch.unroll(vector)
        sch.unroll(row)
        init = sch.decompose_reduction(main.block_rv, inner[0])
        sch.vectorize(sch.get_loops(init)[-1])
        for block in blocks[:index]:
            vectorize_flat(sch, block.block_rv, spec)
        return sch
