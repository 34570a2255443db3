"""One reduction with its pads and epilogue, as TVM legalizes it: conv2d of any group count, matmul,
batch matmul, pooling, mean. The fallback for contractions that no packed legalization took."""

from __future__ import annotations

import math
from typing import Any

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.tirx.analysis import undefined_vars

from passc.schedules.analysis import (
    PARALLEL_MIN,
    REFUSALS,
    divisor,
    epilogue_block,
    inline_injective,
    inline_side_inputs,
    root_blocks,
    tile_factors,
    vectorize_flat,
)
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec

__all__ = ["Contraction", "register_tile"]


def register_tile(
    extents: list[int], spec: CPUSpec, *, rows: bool = True, reuse: list[bool] | None = None
) -> list[int]:
    """Tile factors for a reduction's spatial loops: the accumulators a tile keeps in registers.

    The innermost loop (the output's contiguous axis) gets one vector: `lanes` if it divides the
    extent, else its largest divisor that fills half a vector (14 of 56 on AVX-512) or up to two
    vectors (7 of 7 on SSE); four vectors when no outer loop can add rows (a matrix-vector product
    needs independent accumulators to hide FMA latency). Then up to two outer loops, the one
    allowing the most rows first (often the output channels: 7×7 feature maps divide badly), share
    the register budget of `registers - 4` (kept for the loaded vector and broadcasts), at most 16
    rows per loop. Factors divide their extents,
    so no tile needs a tail loop. Rows only come from loops in `reuse` (some operand does not
    depend on them, so its load serves every row: a conv's output channels or rows, but not a
    depthwise conv's channels); `rows=False` (pooling: nothing to reuse) keeps one vector.
    """
    reuse = reuse or [True] * len(extents)
    budget = max(1, spec.registers - 4)
    factors = [1] * len(extents)
    column = extents[-1]
    factors[-1] = divisor(column, spec.lanes)
    if factors[-1] < spec.lanes // 2:
        factors[-1] = divisor(column, 2 * spec.lanes)
    vectors = -(-factors[-1] // spec.lanes)  # a column of 7 on SSE takes two registers a row
    count = 1
    for _ in range(2 if rows else 0):
        left = min(16, budget // (count * vectors))
        options = [
            (divisor(e, left), -i)
            for i, e in enumerate(extents[:-1])
            if factors[i] == 1 and e > 1 and reuse[i]
        ]
        best = max(options, default=(1, 0))
        if best[0] <= 1:
            break
        factors[-best[1]] = best[0]
        count *= best[0]
    if rows and count == 1 and column % spec.lanes == 0:
        factors[-1] = spec.lanes * divisor(column // spec.lanes, 4)
    return factors


class Contraction(Rule):
    """One reduction block (conv2d of any group count, matmul, batch matmul, pooling, mean) with
    injective producers (pads) and consumers (bias, residual add, activations).

    The reduction's spatial loops S and reduction loops R are tiled as
        parallel(fuse(S outer)) · R · unroll(rows) · vector(column)
    with the factors of `register_tile`: each step of R loads one vector of the input, broadcasts
    one scalar per row (a weight, for a conv with output-channel rows) and does one fused
    multiply-add per accumulator, the accumulator tile staying in registers for the whole
    reduction; small inner reduction loops (3×3 taps) are unrolled.
    The consumers are inlined into one epilogue, computed per tile while it is still hot.
    Producers stay separate stages (a pad is cheap next to the conv it feeds).
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        reductions = [i for i, b in enumerate(blocks) if not b.is_injective()]
        if len(reductions) != 1:
            return None
        index = reductions[0]
        main = blocks[index]
        kinds = main.dom_kind()
        if "S" not in kinds or kinds.index("R") < kinds.rindex("S"):
            return None  # spatial loops first, then reductions: the form legalize emits
        operands = {region.source.name for region in sch.get(main.block_rv).reads}
        contraction = len(operands - {region.source.name for region in sch.get(main.block_rv).writes}) >= 2
        if contraction and _pad_einsum(sch, main, spec):
            blocks = root_blocks(sch)
            if blocks is None:
                return None
            index = next(i for i, b in enumerate(blocks) if not b.is_injective())
        blocks, index = inline_side_inputs(sch, blocks, index)
        main = blocks[index]
        consumers = inline_injective(sch, blocks[index + 1 :])
        producers = blocks[:index]
        if len(consumers) > 1:
            return None

        kinds, extents = main.dom_kind(), main.dom()
        loops = sch.get_loops(main.block_rv)
        spatial = [(loop, e) for loop, k, e in zip(loops, kinds, extents, strict=True) if k == "S"]
        reduce_loops = [loop for loop, k in zip(loops, kinds, strict=True) if k == "R"]
        factors = register_tile(
            [e for _, e in spatial], spec, rows=contraction, reuse=_reuse(sch, main.block_rv)
        )
        outer: list[Any] = []
        inner: list[Any] = []
        for (loop, extent), factor in zip(spatial, factors, strict=True):
            if factor == 1:
                outer.append(loop)
            elif factor == extent:
                inner.append(loop)
            else:
                o, n = sch.split(loop, tile_factors(sch, loop, extent, factor))
                outer.append(o)
                inner.append(n)
        if not outer:
            outer.append(sch.add_unit_loop(inner[0]))
        sch.reorder(*outer, *reduce_loops, *inner)
        tile = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        work = math.prod(extents[: kinds.index("R")])
        if work >= PARALLEL_MIN // 4 and int(sch.get(tile).extent) > 1:
            sch.parallel(tile)

        epilogue = epilogue_block(sch, main, consumers)
        sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
        epilogue_loops = sch.get_loops(epilogue)[1:]
        if epilogue_loops and int(sch.get(epilogue_loops[-1]).extent) > 1:
            sch.vectorize(epilogue_loops[-1])

        if factors[-1] > 1:
            sch.vectorize(inner[-1])
        for loop in inner[:-1] if factors[-1] > 1 else inner:
            sch.unroll(loop)
        init = sch.decompose_reduction(main.block_rv, reduce_loops[0])
        init_loops = sch.get_loops(init)
        if len(init_loops) > 1 and factors[-1] > 1:
            sch.vectorize(init_loops[-1])
        # Unrolls the filter taps (3×3 × rows of a tile), not the channel loop around them.
        sch.annotate(reduce_loops[0], "pragma_auto_unroll_max_step", 128)
        sch.annotate(reduce_loops[0], "pragma_unroll_explicit", 1)

        for block in producers:
            if _is_copy(sch, block.block_rv):
                sch.compute_inline(block.block_rv)  # a zero-width pad: a whole copy of the input, for nothing
            else:
                vectorize_flat(sch, block.block_rv, spec)
        return sch


def _reuse(sch: s_tir.Schedule, block: Any) -> list[bool]:
    """Per block iterator: whether some operand the block reads (not its own output) is indexed
    without it, so that one load of that operand serves every value of the iterator."""
    stmt = sch.get(block)
    written = {region.source.name for region in stmt.writes}
    operands = []
    for region in stmt.reads:
        if region.source.name not in written:
            operands.append([v for r in region.region for v in undefined_vars(r.min)])
    return [any(not any(v.same_as(it.var) for v in used) for used in operands) for it in stmt.iter_vars]


def _pad_einsum(sch: s_tir.Schedule, main: SBlockInfo, spec: CPUSpec) -> bool:
    """Pads a matmul's last two spatial extents that divide badly (197 tokens of a ViT) to
    multiples of the vector and of 8 rows, with padding blocks around it, so the tile needs no
    tail. Only plain-index (einsum) blocks qualify; a conv's `y + ry` refuses, and is left alone."""
    kinds, extents = main.dom_kind(), main.dom()
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    padding = [1] * len(kinds)
    for axis, unit in zip(spatial[-2:], (8, spec.lanes)[-len(spatial[-2:]) :], strict=True):
        extent = extents[axis]
        if extent > unit and divisor(extent, unit) < unit // 2:
            padding[axis] = unit
    if padding == [1] * len(kinds):
        return False
    try:
        sch.pad_einsum(main.block_rv, padding)
    except REFUSALS:
        return False
    return True


def _is_copy(sch: s_tir.Schedule, block: Any) -> bool:
    """Whether a block reads one buffer of its output's shape (a pad of zero width is one)."""
    stmt = sch.get(block)
    shapes = {tuple(int(d) for d in region.source.shape) for region in stmt.reads}
    return len(stmt.reads) == 1 and shapes == {tuple(int(d) for d in stmt.writes[0].source.shape)}
