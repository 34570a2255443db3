"""Depthwise convs and pools with a wide output, as TVM legalizes them (`group_conv2d_nchw`,
`pool_max`, `pool_sum`), and `WideDepthwise`, their schedule."""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo

from passc.schedules.analysis import (
    divisor,
    epilogue_block,
    inline_injective,
    inline_prologues,
    inline_side_inputs,
    vector_lanes,
)
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec

__all__ = ["MAX_UNROLLED_TAPS", "WIDE_DEPTHWISE", "WideDepthwise"]

# Depthwise convs at least this wide (output columns) take `WideDepthwise`'s schedule; narrower
# ones (MobileNet's 14×14 and 7×7 stages) run faster with `Contraction`'s register tile.
WIDE_DEPTHWISE = 24
# The most filter taps unrolled into copies of the row loop: a 3×3 or 7×7 window is, a pool's
# 60×80 window (4,800 copies) would stall LLVM for minutes.
MAX_UNROLLED_TAPS = 64


class WideDepthwise(Rule):
    """A depthwise conv2d (TVM's `group_conv2d_nchw` with one input channel per group) with a wide
    output, with its pad and epilogue. Channels run in parallel, each padding its own input plane
    first. Two loop nests:

    - At stride 1, when whole vectors (or half vectors) tile the output row: loops
      c, y, x/(vectors·lanes), kh, kw, unroll(vectors), vector(lanes), with `vectors` the largest
      divisor of the row's vectors that leaves 4 registers free. The row's accumulators stay in
      registers through every tap: each tap loads `vectors` input vectors (unaligned, shifted by
      kw) and broadcasts one weight.
    - Otherwise loops c, y, kh, kw, x with x innermost and not vectorized in TIR, so that LLVM's
      loop vectorizer takes x. At stride 2 it loads the input row as interleaved vectors and
      shuffles (TIR's vectors would gather lane by lane). Each (kh, kw) tap sweeps one output
      row held in cache.

    It takes outputs at least `WIDE_DEPTHWISE` columns wide, and at stride 2 narrow ones too,
    where `Contraction`'s vectors would gather lane by lane. Max and average pools (loops c, y, x,
    kh, kw) as wide take the second loop nest.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        index = next((i for i, b in enumerate(blocks) if not b.is_injective()), None)
        if index is None or any(not b.is_injective() for b in blocks[index + 1 :]):
            return None
        blocks, index = inline_side_inputs(sch, blocks, index)
        blocks, index = inline_prologues(sch, blocks, index)
        main = blocks[index]
        kinds, extents = main.dom_kind(), main.dom()
        depthwise = main.name.startswith("group_conv2d_nchw") and kinds == "SSSSRRR"
        pool = main.name.startswith(("pool_max", "pool_sum")) and kinds == "SSSSRR"
        if not (depthwise or pool):
            return None
        width = extents[3]
        input_width = max(int(r.source.shape[-1]) for r in sch.get(main.block_rv).reads)
        strided = depthwise and width >= 4 and input_width >= 2 * width
        if width < WIDE_DEPTHWISE and not strided:
            return None  # narrow, at stride 1
        if depthwise and extents[4] != 1:
            return None  # not one input channel per output channel
        consumers = inline_injective(sch, blocks[index + 1 :])
        producers = blocks[:index]
        if len(consumers) > 1 or len(producers) > 1:
            return None
        n, c, y, x, *window = sch.get_loops(main.block_rv)
        lanes = vector_lanes(spec, width)
        row = depthwise and not strided and lanes is not None
        if row:
            vectors = divisor(width // lanes, spec.registers - 4)
            outer_x, vector, lane = sch.split(x, [None, vectors, lanes])
            sch.reorder(n, c, y, outer_x, *window, vector, lane)
        else:
            sch.reorder(n, c, y, *window, x)
        plane = sch.fuse(n, c)
        sch.parallel(plane)
        epilogue = epilogue_block(sch, main, consumers)
        sch.reverse_compute_at(epilogue, outer_x if row else y)
        if producers:
            sch.compute_at(producers[0].block_rv, plane)
        if row:
            sch.vectorize(lane)
            sch.unroll(vector)
        sch.decompose_reduction(main.block_rv, window[0])  # the init keeps the vectorized lane
        unrolled = 1
        for tap in reversed(window[-2:]):  # kw, then kh, while the copies stay few
            unrolled *= int(sch.get(tap).extent)
            if unrolled > MAX_UNROLLED_TAPS:
                break
            sch.unroll(tap)
        if row:
            _, epilogue_lane = sch.split(sch.get_loops(epilogue)[-1], [None, lanes])
            sch.vectorize(epilogue_lane)
        return sch
