"""A sum, max or min of one tensor over its trailing axes (a global pool's mean over H×W, a tensor's
max for its quantization scale), as TVM legalizes it, and `TrailingSum`, its schedule."""

from __future__ import annotations

import math
from typing import Any

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo
from tvm.tirx.analysis import undefined_vars

from passc.schedules.analysis import PARALLEL_MIN, REFUSALS, inline_injective
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec

__all__ = ["TrailingSum"]


class TrailingSum(Rule):
    """A sum (or max) of one tensor over its trailing, contiguous axes: a global average pool's
    mean over H×W (NCHW), with its epilogue (the division) and an elementwise prologue (GroupNorm's
    squares), which the sum computes as it reads each element.

    Summed in place, each output is one chain of dependent scalar adds (4 cycles each), and no
    loop is vectorized. Here the reduced axes fuse into one loop of length L, split by P lanes (a
    vector, or half of one, that divides L at least twice), and `rfactor` gives P partials:

        part[s, j] = ⊕_{c < L/P} x[s, c·P + j]     (one vector per s, j < P)
        y[s]       = ⊕_{j < P} part[s, j]

    The order of the additions changes, not what is added (rounding only). The loops over s run
    in parallel when there is enough work; each s finishes (its P partials, then the epilogue)
    before the next. L with no such P (7×7 = 49) is left to `Contraction`. With no s (a max or
    min over a whole tensor, as DynamicQuantizeLinear takes for its scale) there is one row of
    partials, then the one output.
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        reductions = [i for i, b in enumerate(blocks) if not b.is_injective()]
        if len(reductions) != 1:
            return None
        blocks = _inline_prologue(sch, blocks, reductions[0])
        if blocks is None:
            return None  # producers (pads) before it: not a plain pool
        main = blocks[0]
        kinds, extents = main.dom_kind(), main.dom()
        count = kinds.count("R")
        if kinds != "S" * (len(kinds) - count) + "R" * count:
            return None
        stmt = sch.get(main.block_rv)
        written = {region.source.name for region in stmt.writes}
        inputs = [region for region in stmt.reads if region.source.name not in written]
        reduced = [it.var for it in stmt.iter_vars[-count:]]
        varying = [r for r in inputs if any(_uses(rng.min, reduced) for rng in r.region)]
        if not varying or not all(_indexed_last_by(r, reduced, extents[-count:]) for r in varying):
            return None
        length = math.prod(extents[-count:])
        lanes = next(
            (p for p in (spec.lanes, spec.lanes // 2) if p >= 4 and length % p == 0 and length >= 2 * p),
            None,
        )
        if lanes is None:
            return None
        consumers = inline_injective(sch, blocks[1:])
        if len(consumers) > 1:
            return None
        loops = sch.get_loops(main.block_rv)
        spatial, reduce_loops = loops[: len(loops) - count], loops[len(loops) - count :]
        fused = sch.fuse(*reduce_loops) if count > 1 else reduce_loops[0]
        _, lane = sch.split(fused, [None, lanes])
        partial = sch.rfactor(lane, factor_axis=len(spatial))
        *rows, chunk, lane = sch.get_loops(partial)  # rfactor keeps the chunks outside the lanes
        sch.vectorize(lane)
        if rows:  # else one output (a tensor's max, for its quantization): the partials, then it
            outer = sch.fuse(*rows) if len(rows) > 1 else rows[0]
            sch.reverse_compute_at(main.block_rv, outer)
            if consumers:
                sch.reverse_compute_at(consumers[0].block_rv, outer)
            if math.prod(extents) >= PARALLEL_MIN and int(sch.get(outer).extent) > 1:
                sch.parallel(outer)
        init = sch.decompose_reduction(partial, chunk)
        sch.vectorize(sch.get_loops(init)[-1])
        return sch


def _inline_prologue(sch: s_tir.Schedule, blocks: list[SBlockInfo], index: int) -> list[SBlockInfo] | None:
    """The blocks from the reduction `blocks[index]` on, after inlining the elementwise blocks
    before it (a scale or an activation of what it sums, evaluated once per element it reads),
    or None where one of them cannot be inlined."""
    for block in blocks[:index]:
        try:
            sch.compute_inline(block.block_rv)
        except REFUSALS:
            return None
    return blocks[index:]


def _uses(expr: Any, variables: list[Any]) -> bool:
    return any(v.same_as(var) for v in undefined_vars(expr) for var in variables)


def _indexed_last_by(region: Any, variables: list[Any], extents: list[int]) -> bool:
    """Whether the buffer region's last indices are exactly `variables`, in order, over the whole
    of their axes (`extents`): walking them walks the buffer's trailing axes contiguously."""
    ranges = list(region.region)
    shape = [int(d) for d in region.source.shape]
    if len(ranges) < len(variables) or shape[len(shape) - len(variables) :] != extents:
        return False
    return all(
        isinstance(r.min, tirx.Var) and r.min.same_as(var)
        for r, var in zip(ranges[len(ranges) - len(variables) :], variables, strict=True)
    )
