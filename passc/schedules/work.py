"""How much work a kernel does, counted from its TIR: the guard against recomputation.

Each count is weighted by the trip counts of the loops around it (a statement inside loops of
extents e1…en runs Π ei times; summed over the places it appears):
- `block NAME`: how often a block's body runs;
- `math in NAME`: the arithmetic one run of its body evaluates (adds, multiplies, max / min,
  casts of data, math calls such as exp; not a padding's select, not index arithmetic; a
  subexpression repeated in the body counts once, as the compiler computes it once);
- `load NAME`: how many elements are read from buffer NAME (a read in a padding's select counts
  as if it always ran; a read repeated in one store counts once). For tests: a prologue computed
  once per input element reads its operands about once per input element (`loads=True`).

A schedule reorders, splits, fuses and places the legalized nest's blocks; it should not run a
block more often, beyond what padding a tile or overlapping halos of input tiles add, nor move
arithmetic into a reduction that runs it more often than the block it came from did. One that
does is recomputing: a producer placed under a loop it does not depend on (every output element
packing the whole input again), or an elementwise prologue inlined into a conv's or a matmul's
reduction (a scale or an activation evaluated once per multiply-add instead of once per input
element) — each a 20-300× cliff, which `recomputed` reports. Blocks a schedule adds (a cache
stage, a reduction's init, rfactor's partials) are not compared; a reduction split by
`decompose_reduction` counts as its update block. An epilogue inlined into the tile that writes
the output is not a cliff (its work stays per output element) and is not counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tvm import tirx
from tvm.s_tir import SBlockRealize
from tvm.tirx import expr as texpr
from tvm.tirx import stmt as tstmt
from tvm_ffi import structural_hash

__all__ = ["RUNS_SLACK", "block_runs", "kernel_work", "recomputed"]

# A block may run this many times as often as in the legalized nest (row tiles padded to the
# register tile, halos of input tiles); beyond it, the schedule recomputes the block.
RUNS_SLACK = 2.0

_ARITHMETIC = {"Add", "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Max", "Min", "Cast"}
# A padding's select, whose condition is index arithmetic; calls that hint rather than compute.
_SELECTS = {"prim.if_then_else", "tir.if_then_else"}
_NOT_MATH = {"tir.likely", "tir.reinterpret", "tir.ret"}
_LEAVES = {"IntImm", "FloatImm", "Var", "SizeVar", "StringImm"}


def _first_time(expr: Any, seen: set[int]) -> bool:
    """Whether `expr` is not a leaf and no structurally equal expression is in `seen` (it then is)."""
    if type(expr).__name__ in _LEAVES:
        return False
    key = structural_hash(expr)
    if key in seen:
        return False
    seen.add(key)
    return True


def _math(expr: Any, seen: set[int]) -> int:
    """The arithmetic in one evaluation of `expr`: nodes on data (not on 64-bit indices, not in a
    select's condition or a load's indices), each distinct subexpression once (`seen`)."""
    if (hasattr(expr, "indices") and hasattr(expr, "source")) or not _first_time(expr, seen):
        return 0
    kind = type(expr).__name__
    op = getattr(getattr(expr, "op", None), "name", None) if kind == "Call" else None
    if op in _SELECTS:
        return sum(_math(branch, seen) for branch in expr.args[1:])
    if kind == "Select":
        return _math(expr.true_value, seen) + _math(expr.false_value, seen)
    on_data = str(getattr(expr, "ty", "")) != "int64"
    count = int(on_data and (kind in _ARITHMETIC or (op is not None and op not in _NOT_MATH)))
    children = [getattr(expr, f, None) for f in ("a", "b", "value")] + list(getattr(expr, "args", None) or ())
    return count + sum(_math(child, seen) for child in children if hasattr(child, "expr_ty"))


def _loads(expr: Any, runs: int, counts: Counter[str], seen: set[int]) -> None:
    """Adds each distinct load in `expr` (`seen`: the structural hashes met in this store)."""
    if not _first_time(expr, seen):
        return
    if hasattr(expr, "indices") and hasattr(expr, "source"):
        counts[f"load {expr.source.name}"] += runs
    children = [getattr(expr, f, None) for f in ("a", "b", "value", "condition", "true_value", "false_value")]
    children += list(getattr(expr, "args", None) or ()) + list(getattr(expr, "indices", None) or ())
    for child in children:
        if hasattr(child, "expr_ty"):
            _loads(child, runs, counts, seen)


def _body_math(stmt: Any) -> int:
    """The arithmetic in one run of a block body: its stores' values."""
    if isinstance(stmt, tstmt.BufferStore):
        return _math(stmt.value, set())
    if isinstance(stmt, tstmt.SeqStmt):
        return sum(_body_math(child) for child in stmt.seq)
    body = getattr(stmt, "body", None)
    return _body_math(body) if isinstance(body, tstmt.Stmt) else 0


def _reduces(block: Any) -> bool:
    return any(int(v.iter_type) == tstmt.IterVar.CommReduce for v in block.iter_vars)


def _visit(stmt: Any, runs: int, counts: Counter[str], loads: bool) -> None:
    if isinstance(stmt, tstmt.For):
        extent = stmt.extent
        _visit(stmt.body, runs * (int(extent) if isinstance(extent, texpr.IntImm) else 1), counts, loads)
    elif isinstance(stmt, SBlockRealize):
        block = stmt.block
        name = block.name_hint.removesuffix("_update")  # decompose_reduction's rename
        counts[f"block {name}"] += runs
        counts[f"math in {name}"] = max(counts[f"math in {name}"], _body_math(block.body))
        if _reduces(block):
            counts[f"reduction {name}"] = 1
        _visit(block.body, runs, counts, loads)
    elif isinstance(stmt, tstmt.SeqStmt):
        for child in stmt.seq:
            _visit(child, runs, counts, loads)
    elif isinstance(stmt, tstmt.IfThenElse):
        _visit(stmt.then_case, runs, counts, loads)
        if stmt.else_case is not None:
            _visit(stmt.else_case, runs, counts, loads)
    elif isinstance(stmt, tstmt.BufferStore):
        if loads:
            _loads(stmt.value, runs, counts, set())
    elif isinstance(getattr(stmt, "body", None), tstmt.Stmt):
        _visit(stmt.body, runs, counts, loads)


def kernel_work(func: tirx.PrimFunc, *, loads: bool = False) -> Counter[str]:
    """`block NAME` → how many times the block's body runs in one call of the kernel (the root
    block aside); `math in NAME` → the arithmetic in one run of its body; `reduction NAME` → 1
    where it is a reduction; with `loads`, `load NAME` → how many elements the kernel reads from
    buffer NAME (the guard does not need them)."""
    counts: Counter[str] = Counter()
    _visit(func.body, 1, counts, loads)
    counts.pop("block root", None)
    return counts


def block_runs(func: tirx.PrimFunc) -> Counter[str]:
    """Block name → how many times its body runs in one call of the kernel (the root block aside)."""
    counts = kernel_work(func)
    return Counter({w.removeprefix("block "): n for w, n in counts.items() if w.startswith("block ")})


def recomputed(legalized: tirx.PrimFunc, scheduled: tirx.PrimFunc) -> dict[str, float]:
    """What `scheduled` does more often than `legalized`, with the ratio:
    - `block NAME`: a block that runs more than `RUNS_SLACK` times as often;
    - `math in reductions`: the arithmetic that reductions' bodies gained (a prologue inlined
      into them, evaluated at every run of the reduction), against the arithmetic of the blocks
      the schedule inlined, when more than `RUNS_SLACK` times that. A prologue inlined into a
      sum, which reads each element once, adds what it removes; inlined into a conv, it adds
      that once per output channel and tap.
    Loads are not compared: a pad inlined into a conv's reduction reads the input once per
    multiply-add, as the conv reads its padded copy anyway."""
    before, after = kernel_work(legalized), kernel_work(scheduled)
    excess = {}
    for what, n in before.items():
        if what.startswith("block ") and what in after and n and after[what] / n > RUNS_SLACK:
            excess[what] = after[what] / n
    gained = sum(
        max(0, after[f"math in {name}"] - before[f"math in {name}"]) * after[f"block {name}"]
        for name, _ in _named(after, "reduction")
        if f"block {name}" in before
    )
    inlined = sum(
        before[f"math in {name}"] * n for name, n in _named(before, "block") if f"block {name}" not in after
    )
    if gained > RUNS_SLACK * inlined:
        excess["math in reductions"] = gained / inlined if inlined else float("inf")
    return excess


def _named(counts: Counter[str], kind: str) -> list[tuple[str, int]]:
    return [(what.split(" ", 1)[1], n) for what, n in counts.items() if what.startswith(f"{kind} ")]
