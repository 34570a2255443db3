"""Reductions over one axis that is not the innermost (softmax over YOLO's 16 box bins of a
[1, 16, 4, 2100] tensor), as TVM and `fast_math` legalize them, and `AxisReduction`, their schedule."""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo

from passc.schedules.analysis import REFUSALS
from passc.schedules.base import Rule
from passc.schedules.cpu import CPUSpec

__all__ = ["AxisReduction"]


class AxisReduction(Rule):
    """Reductions over one axis that is not the innermost, with the injective blocks around them:
    every block works on whole rows of the innermost axis, which it reads contiguously, and the
    reduced axis is a loop.

    Loops are parallel(the other axes) · reduced axis · row, every block computed under the one
    parallel loop, so a tile's max, exponentials and sum stay in cache. A reduction's loop runs
    outside its row (a running max or sum per column). The row loop is left to LLVM's loop
    vectorizer, which takes any row length (2100 is no multiple of 16 lanes).
    """

    def schedule(self, sch: s_tir.Schedule, blocks: list[SBlockInfo], spec: CPUSpec) -> s_tir.Schedule | None:
        blocks = _inline_single_use(sch, blocks)
        reductions = [b for b in blocks if not b.is_injective()]
        last = blocks[-1]
        axis = _reduced_axis(reductions, last) if last.is_injective() else None
        extents = last.dom()
        if axis is None or axis == len(extents) - 1:
            return None
        if any(b.dom() != extents for b in blocks if b.is_injective()):
            return None
        loops = sch.get_loops(last.block_rv)
        others = [loop for i, loop in enumerate(loops[:-1]) if i != axis]
        sch.reorder(*others, loops[axis], loops[-1])
        tile = sch.fuse(*others) if len(others) > 1 else others[0]
        if int(sch.get(tile).extent) > 1:
            sch.parallel(tile)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block.block_rv, tile, preserve_unit_loops=True)
        for block in reductions:  # the reduction loop outside the row: a running max or sum per column
            *_, row, reduce = sch.get_loops(block.block_rv)
            sch.reorder(reduce, row)
        return sch


def _inline_single_use(sch: s_tir.Schedule, blocks: list[SBlockInfo]) -> list[SBlockInfo]:
    """Inlines each injective block, but the last, that has one consumer (an exponential that
    both a sum and a division read stays a block, computed once)."""
    kept = []
    for block in blocks[:-1]:
        if block.is_injective() and len(sch.get_consumers(block.block_rv)) == 1:
            try:
                sch.compute_inline(block.block_rv)
                continue
            except REFUSALS:
                pass
        kept.append(block)
    return kept + blocks[-1:]


def _reduced_axis(reductions: list[SBlockInfo], last: SBlockInfo) -> int | None:
    """The one axis that every reduction keeps with extent 1 and the last block spans, if each
    reduction is the last block's loops (that axis reduced) plus one reduction loop."""
    extents = last.dom()
    rank = len(extents)
    axes = set()
    for block in reductions:
        block_extents = block.dom()
        if block.dom_kind() != "S" * rank + "R":
            return None
        differ = [i for i in range(rank) if block_extents[i] != extents[i]]
        if len(differ) != 1 or block_extents[differ[0]] != 1:
            return None
        if block_extents[rank] != extents[differ[0]]:
            return None
        axes.add(differ[0])
    return axes.pop() if len(axes) == 1 else None
