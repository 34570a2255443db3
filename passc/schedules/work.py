"""How often each block of a kernel runs, counted from its TIR: the guard against recomputation.

A block runs once per iteration of the loops around it: runs(block) = Π extents of its loops
(summed where the block appears more than once). A schedule reorders, splits, fuses and places
the legalized loop nest's blocks; it should not make a block run more often, beyond what padding
a tile or overlapping halos of input tiles add. A block that runs far more often than in the
legalized nest is recomputed: a producer placed under a loop it does not depend on (every
output element packing the whole input again is a 20-300× cliff), which `recomputed` reports.
Blocks the schedule inlines or adds (a reduction's init, a cache stage) are not compared; a
reduction split by `decompose_reduction` counts as its update block.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tvm import tirx
from tvm.s_tir import SBlockRealize
from tvm.tirx import expr as texpr
from tvm.tirx import stmt as tstmt

__all__ = ["RUNS_SLACK", "block_runs", "recomputed"]

# A block may run this many times as often as in the legalized nest (row tiles padded to the
# register tile, halos of input tiles); beyond it, the schedule recomputes the block.
RUNS_SLACK = 2.0


def _visit(stmt: Any, runs: int, counts: Counter[str]) -> None:
    if isinstance(stmt, tstmt.For):
        extent = stmt.extent
        _visit(stmt.body, runs * (int(extent) if isinstance(extent, texpr.IntImm) else 1), counts)
    elif isinstance(stmt, SBlockRealize):
        block = stmt.block
        counts[block.name_hint.removesuffix("_update")] += runs  # decompose_reduction's rename
        _visit(block.body, runs, counts)
    elif isinstance(stmt, tstmt.SeqStmt):
        for child in stmt.seq:
            _visit(child, runs, counts)
    elif isinstance(stmt, tstmt.IfThenElse):
        _visit(stmt.then_case, runs, counts)
        if stmt.else_case is not None:
            _visit(stmt.else_case, runs, counts)
    elif isinstance(getattr(stmt, "body", None), tstmt.Stmt):
        _visit(stmt.body, runs, counts)


def block_runs(func: tirx.PrimFunc) -> Counter[str]:
    """Block name → how many times its body runs in one call of the kernel (the root block aside)."""
    counts: Counter[str] = Counter()
    _visit(func.body, 1, counts)
    counts.pop("root", None)
    return counts


def recomputed(legalized: tirx.PrimFunc, scheduled: tirx.PrimFunc) -> dict[str, float]:
    """The blocks that run more than `RUNS_SLACK` times as often in `scheduled` as in `legalized`,
    with that ratio."""
    before, after = block_runs(legalized), block_runs(scheduled)
    ratios = {name: after[name] / runs for name, runs in before.items() if runs and name in after}
    return {name: ratio for name, ratio in ratios.items() if ratio > RUNS_SLACK}
