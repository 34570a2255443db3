"""A 1×1 conv at stride 1 as a matrix product over each plane's pixels, and `PointwiseConv`, its schedule.

A 1×1 conv at stride 1 without padding, over planes that `pointwise_tile` can cut into whole
vectors, is

    Y[n, o, y, x] = Σ_i X[n, i, y, x] · W[o, i]

which `PointwiseConv` vectorizes along the pixels (x): its loads and its epilogue's stores are
contiguous in NCHW, where the packed conv's channel vectors (`passc.schedules.packed_conv`) would
need a transpose per output. It is legalized as MLAS's SGEMM packs its panels:

    P[n, t, i, l] = X[n, i, (t·p + l) // w, (t·p + l) % w]       the input, p pixels a tile
    Q[u, i, r]    = W[u·rows + r, i]                               the weight, once, a constant
    Z[n, t, o, l] = Σ_i P[n, t, i, l] · Q[o // rows, i, o % rows]
    Y[n, o, y, x] = Z[n, f // p, o, f % p]                         (f = y·w + x)

so each step of the reduction reads the next p pixels of P and the next `rows` weights of Q
(not one cache line per input channel, a plane apart, which on planes of 48 or 64 columns share
a few L1 sets), and a tile of Z is indexed by its unrolled loops alone, so its accumulators stay
in registers. Its legalization is tried before the packed conv's and takes the convs that
one would (`conv_spec`, output channels a multiple of a vector or half of one).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax, s_tir, te
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.target import Target

from passc.schedules.analysis import (
    divisor,
    inline_injective,
    inline_prologues,
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

# The reduction block of the pointwise conv, which `PointwiseConv` takes, and its input's packing.
POINTWISE_CONV = "conv2d_nchw_pointwise"
POINTWISE_PACK = "conv2d_nchw_pointwise_pack"
POINTWISE_UNPACK = "conv2d_nchw_pointwise_unpack"


def _pointwise_conv2d(data: te.Tensor, weight: te.Tensor, pixels: int) -> te.Tensor:
    """A 1×1 conv at stride 1 without padding, with its weight packed as Q[O/rows, I, rows]:
    the input packed into tiles of `pixels` (P), the product Z[n, t, o, l] = Σ_i P[n, t, i, l] ·
    Q[o // rows, i, o % rows] over each tile, and Z unpacked into NCHW."""
    batch, in_channels, height, width = (int(d) for d in data.shape)
    tiles, _, rows = (int(d) for d in weight.shape)
    packed = te.compute(
        (batch, height * width // pixels, in_channels, pixels),
        lambda n, t, i, p: data[n, i, (t * pixels + p) // width, (t * pixels + p) % width],
        name=POINTWISE_PACK,
    )
    i = te.reduce_axis((0, in_channels), "i")
    product = te.compute(
        (batch, height * width // pixels, tiles * rows, pixels),
        lambda n, t, o, p: te.sum(packed[n, t, i, p] * weight[o // rows, i, o % rows], axis=[i]),
        name=POINTWISE_CONV,
    )
    return te.compute(
        (batch, tiles * rows, height, width),
        lambda n, o, y, x: product[n, (y * width + x) // pixels, o, (y * width + x) % pixels],
        name=POINTWISE_UNPACK,
    )


def _pointwise_conv_tile(call: relax.Call, spec: CPUSpec) -> tuple[int, int, int] | None:
    """The `pointwise_tile` of a 1×1 conv at stride 1 without padding, or None for any other conv
    or a plane it cannot tile: the `PointwiseConv` schedule's case (vectors along the plane,
    stores straight into NCHW)."""
    attrs = call.attrs
    out_channels, _, kernel_h, kernel_w = (int(d) for d in call.args[1].value.shape)
    _, _, height, width = (int(d) for d in call.args[0].ty.shape)
    pointwise = (
        (kernel_h, kernel_w) == (1, 1)
        and all(int(s) == 1 for s in attrs.strides)
        and all(int(p) == 0 for p in attrs.padding)
    )
    return pointwise_tile(height, width, out_channels, spec) if pointwise else None


def legalize_pointwise_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """The pointwise conv for this conv2d, or None where it does not apply (the packed conv's
    conditions, and a 1×1 kernel at stride 1 without padding over a plane `pointwise_tile` tiles)."""
    target = Target.current(allow_none=True)
    spec = conv_spec(call, target) if target is not None else None
    if spec is None:
        return None
    weight = call.args[1].value.numpy()
    tile = _pointwise_conv_tile(call, spec)
    if vector_lanes(spec, weight.shape[0]) is None or tile is None:
        return None
    lanes, vectors, rows = tile
    out_channels, in_channels = weight.shape[:2]
    packed = weight[:, :, 0, 0].reshape(out_channels // rows, rows, in_channels).transpose(0, 2, 1)
    return bb.call_te(
        _pointwise_conv2d,
        call.args[0],
        relax.const(np.ascontiguousarray(packed)),
        lanes * vectors,
        primfunc_name_hint="conv2d_pointwise",
    )


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


class PointwiseConv(Rule):
    """The pointwise conv (`legalize_pointwise_conv2d`) with its epilogue: a matrix product of
    the packed weight Q and the packed input P, vectorized along the pixels, so loads and the
    epilogue's stores are contiguous in NCHW (`PackedConv`'s channels-last tile would transpose in
    its epilogue, which costs more than a short 1×1 reduction). The product's loops n, t, o, l are
    tiled as

        parallel(n · pixels/(vectors·lanes) · 2) · o/(2·rows) · i
            · unroll(rows) · unroll(vectors) · vector(lanes)

    with `pointwise_tile`'s factors: each step of i loads `vectors` input vectors and broadcasts
    `rows` weights, one fused multiply-add per accumulator. Each parallel iteration (a tile of
    pixels, for half of the output channels, so that two threads balance over few tiles) packs
    its pixels of every input channel first (P, from the input and any prologue inlined into
    it, once per input element and half), and runs the epilogue after each tile of `rows`
    output channels.

    When a tile's pixels of every input channel would not stay in L1, the reduction runs in
    chunks of input channels that fill at most L1, each for every output channel before the
    next (`... · i/chunk · o/(2·rows) · chunk · ...`), and the epilogue after the last chunk.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        index = named_reduction(blocks, POINTWISE_CONV)
        if index is None:
            return None
        blocks, index = inline_prologues(sch, blocks, index)
        blocks, index = inline_side_inputs(sch, blocks, index)
        main = blocks[index]
        pack = next((b for b in blocks[:index] if b.name == POINTWISE_PACK), None)
        consumers = inline_injective(sch, blocks[index + 1 :])
        if pack is None or main.dom_kind() != "SSSSR" or len(consumers) != 1:
            return None
        _, _, out_channels, pixels, in_channels = main.dom()
        height, width = (int(d) for d in sch.get(consumers[0].block_rv).writes[0].source.shape[2:])
        tile = pointwise_tile(height, width, out_channels, spec)
        if tile is None or pixels != tile[0] * tile[1] or _weight_rows(sch, main) != tile[2]:
            return None  # legalized for another target's tile
        lanes, vectors, rows = tile
        # The epilogue iterates as the product does (n, t, o, l), so it can follow each tile.
        epilogue = consumers[0].block_rv
        sch.transform_block_layout(
            epilogue, lambda n, o, y, x: (n, (y * width + x) // pixels, o, (y * width + x) % pixels)
        )
        n, t, o, p, i = sch.get_loops(main.block_rv)
        vector, lane = sch.split(p, [vectors, lanes])
        outer_o, row = sch.split(o, tile_factors(sch, o, out_channels, rows))
        element_bytes = sch.get(main.block_rv).writes[0].source.dtype.bits // 8
        chunk = reduction_chunk(in_channels, pixels * element_bytes, spec.l1_bytes, spec)
        half, outer_o = sch.split(outer_o, [2 if out_channels // rows % 2 == 0 else 1, None])
        if chunk is None:
            outer, inner = [n, t, half], [outer_o, i]
        else:
            chunks, i = sch.split(i, tile_factors(sch, i, in_channels, chunk))
            outer, inner = [n, t, half], [chunks, outer_o, i]
        sch.reorder(*outer, *inner, row, vector, lane)
        tile_loop = sch.fuse(*outer)
        if int(sch.get(tile_loop).extent) > 1:
            sch.parallel(tile_loop)

        # The accumulators live in registers: the product is a local buffer of one tile (of
        # rows · pixels, or of every output channel's when the reduction runs in chunks).
        after = outer_o if inner[0] == outer_o else tile_loop  # each tile of rows, or the last chunk
        sch.reverse_compute_at(epilogue, after, preserve_unit_loops=True)
        sch.set_scope(main.block_rv, 0, "local")
        _, epilogue_lane = sch.split(sch.get_loops(epilogue)[-1], [None, lanes])
        sch.vectorize(epilogue_lane)
        sch.vectorize(lane)
        sch.unroll(vector)
        sch.unroll(row)
        init = sch.decompose_reduction(main.block_rv, inner[0] if chunk is not None else i)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.compute_at(pack.block_rv, tile_loop, preserve_unit_loops=True)
        row_lanes = math.gcd(width, lanes)  # a vector within a row of the input (pixels: whole vectors)
        sch.vectorize(sch.split(sch.get_loops(pack.block_rv)[-1], [None, row_lanes])[1])
        for block in blocks[:index]:
            if block.name != POINTWISE_PACK:
                vectorize_flat(sch, block.block_rv, spec)
        return sch


def _weight_rows(sch: s_tir.Schedule, main: SBlockInfo) -> int | None:
    """The `rows` of the packed weight Q[O/rows, I, rows] that the pointwise conv reads."""
    shapes = [region.source.shape for region in sch.get(main.block_rv).reads]
    return next((int(shape[-1]) for shape in shapes if len(shape) == 3), None)
